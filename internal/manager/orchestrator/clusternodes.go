package orchestrator

import (
	"context"

	"github.com/hush-secrets/hush/internal/manager/constraint"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/moby/moby/api/types/swarm"
)

// SetCluster makes placement consider, besides this manager's own node,
// every node of the cluster (managers and workers) whose recorded status
// is Ready (the liveness loop's, nodes.RunLiveness), as it described
// itself. A node recorded Down is no candidate and its tasks are
// replaced elsewhere (Reconcile); a node with no status yet (just joined)
// is neither. Call before Run.
func (o *Orchestrator) SetCluster() {
	o.listNodes = func(ctx context.Context) ([]*schedNode, error) {
		ns, err := o.localNodes(ctx)
		if err != nil {
			return nil, err
		}
		recs, err := nodes.List(ctx, o.svcs.Store())
		if err != nil {
			return nil, err
		}
		for _, n := range recs {
			if n.ID == o.nodeID || n.Status == nil {
				continue
			}
			if n.Status.State != swarm.NodeStateReady {
				o.down[n.ID] = true
				continue
			}
			sn := &schedNode{
				node: constraint.Node{ID: n.ID, Hostname: n.Hostname, Role: string(n.Spec.Role),
					Labels: n.Spec.Labels},
				avail: n.Spec.Availability,
			}
			// A node that has not described itself matches any platform,
			// no engine label, and only tasks without reservations.
			if d := n.Description; d != nil {
				sn.node.OS, sn.node.Arch, sn.node.EngineLabels = d.OS, d.Arch, d.EngineLabels
				sn.nanoCPUs, sn.memoryBytes = d.NanoCPUs, d.MemoryBytes
			}
			ns = append(ns, sn)
		}
		return ns, nil
	}
}
