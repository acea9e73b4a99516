package orchestrator

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

// leaderFixture is a fixture whose orchestrator leads, with a service web
// of two running tasks under an update (img:1 to img:2, failure action
// rollback) that no pass has acted on yet.
func leaderFixture(t *testing.T) (*fixture, *store.Leadership, string) {
	f := newFixture(t)
	l, err := f.st.Campaign(f.ctx, "orchestrator", "node1", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f.o.SetLeadership(l)
	spec := replicated("web", 2)
	spec.UpdateConfig = &swarm.UpdateConfig{Parallelism: 1, FailureAction: swarm.UpdateFailureActionRollback}
	id := f.mustCreate(spec)
	f.pass()
	f.agent()
	cur := f.mustGet(id)
	spec.TaskTemplate.ContainerSpec.Image = "img:2"
	if err := f.svcs.Update(f.ctx, id, spec, services.UpdateOptions{Version: cur.Version.Index}); err != nil {
		t.Fatal(err)
	}
	return f, l, id
}

// state is what a deposed leader's write must leave as it was: every
// service's and task's revision.
func (f *fixture) state() map[string]uint64 {
	f.t.Helper()
	svcs, tasks, err := f.svcs.Snapshot(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, s := range svcs {
		out["service "+s.ID] = s.Version.Index
	}
	for _, t := range tasks {
		out["task "+t.ID] = t.Version.Index
	}
	return out
}

// Every kind of write the orchestrator makes as the leader carries the
// leadership's guard: once the leadership is over, each fails with
// store.ErrDeposed (a store.ErrGuard) and changes nothing; after the
// first, the orchestrator sends no further write (no retry storm).
func TestDeposedOrchestratorWritesNothing(t *testing.T) {
	f, l, id := leaderFixture(t)
	svc := f.mustGet(id)
	tasks := f.tasks()
	if len(tasks) != 2 || svc.PreviousSpec == nil {
		t.Fatalf("fixture: %d tasks, previous spec %v", len(tasks), svc.PreviousSpec)
	}
	if err := l.Resign(f.ctx); err != nil {
		t.Fatal(err)
	}
	before := f.state()
	requests := storetest.CountRequests(f.st)
	writes := []struct {
		kind  string
		write func(context.Context) error
	}{
		{"task create", func(ctx context.Context) error {
			return f.o.createTask(ctx, svc, &slot{key: "3", num: 3})
		}},
		{"task update (desired state)", func(ctx context.Context) error {
			return f.o.setDesired(ctx, tasks[0], swarm.TaskStateShutdown)
		}},
		{"task update (placement)", func(ctx context.Context) error {
			return f.o.setWaiting(ctx, tasks[1], "no suitable node")
		}},
		{"task delete", func(ctx context.Context) error {
			gone := *tasks[1]
			gone.NodeID, gone.DesiredState = "", swarm.TaskStateRemove
			return f.o.retireUnplaced(ctx, &gone)
		}},
		{"service update status", func(ctx context.Context) error {
			return f.o.finishUpdate(ctx, svc)
		}},
		{"service rollback", func(ctx context.Context) error {
			return f.o.updateFailed(ctx, svc, tasks[0])
		}},
		{"rotation status", func(ctx context.Context) error {
			now := f.now
			return f.o.setUpdateStatus(ctx, svc, &swarm.UpdateStatus{State: swarm.UpdateStateUpdating, StartedAt: &now, Message: rotationMessage + "secret s"})
		}},
	}
	for _, w := range writes {
		t.Run(w.kind, func(t *testing.T) {
			f.o.deposed.Store(false)
			n := requests.Load()
			if err := w.write(f.ctx); !errors.Is(err, store.ErrDeposed) || !errors.Is(err, store.ErrGuard) {
				t.Fatalf("deposed leader's %s: %v, want store.ErrDeposed", w.kind, err)
			}
			if requests.Load() == n {
				t.Fatalf("%s sent no request: the guard was not what failed it", w.kind)
			}
			if after := f.state(); !equalState(before, after) {
				t.Fatalf("deposed leader's %s changed the store:\nbefore %v\nafter  %v", w.kind, before, after)
			}
			// Known deposed: the same write again sends nothing.
			n = requests.Load()
			if err := w.write(f.ctx); !errors.Is(err, store.ErrDeposed) {
				t.Fatalf("%s again: %v, want store.ErrDeposed", w.kind, err)
			}
			if got := requests.Load() - n; got != 0 {
				t.Fatalf("%s again sent %d etcd requests, want none", w.kind, got)
			}
		})
	}
}

func equalState(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// A deposed orchestrator stops acting: Run returns after the pass that
// found the leadership over, instead of retrying every tick until the
// session notices.
func TestDeposedOrchestratorRunReturns(t *testing.T) {
	f, l, _ := leaderFixture(t)
	if err := l.Resign(f.ctx); err != nil {
		t.Fatal(err)
	}
	f.mustCreate(replicated("api", 1))
	before := f.state()
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	done := make(chan struct{})
	go func() { f.o.Run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a deposed orchestrator still runs after 30s")
	}
	if after := f.state(); !equalState(before, after) {
		t.Fatalf("deposed run changed the store:\nbefore %v\nafter  %v", before, after)
	}
}

// Losing a race for a task (its agent wrote it first) while the leadership
// holds is no reason to stop: the guarded write's failure is explained as
// stale, ignored, and the next pass decides again.
func TestLeaderLosingARaceKeepsActing(t *testing.T) {
	f, _, _ := leaderFixture(t)
	stale := f.tasks()[0]
	f.setState(stale, swarm.TaskStateFailed, "exit 1")
	if err := f.o.setDesired(f.ctx, stale, swarm.TaskStateShutdown); err != nil {
		t.Fatalf("write on a stale task under a holding leadership: %v, want the race ignored", err)
	}
	if f.o.deposed.Load() {
		t.Fatal("a lost race taken for a lost leadership")
	}
	for _, tk := range f.tasks() {
		if tk.ID == stale.ID && (tk.DesiredState == swarm.TaskStateShutdown || tk.Status.State != swarm.TaskStateFailed) {
			t.Fatalf("stale write applied: desired %s, state %s", tk.DesiredState, tk.Status.State)
		}
	}
	if err := f.o.Reconcile(f.ctx); err != nil {
		t.Fatalf("next pass: %v", err)
	}
}
