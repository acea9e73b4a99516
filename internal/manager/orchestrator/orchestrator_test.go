package orchestrator

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

type fixture struct {
	t    *testing.T
	ctx  context.Context
	st   *store.Store
	svcs *services.Manager
	o    *Orchestrator
	now  time.Time
	// testNodes, when set (nodes()), are the nodes the orchestrator sees.
	testNodes []*testNode
}

func newFixture(t *testing.T) *fixture {
	ctx, cancel := context.WithCancel(context.Background())
	st := storetest.New(t)
	mir := store.NewMirror(st)
	svcs := services.New(st, mir, nil)
	done := make(chan struct{})
	go func() { mir.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := mir.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, ctx: context.Background(), st: st, svcs: svcs, now: time.Now().UTC()}
	f.o = New(st, mir, svcs, "node1", nil)
	f.o.now = func() time.Time { return f.now }
	return f
}

func (f *fixture) pass() {
	f.t.Helper()
	if err := f.o.Reconcile(f.ctx); err != nil {
		f.t.Fatal(err)
	}
}

// mustCreate creates a service and returns its ID.
func (f *fixture) mustCreate(spec swarm.ServiceSpec) string {
	f.t.Helper()
	id, err := f.svcs.Create(f.ctx, spec)
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

// mustGet reads a service.
func (f *fixture) mustGet(id string) *model.Service {
	f.t.Helper()
	svc, err := f.svcs.Get(f.ctx, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return svc
}

func (f *fixture) tasks() []*model.Task {
	f.t.Helper()
	_, ts, err := f.svcs.Snapshot(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return ts
}

// agent plays the nodes' agents: of the tasks assigned to a node, those
// meant to run (or, for jobs, to complete) become running, those meant to
// stop become shut down. A task still waiting for room on its node is left
// alone, as the real agent leaves it.
func (f *fixture) agent() {
	f.t.Helper()
	for _, t := range f.tasks() {
		if t.NodeID == "" || model.Unscheduled(t) && model.Runs(t.DesiredState) {
			continue
		}
		switch {
		case model.Runs(t.DesiredState) && (t.Status.State == swarm.TaskStateAssigned || t.Status.State == swarm.TaskStateReady):
			f.setState(t, swarm.TaskStateRunning, "")
		case !model.Runs(t.DesiredState) && t.DesiredState != swarm.TaskStateReady && !model.Terminal(t.Status.State):
			f.setState(t, swarm.TaskStateShutdown, "")
		}
	}
}

// setState writes a task status as the agent would.
func (f *fixture) setState(tk *model.Task, st swarm.TaskState, errText string) {
	f.t.Helper()
	next := *tk
	next.Status = swarm.TaskStatus{State: st, Timestamp: f.now, Err: errText}
	val, err := json.Marshal(&next)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.st.Table(model.TasksTable).Update(f.ctx, tk.ID, int64(tk.Version.Index), val); err != nil {
		f.t.Fatal(err)
	}
}

func count(ts []*model.Task, desired, state swarm.TaskState) int {
	n := 0
	for _, t := range ts {
		if (desired == "" || t.DesiredState == desired) && (state == "" || t.Status.State == state) {
			n++
		}
	}
	return n
}

func replicated(name string, n uint64) swarm.ServiceSpec {
	var s swarm.ServiceSpec
	s.Name = name
	s.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: "img:1"}
	s.Mode.Replicated = &swarm.ReplicatedService{Replicas: &n}
	return s
}

func TestReplicasScaleAndRemove(t *testing.T) {
	f := newFixture(t)
	id, err := f.svcs.Create(f.ctx, replicated("web", 3))
	if err != nil {
		t.Fatal(err)
	}
	f.pass()
	f.pass() // a second pass must not create more
	ts := f.tasks()
	if len(ts) != 3 || count(ts, swarm.TaskStateRunning, "") != 3 {
		t.Fatalf("want 3 tasks, have %d", len(ts))
	}
	slots := map[int]bool{}
	for _, tk := range ts {
		slots[tk.Slot] = true
		if tk.NodeID != "node1" || tk.Name() != "web."+itoa(tk.Slot) {
			t.Fatalf("task %+v", tk.Task)
		}
	}
	if len(slots) != 3 {
		t.Fatalf("slots %v", slots)
	}
	f.agent()
	// Scale down to 1: slots 2 and 3 are shut down, slot 1 untouched.
	svc := f.mustGet(id)
	next := svc.Spec
	one := uint64(1)
	next.Mode.Replicated = &swarm.ReplicatedService{Replicas: &one}
	if err := f.svcs.Update(f.ctx, id, next, services.UpdateOptions{Version: svc.Version.Index}); err != nil {
		t.Fatal(err)
	}
	f.pass()
	ts = f.tasks()
	if got := count(ts, swarm.TaskStateRunning, swarm.TaskStateRunning); got != 1 {
		t.Fatalf("after scale down: %d running-desired tasks", got)
	}
	if got := count(ts, swarm.TaskStateRemove, ""); got != 2 {
		t.Fatalf("after scale down: %d tasks to remove, want 2", got)
	}
	if len(ts) != 3 {
		t.Fatalf("scaling must not create tasks (have %d)", len(ts))
	}
	// Removing the service hands every task to the agent for removal.
	if err := f.svcs.Remove(f.ctx, id); err != nil {
		t.Fatal(err)
	}
	f.pass()
	if got := count(f.tasks(), swarm.TaskStateRemove, ""); got != 3 {
		t.Fatalf("after service rm: %d tasks marked remove", got)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestRollingUpdateStopFirst(t *testing.T) {
	f := newFixture(t)
	s := replicated("web", 2)
	s.UpdateConfig = &swarm.UpdateConfig{Parallelism: 1, Order: swarm.UpdateOrderStopFirst}
	id := f.mustCreate(s)
	f.pass()
	f.agent()
	svc := f.mustGet(id)
	next := svc.Spec
	cs := *next.TaskTemplate.ContainerSpec
	cs.Image = "img:2"
	next.TaskTemplate.ContainerSpec = &cs
	if err := f.svcs.Update(f.ctx, id, next, services.UpdateOptions{Version: svc.Version.Index}); err != nil {
		t.Fatal(err)
	}
	f.pass()
	ts := f.tasks()
	if got := count(ts, swarm.TaskStateShutdown, ""); got != 1 {
		t.Fatalf("parallelism 1: %d tasks shutting down", got)
	}
	if len(ts) != 2 {
		t.Fatalf("stop-first must not start the new task before the old is down: %d tasks", len(ts))
	}
	for i := 0; i < 12; i++ {
		f.agent()
		f.now = f.now.Add(time.Second)
		f.pass()
	}
	ts = f.tasks()
	running := 0
	for _, tk := range ts {
		if tk.DesiredState == swarm.TaskStateRunning {
			running++
			if tk.Spec.ContainerSpec.Image != "img:2" {
				t.Fatalf("task still on the old image after the rollout")
			}
		}
	}
	if running != 2 {
		t.Fatalf("%d tasks meant to run after the rollout", running)
	}
	svc = f.mustGet(id)
	if svc.UpdateStatus == nil || svc.UpdateStatus.State != swarm.UpdateStateCompleted {
		t.Fatalf("update status %+v", svc.UpdateStatus)
	}
}

func TestRestartPolicyDelay(t *testing.T) {
	f := newFixture(t)
	s := replicated("web", 1)
	d := 5 * time.Second
	s.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure, Delay: &d}
	f.mustCreate(s)
	f.pass()
	f.agent()
	// The container dies.
	ts0 := f.tasks()
	if len(ts0) != 1 || ts0[0].Status.State != swarm.TaskStateRunning {
		t.Fatalf("before the failure: want one running task, have %d", len(ts0))
	}
	f.setState(ts0[0], swarm.TaskStateFailed, "task: non-zero exit (1)")
	f.pass()
	// As in Swarm: the replacement exists at once, waiting as "ready".
	ts := f.tasks()
	if len(ts) != 2 || count(ts, swarm.TaskStateReady, swarm.TaskStateReady) != 1 || count(ts, swarm.TaskStateShutdown, swarm.TaskStateFailed) != 1 {
		t.Fatalf("right after the failure: %d tasks", len(ts))
	}
	f.now = f.now.Add(3 * time.Second)
	f.pass()
	if count(f.tasks(), swarm.TaskStateRunning, "") != 0 {
		t.Fatal("started before the delay elapsed")
	}
	f.now = f.now.Add(3 * time.Second)
	f.pass()
	ts = f.tasks()
	if len(ts) != 2 || count(ts, swarm.TaskStateRunning, swarm.TaskStateReady) != 1 {
		t.Fatalf("after the delay: %d tasks", len(ts))
	}
}

func TestPlacementConstraints(t *testing.T) {
	f := newFixture(t)
	if _, err := nodes.Ensure(f.ctx, f.st, "node1"); err != nil {
		t.Fatal(err)
	}
	s := replicated("web", 1)
	s.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"node.labels.zone == a"}}
	id, err := f.svcs.Create(f.ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	f.pass()
	ts := f.tasks()
	if len(ts) != 1 || ts[0].NodeID != "" || ts[0].Status.State != swarm.TaskStatePending ||
		ts[0].Status.Err != "no suitable node (scheduling constraints not satisfied on 1 node)" {
		t.Fatalf("unplaceable task: %+v", ts[0].Task)
	}
	// Labelling the node places it.
	n, err := nodes.Get(f.ctx, f.st, "node1")
	if err != nil {
		t.Fatal(err)
	}
	spec := n.Spec
	spec.Labels = map[string]string{"zone": "a"}
	if err := nodes.Update(f.ctx, f.st, "node1", n.Version, spec); err != nil {
		t.Fatal(err)
	}
	f.pass()
	ts = f.tasks()
	if len(ts) != 1 || ts[0].NodeID != "node1" || ts[0].Status.State != swarm.TaskStateAssigned {
		t.Fatalf("after labelling: %+v", ts[0].Task)
	}
	f.agent()
	// Removing the label stops it; the slot waits again.
	if n, err = nodes.Get(f.ctx, f.st, "node1"); err != nil {
		t.Fatal(err)
	}
	spec = n.Spec
	spec.Labels = map[string]string{}
	if err := nodes.Update(f.ctx, f.st, "node1", n.Version, spec); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		f.pass()
		f.agent()
	}
	ts = f.tasks()
	if got := count(ts, swarm.TaskStateRunning, swarm.TaskStatePending); got != 1 {
		t.Fatalf("after unlabelling: %d pending tasks", got)
	}
	if got := count(ts, swarm.TaskStateShutdown, swarm.TaskStateShutdown); got != 1 {
		t.Fatalf("after unlabelling: %d shut down tasks", got)
	}
	// Removing the service deletes the unplaced task without an agent.
	if err := f.svcs.Remove(f.ctx, id); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		f.pass()
	}
	for _, tk := range f.tasks() {
		if tk.NodeID == "" {
			t.Fatalf("unplaced task left after service rm: %+v", tk.Task)
		}
	}
}

func TestEngineLabelConstraint(t *testing.T) {
	f := newFixture(t)
	f.o.SetEngineLabels([]string{"storage=ssd", "tier"})
	s := replicated("db", 1)
	s.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"engine.labels.storage == ssd"}}
	if _, err := f.svcs.Create(f.ctx, s); err != nil {
		t.Fatal(err)
	}
	f.pass()
	if ts := f.tasks(); len(ts) != 1 || ts[0].NodeID != "node1" {
		t.Fatalf("engine label constraint not met: %+v", ts)
	}
	s2 := replicated("db2", 1)
	s2.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"engine.labels.storage == hdd"}}
	if _, err := f.svcs.Create(f.ctx, s2); err != nil {
		t.Fatal(err)
	}
	f.pass()
	pending := 0
	for _, tk := range f.tasks() {
		if tk.ServiceName == "db2" && tk.NodeID == "" && tk.Status.State == swarm.TaskStatePending {
			pending++
		}
	}
	if pending != 1 {
		t.Fatalf("unsatisfied engine label: %d pending tasks", pending)
	}
}
