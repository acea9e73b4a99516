package orchestrator

import (
	"errors"
	"sort"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// clusterFixture is a fixture whose orchestrator (on node1) sees the
// cluster's node records: node1 (itself, a manager), m2 (another manager)
// and w3 (a worker), all Ready.
func clusterFixture(t *testing.T) (*fixture, func(id string, s swarm.NodeState)) {
	f := newFixture(t)
	f.o.SetCluster()
	for _, n := range []nodes.Node{
		{ID: "node1", Spec: swarm.NodeSpec{Role: swarm.NodeRoleManager, Availability: swarm.NodeAvailabilityActive}},
		{ID: "m2", Spec: swarm.NodeSpec{Role: swarm.NodeRoleManager, Availability: swarm.NodeAvailabilityActive}},
		{ID: "w3", Spec: swarm.NodeSpec{Role: swarm.NodeRoleWorker, Availability: swarm.NodeAvailabilityActive}},
	} {
		if _, err := nodes.Record(f.ctx, f.st, n); err != nil {
			t.Fatal(err)
		}
	}
	l, err := f.st.Campaign(f.ctx, "orchestrator", "node1", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	set := func(id string, s swarm.NodeState) {
		t.Helper()
		st := nodes.Status{State: s}
		if s == swarm.NodeStateDown {
			st.Message = nodes.MsgHeartbeatFailure
		}
		if err := nodes.SetStatus(f.ctx, f.st, l, id, st); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"node1", "m2", "w3"} {
		set(id, swarm.NodeStateReady)
	}
	return f, set
}

// agentsExcept plays the agents of every node but those given (down: they
// report nothing).
func (f *fixture) agentsExcept(down ...string) {
	f.t.Helper()
	for _, t := range f.tasks() {
		if t.NodeID == "" || model.Unscheduled(t) || contains(down, t.NodeID) {
			continue
		}
		switch {
		case model.Runs(t.DesiredState) && t.Status.State == swarm.TaskStateAssigned:
			f.setState(t, swarm.TaskStateRunning, "")
		case !model.Runs(t.DesiredState) && t.DesiredState != swarm.TaskStateReady && !model.Terminal(t.Status.State):
			f.setState(t, swarm.TaskStateShutdown, "")
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// running lists the nodes of the tasks meant to run, sorted ("": one
// waiting unplaced).
func running(ts []*model.Task) []string {
	var out []string
	for _, t := range ts {
		if model.Runs(t.DesiredState) {
			out = append(out, t.NodeID)
		}
	}
	sort.Strings(out)
	return out
}

func eq(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDownNodeTasksRescheduled(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec func() swarm.ServiceSpec
		// want: nodes of the tasks meant to run, all Ready / w3 Down.
		wantAll, wantDown []string
		// returns: the service gets a task on w3 again when it is back.
		returns bool
		// restarted: the replacement is a restart of the slot (replicated
		// services, as Swarm's restart supervisor does).
		restarted bool
	}{
		{name: "replicated spreads and moves", spec: func() swarm.ServiceSpec { return replicated("web", 3) },
			wantAll: []string{"m2", "node1", "w3"}, wantDown: []string{"m2", "m2", "node1"}, restarted: true},
		{name: "global leaves the down node", spec: func() swarm.ServiceSpec {
			s := replicated("agent", 0)
			s.Mode = swarm.ServiceMode{Global: &swarm.GlobalService{}}
			return s
		}, wantAll: []string{"m2", "node1", "w3"}, wantDown: []string{"m2", "node1"}, returns: true},
		{name: "replicated job moves", spec: func() swarm.ServiceSpec {
			s := replicated("job", 0)
			three := uint64(3)
			s.Mode = swarm.ServiceMode{ReplicatedJob: &swarm.ReplicatedJob{MaxConcurrent: &three, TotalCompletions: &three}}
			return s
		}, wantAll: []string{"m2", "node1", "w3"}, wantDown: []string{"m2", "m2", "node1"}},
		{name: "constraint keeps it off the others", spec: func() swarm.ServiceSpec {
			s := replicated("pinned", 1)
			s.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"node.role==worker"}}
			return s
		}, wantAll: []string{"w3"}, wantDown: []string{""}, returns: true}, // pending: no suitable node
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, set := clusterFixture(t)
			f.mustCreate(tc.spec())
			for range 3 {
				f.pass()
				f.agentsExcept()
			}
			if got := running(f.tasks()); !eq(got, tc.wantAll) {
				t.Fatalf("all ready: tasks on %v, want %v", got, tc.wantAll)
			}
			var onW3 *model.Task
			for _, tk := range f.tasks() {
				if tk.NodeID == "w3" {
					onW3 = tk
				}
			}

			set("w3", swarm.NodeStateDown)
			for range 3 {
				f.pass()
				f.agentsExcept("w3")
				// A replicated replacement waits out the restart delay.
				f.now = f.now.Add(6 * time.Second)
			}
			if got := running(f.tasks()); !eq(got, tc.wantDown) {
				t.Fatalf("w3 down: tasks on %v, want %v", got, tc.wantDown)
			}
			var old *model.Task
			for _, tk := range f.tasks() {
				if tk.ID == onW3.ID {
					old = tk
				}
			}
			// Shut down (kept as history), still running as last reported.
			if old == nil || old.DesiredState != swarm.TaskStateShutdown || old.Status.State != swarm.TaskStateRunning {
				t.Fatalf("w3's task while w3 is down: %+v", old)
			}
			if tc.restarted {
				// The replacement counts as a restart of the slot.
				var repl *model.Task
				for _, tk := range f.tasks() {
					if tk.Slot == old.Slot && tk.ID != old.ID && model.Runs(tk.DesiredState) {
						repl = tk
					}
				}
				if repl == nil || len(repl.Restarts) != 1 {
					t.Fatalf("replacement of w3's task: %+v", repl)
				}
			}

			// Back: its agent stops the stale task; only a global service
			// (or a constrained one with nowhere else to go) returns to it.
			set("w3", swarm.NodeStateReady)
			for range 4 {
				f.pass()
				f.agentsExcept()
			}
			for _, tk := range f.tasks() {
				if tk.ID == onW3.ID && tk.Status.State != swarm.TaskStateShutdown {
					t.Fatalf("stale task after w3 returned: %+v", tk.Status)
				}
			}
			want := tc.wantDown
			if tc.returns {
				want = tc.wantAll
			}
			if got := running(f.tasks()); !eq(got, want) {
				t.Fatalf("w3 back: tasks on %v, want %v", got, want)
			}
		})
	}
}

// Under a leadership, task writes carry its guard: once it is lost, a
// pass writes nothing (a deposed orchestrator cannot race its successor).
func TestTaskWritesGuardedByLeadership(t *testing.T) {
	f := newFixture(t)
	l, err := f.st.Campaign(f.ctx, "orchestrator", "node1", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f.o.SetLeadership(l)
	f.mustCreate(replicated("web", 2))
	f.pass()
	if n := len(f.tasks()); n != 2 {
		t.Fatalf("leading: %d tasks, want 2", n)
	}
	f.mustCreate(replicated("api", 1))
	if err := l.Resign(f.ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.o.Reconcile(f.ctx); !errors.Is(err, store.ErrGuard) {
		t.Fatalf("deposed pass: %v, want ErrGuard", err)
	}
	if n := len(f.tasks()); n != 2 {
		t.Fatalf("deposed: %d tasks, want still 2", n)
	}
}
