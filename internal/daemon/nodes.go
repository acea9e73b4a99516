package daemon

import (
	"context"
	"net"
	"slices"

	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// clusterNodes answers `docker node ls` on a manager of a cluster: every
// recorded node, with MANAGER STATUS from the etcd membership as this
// member sees it (Leader, Reachable, Unreachable), STATUS from the node
// record (nodes.RunLiveness) and the description the node reported.
type clusterNodes struct{ d *Daemon }

func (c clusterNodes) Managers(ctx context.Context) (*swarm.ManagerStatus, []swarm.Node, bool, error) {
	st := c.d.curStore()
	members := st.Members()
	if members == nil {
		return nil, nil, false, nil
	}
	list, err := members.List(ctx)
	if err != nil {
		return nil, nil, false, err
	}
	recs, err := nodes.List(ctx, st)
	if err != nil {
		return nil, nil, false, err
	}
	listed := func(name string) bool {
		return slices.ContainsFunc(list, func(m store.Member) bool { return m.Name == name })
	}
	status := func(name string) (*swarm.ManagerStatus, bool) {
		for _, m := range list {
			if m.Name != name {
				continue
			}
			r := swarm.ReachabilityUnreachable
			if m.Reachable {
				r = swarm.ReachabilityReachable
			}
			return &swarm.ManagerStatus{Leader: m.Leader, Reachability: r}, m.Reachable
		}
		// Recorded as a manager without a member: one that left (Swarm
		// lists a manager that left Unreachable until it is demoted and
		// removed), or one whose join has not added its learner yet.
		return &swarm.ManagerStatus{Reachability: swarm.ReachabilityUnreachable}, false
	}
	dropped := c.d.droppedSet(ctx, st)
	// Every node's certificate is issued by the cluster's root CA (a root
	// rotation is refused on a cluster of several nodes), so each node's
	// TLS info is the root's, as Swarm shows it for a node that renewed.
	var tls swarm.TLSInfo
	if cl, err := cluster.Get(ctx, st); err == nil {
		tls = cl.Info().TLSInfo
	}
	self, _ := status(c.d.nodeID)
	self.Addr = c.d.listen.Advertise
	var others []swarm.Node
	for _, n := range recs {
		if n.ID == c.d.nodeID {
			continue
		}
		ms, reachable := status(n.ID)
		if dropped[n.ID] && ms != nil && !listed(n.ID) {
			// Dropped by force-new-cluster: no manager status, as in
			// Swarm (forcenew.go).
			ms = nil
		}
		if n.Spec.Role == swarm.NodeRoleWorker {
			ms, reachable = nil, true
		}
		// STATUS is the liveness the orchestrator's leader recorded (the
		// same on every manager); a manager this one cannot reach is
		// shown Down at once.
		st := swarm.NodeStatus{State: swarm.NodeStateUnknown}
		if n.Status != nil {
			st.State, st.Message = n.Status.State, n.Status.Message
		}
		if !reachable {
			st.State = swarm.NodeStateDown
		}
		if ms != nil {
			ms.Addr = n.Addr
		}
		host, _, err := net.SplitHostPort(n.Addr)
		if err != nil {
			host = n.Addr
		}
		// A worker is shown where its session comes from, as Swarm's
		// dispatcher records it (its advertise address, maybe a default
		// loopback one, says nothing of its host); a manager at its
		// advertised address.
		if n.Spec.Role == swarm.NodeRoleWorker && n.SeenAddr != "" {
			host = n.SeenAddr
		}
		st.Addr = host
		sn := swarm.Node{ID: n.ID, Spec: n.Spec, ManagerStatus: ms, Status: st}
		sn.Version.Index = n.Version
		sn.CreatedAt, sn.UpdatedAt = n.CreatedAt, n.UpdatedAt
		sn.Description.Hostname = n.Hostname
		if d := n.Description; d != nil {
			sn.Description.Platform = swarm.Platform{OS: d.OS, Architecture: d.Arch}
			sn.Description.Engine.EngineVersion = d.EngineVersion
			sn.Description.Engine.Labels = d.EngineLabels
			sn.Description.Resources = swarm.Resources{NanoCPUs: d.NanoCPUs, MemoryBytes: d.MemoryBytes}
		}
		sn.Description.TLSInfo = tls
		others = append(others, sn)
	}
	return self, others, true, nil
}
