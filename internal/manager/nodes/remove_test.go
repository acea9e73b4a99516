package nodes_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

// Removing a node deletes its record, lists it as removed (with the time
// given) and ends its live tasks as orphaned; other nodes' tasks and the
// node's ended tasks are untouched.
func TestRemove(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	const gone, other = "aaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbb"
	for _, id := range []string{gone, other} {
		if _, err := nodes.Record(ctx, st, nodes.Node{ID: id, Spec: swarm.NodeSpec{Role: swarm.NodeRoleWorker}}); err != nil {
			t.Fatal(err)
		}
	}
	tasks := []struct {
		id, node string
		state    swarm.TaskState
		orphan   bool
	}{
		{"t1", gone, swarm.TaskStateRunning, true},
		{"t2", gone, swarm.TaskStateAssigned, true},
		{"t3", gone, swarm.TaskStateComplete, false},
		{"t4", other, swarm.TaskStateRunning, false},
	}
	for _, tc := range tasks {
		task := model.Task{Task: swarm.Task{ID: tc.id, NodeID: tc.node, DesiredState: swarm.TaskStateRunning,
			Status: swarm.TaskStatus{State: tc.state}}}
		b, _ := json.Marshal(task)
		if _, err := st.Table(model.TasksTable).Create(ctx, tc.id, "", b); err != nil {
			t.Fatal(err)
		}
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := nodes.Remove(ctx, st, gone, at); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes.Get(ctx, st, gone); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the removed node's record: %v", err)
	}
	if _, err := nodes.Get(ctx, st, other); err != nil {
		t.Fatalf("the other node's record: %v", err)
	}
	rm, err := nodes.Removed(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if len(rm) != 1 || !rm[gone].Equal(at) {
		t.Fatalf("removed list: %v", rm)
	}
	for _, tc := range tasks {
		o, err := st.Table(model.TasksTable).Get(ctx, tc.id)
		if err != nil {
			t.Fatal(err)
		}
		task, _ := model.Decode[model.Task](o.Value)
		orphaned := task.Status.State == swarm.TaskStateOrphaned && task.DesiredState == swarm.TaskStateShutdown &&
			task.Status.Message == nodes.MsgRemovedTask
		if orphaned != tc.orphan {
			t.Errorf("task %s: state %s desired %s %q; want orphaned %v", tc.id, task.Status.State, task.DesiredState, task.Status.Message, tc.orphan)
		}
	}
	// A node that is gone cannot be removed again.
	if err := nodes.Remove(ctx, st, gone, at.Add(time.Hour)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("removing it again: %v", err)
	}
}

// A removal that stops part-way (here: a task record it cannot read) has
// already refused and drained the node, so no orchestrator pass places a
// new task on a node on its way out; the record is still listed for a
// second `node rm`.
func TestRemoveDrainsBeforeEndingTasks(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	const id = "aaaaaaaaaaaaaaaaaaaaaaaaa"
	if _, err := nodes.Record(ctx, st, nodes.Node{ID: id, Spec: swarm.NodeSpec{Role: swarm.NodeRoleWorker,
		Availability: swarm.NodeAvailabilityActive}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Table(model.TasksTable).Create(ctx, "corrupt", "", []byte("{")); err != nil {
		t.Fatal(err)
	}
	if err := nodes.Remove(ctx, st, id, time.Now().UTC().Truncate(time.Second)); err == nil {
		t.Fatal("a removal that could not end the tasks succeeded")
	}
	n, err := nodes.Get(ctx, st, id)
	if err != nil {
		t.Fatalf("the record of a removal stopped part-way: %v", err)
	}
	if n.Spec.Availability != swarm.NodeAvailabilityDrain {
		t.Errorf("availability of a node being removed: %q, want drain", n.Spec.Availability)
	}
	if rm, err := nodes.Removed(ctx, st); err != nil || rm[id].IsZero() {
		t.Errorf("removal not recorded first: %v %v", rm, err)
	}
}
