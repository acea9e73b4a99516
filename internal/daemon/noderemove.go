package daemon

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/dispatchnet"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// removedRefresh is how stale the cached refusal list may be: a removal
// made through another manager is refused here within it (plus the
// node's next request).
const removedRefresh = time.Second

// removedCache is this manager's copy of the store's list of removed
// nodes (storeCache: read again when older than removedRefresh, the last
// list kept through a failed read, since a store outage must not end
// every session; until one read has succeeded an empty list would admit
// a removed node's certificate, so the check fails closed). A removal
// made here is added at once.
type removedCache struct {
	storeCache[map[string]time.Time]
}

// refuseNode is the dispatcher's refusal hook: a certificate of a removed
// node issued up to its removal is refused. hush keeps a node's ID when
// it leaves and joins again (its local etcd member is named by it), so
// the refusal is of the certificates the node held when it was removed,
// not of the ID: a rejoin with a join token gets a certificate issued
// after the removal.
func (d *Daemon) refuseNode(nodeID string, leaf *x509.Certificate) error {
	at, ok, loaded := d.removedAt(nodeID)
	if !ok && !loaded && nodeID != d.nodeID {
		// Not "removed": the node is told to try again, not to stop. This
		// manager's own certificate is its relay's and its own agent's,
		// which a removal never names (a manager is demoted first).
		return errdefs.Unavailable("this manager has not read the list of removed nodes yet: try again")
	}
	if !ok || leaf.NotBefore.Add(pki.Backdate).Truncate(time.Second).After(at) {
		return nil
	}
	return removedError(nodeID)
}

// removedError is what a removed node is told: the agent stops on it.
func removedError(nodeID string) error {
	return fmt.Errorf("%w: %w", agent.ErrNodeRemoved, errdefs.Unauthorized("node %s was removed from the cluster", nodeID))
}

// removedAt says when nodeID was removed, from the cached list, and
// whether the list has been read from the store at least once.
func (d *Daemon) removedAt(nodeID string) (at time.Time, removed, loaded bool) {
	// A removal noted here is in the store before it is noted
	// (RemoveNode), so a list read after it has it.
	m, loaded := d.removed.get(removedRefresh, d.log, "the removed nodes", func(ctx context.Context) (map[string]time.Time, error) {
		return nodes.Removed(ctx, d.curStore())
	})
	at, ok := m[nodeID]
	return at, ok, loaded
}

// noteRemoved adds a removal made through this manager to the cache.
func (c *removedCache) noteRemoved(nodeID string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// A copy: get hands the map out to callers that read it unlocked.
	m := make(map[string]time.Time, len(c.v)+1)
	for k, v := range c.v {
		m[k] = v
	}
	m[nodeID] = at
	c.v = m
}

// RemoveNode is `docker node rm [--force]` on a manager of a cluster
// (handled false on a lone node, which the API answers itself). Swarm's
// order: unknown node, then a manager (demote first), then a live node
// without --force.
func (c clusterNodes) RemoveNode(ctx context.Context, ref string, force bool) (bool, error) {
	d := c.d
	st := d.curStore()
	if st.Members() == nil {
		return false, nil
	}
	n, err := resolveNode(ctx, st, ref)
	if err != nil {
		return true, err
	}
	if n.Spec.Role == swarm.NodeRoleManager && !d.droppedNotMember(ctx, st, n.ID) || n.ID == d.nodeID {
		return true, errdefs.FailedPrecondition("node %s is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal", n.ID)
	}
	// Down as the orchestrator's leader recorded it (nodes.RunLiveness); a
	// node with no status yet is not down either, as Swarm's Unknown.
	if !force && (n.Status == nil || n.Status.State != swarm.NodeStateDown) {
		return true, errdefs.FailedPrecondition("node %s is not down and can't be removed", n.ID)
	}
	// Whole seconds: certificates record their issue time to the second,
	// and one issued in the removal's second must be refused.
	at := time.Now().UTC().Truncate(time.Second)
	if err := nodes.Remove(ctx, st, n.ID, at); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return true, errdefs.NotFound("node %s not found", ref)
		}
		return true, err
	}
	d.removed.noteRemoved(n.ID, at)
	if rt := d.dispatch.Load(); rt != nil {
		// Its session here ends now; a session with another manager ends
		// at its next heartbeat there.
		rt.h.EndNode(n.ID, removedError(n.ID))
	}
	d.log.Info("node removed", "node", n.ID, "force", force)
	return true, nil
}

// resolveNode finds a node by full ID, hostname or unique ID prefix, in
// Swarm's order: a hostname that is also a prefix of another node's ID
// names the host.
func resolveNode(ctx context.Context, st *store.Store, ref string) (nodes.Node, error) {
	if ref == "" {
		return nodes.Node{}, errdefs.NotFound("node %s not found", ref)
	}
	all, err := nodes.List(ctx, st)
	if err != nil {
		return nodes.Node{}, err
	}
	var byPrefix, byName []nodes.Node
	for _, n := range all {
		if n.ID == ref {
			return n, nil
		}
		if strings.HasPrefix(n.ID, ref) {
			byPrefix = append(byPrefix, n)
		}
		if n.Hostname == ref {
			byName = append(byName, n)
		}
	}
	for _, m := range [][]nodes.Node{byName, byPrefix} {
		switch len(m) {
		case 0:
		case 1:
			return m[0], nil
		default:
			return nodes.Node{}, errdefs.BadRequest("node %s is ambiguous (%d matches found)", ref, len(m))
		}
	}
	return nodes.Node{}, errdefs.NotFound("node %s not found", ref)
}

// removedFromCluster runs when this worker's agent learns that the
// managers removed the node: it leaves the cluster as `swarm leave` does
// (its task containers and mounts go, its certificate and key are
// forgotten). ws is the membership the agent ran for; a node that left
// or joined again meanwhile is left alone.
func (d *Daemon) removedFromCluster(ws *workerState) {
	if d.bg == nil || d.bg.Err() != nil {
		return
	}
	bg := d.bg
	d.bgDone.Add(1)
	go func() {
		defer d.bgDone.Done()
		// Only while d.bg lasts: a lifecycle change that ends it holds
		// mu while it waits for this goroutine (closeStoreLocked).
		if d.lockMu(bg) != nil {
			return
		}
		defer d.mu.Unlock()
		if d.worker != ws || d.bg.Err() != nil {
			return
		}
		d.log.Warn("this node was removed from the cluster by a manager; leaving")
		if err := d.leaveWorkerLocked(context.WithoutCancel(d.bg)); err != nil {
			d.log.Error("leaving after removal", "err", err)
		}
	}()
}

// remoteLogs fetches a task's logs from the node that runs it, through
// the node's dispatcher session with this manager, or with another
// manager, which relays them (api.RemoteLogSource).
type remoteLogs struct{ d *Daemon }

func (r remoteLogs) TaskLogs(ctx context.Context, nodeID, taskID string, follow bool, tail string, timestamps bool, since string) (io.ReadCloser, error) {
	rt := r.d.dispatch.Load()
	if rt == nil {
		return nil, errdefs.Unavailable("this manager serves no dispatcher: the logs of node %s's tasks are not reachable from it", nodeID)
	}
	o := agent.LogOptions{Follow: follow, Tail: tail, Since: since, Timestamps: timestamps}
	rc, err := rt.h.Logs(ctx, nodeID, taskID, o)
	if !errors.Is(err, dispatchnet.ErrNoSession) {
		return rc, err
	}
	addrs, aerr := r.d.managerAddrs(ctx)
	if aerr != nil {
		return nil, errors.Join(err, aerr)
	}
	// addrs[0] is this manager. The node holds one session, with one of
	// them: at most one answers with logs.
	for _, a := range addrs[1:] {
		da, derr := dispatchAddr(a)
		if derr != nil {
			continue
		}
		rc, rerr := rt.relay.Logs(ctx, da, nodeID, taskID, o)
		switch {
		case rerr == nil:
			return rc, nil
		case errors.Is(rerr, dispatchnet.ErrNoSession), errors.Is(rerr, errdefs.ErrUnavailable):
			continue
		default:
			return nil, rerr
		}
	}
	// No manager holds a session of the node (down, or removed): the API
	// tells the client so, as Swarm's log broker does.
	return nil, fmt.Errorf("%w: %w", api.ErrNodeNotConnected, err)
}
