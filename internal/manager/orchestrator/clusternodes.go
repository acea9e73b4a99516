package orchestrator

import (
	"context"

	"github.com/hush-secrets/hush/internal/manager/constraint"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/moby/moby/api/types/swarm"
)

// SetWorkers makes placement consider, besides this manager's own node,
// every worker of the cluster that ready reports live (its dispatcher
// heartbeats). A worker that is not ready is not a candidate; the tasks
// it holds are left alone (no rescheduling on liveness yet). Other
// managers are not candidates. Call before Run.
func (o *Orchestrator) SetWorkers(ready func(nodeID string) bool) {
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
			if n.ID == o.nodeID || n.Spec.Role != swarm.NodeRoleWorker || !ready(n.ID) {
				continue
			}
			// The worker's platform, engine labels and resources are not
			// reported yet: it matches any platform, no engine label, and
			// only tasks without reservations.
			ns = append(ns, &schedNode{
				node: constraint.Node{ID: n.ID, Hostname: n.Hostname, Role: string(swarm.NodeRoleWorker),
					Labels: n.Spec.Labels},
				avail: n.Spec.Availability,
			})
		}
		return ns, nil
	}
}
