package daemon

import (
	"context"

	"github.com/hush-secrets/hush/internal/manager/networks"
)

// pruneOwnBridges removes, as the node leaves the swarm, the bridges it
// realised for its tasks' networks (labelled with its node ID; nothing
// else): its task containers are gone and what realises networks (agent,
// networks manager) has stopped, so only a container attached outside
// hush can still use one, and the engine refuses to remove that one.
// Here, not at a later join or first pass: the node's ID changes only
// with its data dir (node.json), and a node that joins under a new ID
// cannot tell its former identity's bridges from those of another node
// sharing the engine, so the leave is the last moment they are known to
// be its own. A node joining again under the same ID would prune them
// anyway (a worker's agent at its first pass, a manager's networks
// manager).
func (d *Daemon) pruneOwnBridges(ctx context.Context) {
	if d.realiser == nil {
		return
	}
	if err := d.realiser.Prune(ctx, d.nodeID, nil); err != nil {
		d.log.Warn("removing this node's bridges as it leaves", "err", err)
		return
	}
	left, err := d.realiser.Realised(ctx, d.nodeID)
	if err != nil {
		return
	}
	for _, en := range left {
		d.log.Warn("a bridge this node realised stays on the engine as it leaves: a container still uses it; remove it on the engine once unused",
			"engine_network", en.Name, "id", en.ID, "network", en.Labels[networks.LabelNetworkID])
	}
}
