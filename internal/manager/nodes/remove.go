package nodes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// removedTable holds one entry per removed node: when it was removed.
// Every manager reads it (the store is shared), so a removal is refused
// by every dispatcher, and after any restart.
const removedTable = "removednodes"

// removedRecord is a removed node's entry.
type removedRecord struct {
	RemovedAt time.Time `json:"removedAt"`
}

// MsgRemovedTask is the status message of a task whose node was removed.
const MsgRemovedTask = "node removed from the cluster"

// Remove deletes node id's record after refusing it and ending its tasks:
// the refusal is written first, so a crash part-way leaves a node that is
// refused but still listed (a second `node rm` finishes), never a node
// that is gone from the list and still served. Tasks on the node that
// have not ended are marked orphaned and desired shut down, so the
// orchestrator replaces them elsewhere (no agent will ever report them
// again). The node is drained before that: the orchestrator's pass that
// the orphaning wakes must not place a replacement on the node it is
// leaving (a task placed on a node whose record is then deleted would
// never be replaced). Its tasks are ended once more after the delete, for
// a pass that read the nodes before the drain. The caller checks role and
// liveness.
func Remove(ctx context.Context, st *store.Store, id string, at time.Time) error {
	if _, err := Get(ctx, st, id); err != nil {
		return err
	}
	if err := markRemoved(ctx, st, id, at); err != nil {
		return fmt.Errorf("refusing node %s: %w", id, err)
	}
	if err := drain(ctx, st, id); err != nil {
		return fmt.Errorf("draining node %s: %w", id, err)
	}
	if err := orphanTasks(ctx, st, id, at); err != nil {
		return fmt.Errorf("ending node %s's tasks: %w", id, err)
	}
	err := st.Table(table).Delete(ctx, id, "", 0, nil)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if err := orphanTasks(ctx, st, id, at); err != nil {
		return fmt.Errorf("ending node %s's tasks: %w", id, err)
	}
	return nil
}

// drain sets node id's availability to drain (bounded retries on a
// concurrent write; a node already gone is left so).
func drain(ctx context.Context, st *store.Store, id string) error {
	for range 3 {
		n, err := Get(ctx, st, id)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if n.Spec.Availability == swarm.NodeAvailabilityDrain {
			return nil
		}
		n.Spec.Availability = swarm.NodeAvailabilityDrain
		val, err := json.Marshal(&n)
		if err != nil {
			return err
		}
		_, err = st.Table(table).Update(ctx, id, int64(n.Version), val)
		if !errors.Is(err, store.ErrStale) {
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			return err
		}
	}
	return errdefs.OutOfSequence()
}

// markRemoved records the removal at at (a repeated removal keeps the
// later time, which refuses every certificate the earlier one did).
func markRemoved(ctx context.Context, st *store.Store, id string, at time.Time) error {
	t := st.Table(removedTable)
	val, _ := json.Marshal(removedRecord{RemovedAt: at.UTC()})
	for range 3 {
		o, err := t.Get(ctx, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			if _, err = t.Create(ctx, id, "", val); !errors.Is(err, store.ErrNameTaken) {
				return err
			}
		case err != nil:
			return err
		default:
			if _, err = t.Update(ctx, id, o.ModRev, val); !errors.Is(err, store.ErrStale) {
				return err
			}
		}
	}
	return errdefs.OutOfSequence()
}

// Removed lists the removed nodes and when each was removed.
func Removed(ctx context.Context, st *store.Store) (map[string]time.Time, error) {
	objs, err := st.Table(removedTable).List(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]time.Time, len(objs))
	for _, o := range objs {
		var r removedRecord
		if err := json.Unmarshal(o.Value, &r); err != nil {
			return nil, errors.Join(errdefs.ErrInternal, err)
		}
		out[o.ID] = r.RemovedAt
	}
	return out, nil
}

// orphanTasks ends the records of node id's tasks that have not ended.
// Each write is checked against the revision read; a task changed
// meanwhile is read again (bounded).
func orphanTasks(ctx context.Context, st *store.Store, id string, at time.Time) error {
	t := st.Table(model.TasksTable)
	for range 5 {
		objs, err := t.List(ctx)
		if err != nil {
			return err
		}
		stale := false
		for _, o := range objs {
			task, err := model.Decode[model.Task](o.Value)
			if err != nil {
				return err
			}
			if task.NodeID != id || model.Terminal(task.Status.State) {
				continue
			}
			task.DesiredState = swarm.TaskStateShutdown
			task.Status = swarm.TaskStatus{Timestamp: at.UTC(), State: swarm.TaskStateOrphaned,
				Message: MsgRemovedTask, ContainerStatus: task.Status.ContainerStatus}
			task.UpdatedAt = at.UTC()
			val, err := json.Marshal(task)
			if err != nil {
				return err
			}
			_, err = t.Update(ctx, o.ID, o.ModRev, val)
			switch {
			case errors.Is(err, store.ErrStale):
				stale = true
			case errors.Is(err, store.ErrNotFound):
			case err != nil:
				return err
			}
		}
		if !stale {
			return nil
		}
	}
	return errdefs.OutOfSequence()
}
