package agent

import (
	"context"
	"io"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// LogOptions are what a manager may ask of a task's logs: the options of
// `docker service logs` that the engine applies (the manager checked tail
// and since before asking, and filters streams and adds details itself).
type LogOptions struct {
	Follow     bool
	Tail       string
	Since      string
	Timestamps bool
}

// maxLogOption bounds tail and since (a number or a Unix time).
const maxLogOption = 64

// TaskLogs opens the engine's log stream of one of this node's tasks for
// a manager (`docker service logs` of a task running here). Only a task
// assigned to this node (in the view its session built) and a container
// this node made for it (its node ID and the task's ID as labels) are
// served: a manager's request names a task, never a container.
func (a *Agent) TaskLogs(ctx context.Context, taskID string, o LogOptions) (io.ReadCloser, error) {
	if len(o.Tail) > maxLogOption || len(o.Since) > maxLogOption {
		return nil, errdefs.BadRequest("logs request: tail or since too long")
	}
	if _, ok := a.view.task(taskID); !ok {
		return nil, errdefs.NotFound("task %s is not assigned to this node", taskID)
	}
	ctrs, err := a.x.Containers(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range ctrs {
		if c.Labels["com.docker.swarm.task.id"] == taskID && c.Labels[labelHush] == a.nodeID {
			return a.x.Logs(ctx, c.ID, o)
		}
	}
	return nil, errdefs.NotFound("task %s has no container on this node", taskID)
}
