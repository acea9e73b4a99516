package orchestrator

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/constraint"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

func replicatedJob(name string, maxConcurrent, total uint64) swarm.ServiceSpec {
	var s swarm.ServiceSpec
	s.Name = name
	s.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: "img:1"}
	s.Mode.ReplicatedJob = &swarm.ReplicatedJob{MaxConcurrent: &maxConcurrent, TotalCompletions: &total}
	return s
}

func globalJob(name string) swarm.ServiceSpec {
	var s swarm.ServiceSpec
	s.Name = name
	s.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: "img:1"}
	s.Mode.GlobalJob = &swarm.GlobalJob{}
	return s
}

// exitAll makes every running task of the service exit: with code 0 it
// completes, otherwise it fails.
func (f *fixture) exitAll(service string, code int) int {
	f.t.Helper()
	n := 0
	for _, t := range f.tasks() {
		if t.ServiceName == service && t.Status.State == swarm.TaskStateRunning {
			if code == 0 {
				f.setState(t, swarm.TaskStateComplete, "")
			} else {
				f.setState(t, swarm.TaskStateFailed, "task: non-zero exit (1)")
			}
			n++
		}
	}
	return n
}

// step is one beat of the cluster: the orchestrator, then the agents, with
// time moving on by d.
func (f *fixture) step(d time.Duration) {
	f.t.Helper()
	f.pass()
	f.agent()
	f.now = f.now.Add(d)
}

func live(ts []*model.Task) int {
	n := 0
	for _, t := range ts {
		if !model.Terminal(t.Status.State) && t.DesiredState != swarm.TaskStateReady && t.Status.State != swarm.TaskStatePending {
			n++
		}
	}
	return n
}

// The job runs MaxConcurrent tasks at a time until TotalCompletions of them
// completed, each in its own slot numbered from 0 as in Swarm, then stops
// for good: completed tasks are never run again.
func TestReplicatedJobCompletes(t *testing.T) {
	f := newFixture(t)
	if _, err := f.svcs.Create(f.ctx, replicatedJob("job", 2, 5)); err != nil {
		t.Fatal(err)
	}
	maxLive := 0
	for i := 0; i < 20; i++ {
		f.step(time.Second)
		ts := f.tasks()
		maxLive = max(maxLive, live(ts))
		for _, tk := range ts {
			if tk.DesiredState != swarm.TaskStateComplete {
				t.Fatalf("a job task must be desired complete, got %s", tk.DesiredState)
			}
			if tk.JobIteration == nil || tk.JobIteration.Index != 0 {
				t.Fatalf("task %s: job iteration %v, want 0", tk.ID, tk.JobIteration)
			}
		}
		f.exitAll("job", 0)
	}
	if maxLive != 2 {
		t.Errorf("at most MaxConcurrent=2 tasks should run at once, and 2 should: saw %d", maxLive)
	}
	ts := f.tasks()
	if len(ts) != 5 || count(ts, swarm.TaskStateComplete, swarm.TaskStateComplete) != 5 {
		t.Fatalf("want exactly 5 completed tasks and no other, have %d tasks (%d complete)", len(ts), count(ts, "", swarm.TaskStateComplete))
	}
	var slots []int
	for _, tk := range ts {
		slots = append(slots, tk.Slot)
	}
	sort.Ints(slots)
	for i, s := range slots {
		if s != i {
			t.Fatalf("slots %v, want 0..4", slots)
		}
	}
}

// A failed task is retried after the restart delay (the default policy
// "any" acts as "on-failure"); the retry completes the slot.
func TestJobFailureRetriedAfterDelay(t *testing.T) {
	f := newFixture(t)
	if _, err := f.svcs.Create(f.ctx, replicatedJob("job", 1, 1)); err != nil {
		t.Fatal(err)
	}
	f.step(0)
	f.exitAll("job", 1)
	f.pass()
	ts := f.tasks()
	if len(ts) != 2 || count(ts, swarm.TaskStateShutdown, swarm.TaskStateFailed) != 1 || count(ts, swarm.TaskStateReady, swarm.TaskStateReady) != 1 {
		t.Fatalf("after the failure: want the failed task shut down and a retry waiting, have %d tasks", len(ts))
	}
	f.now = f.now.Add(3 * time.Second)
	f.step(0)
	if count(f.tasks(), "", swarm.TaskStateRunning) != 0 {
		t.Fatal("the retry started before the 5 s delay")
	}
	f.now = f.now.Add(3 * time.Second)
	f.step(0)
	f.step(0)
	if got := f.exitAll("job", 0); got != 1 {
		t.Fatalf("after the delay the retry should run: %d running", got)
	}
	for i := 0; i < 5; i++ {
		f.step(time.Second)
	}
	ts = f.tasks()
	if len(ts) != 2 || count(ts, swarm.TaskStateComplete, swarm.TaskStateComplete) != 1 {
		t.Fatalf("want the failed task and one completed retry, have %d tasks", len(ts))
	}
	for _, tk := range ts {
		if tk.Slot != 0 {
			t.Fatalf("the retry must take the failed task's slot 0, got %d", tk.Slot)
		}
	}
}

// Restart condition "none" and max attempts end the retries of a slot; the
// job's other slots still run, and nothing is created after that.
func TestJobRestartPolicyLimits(t *testing.T) {
	zero := time.Duration(0)
	one := uint64(1)
	tests := []struct {
		name      string
		policy    swarm.RestartPolicy
		wantTasks int // slot 0 fails every time; slot 1 completes
	}{
		{"none", swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone, Delay: &zero}, 2},
		{"max attempts 1", swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny, Delay: &zero, MaxAttempts: &one}, 3},
		{"on-failure, max attempts 1", swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure, Delay: &zero, MaxAttempts: &one}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			s := replicatedJob("job", 2, 2)
			p := tt.policy
			s.TaskTemplate.RestartPolicy = &p
			id, err := f.svcs.Create(f.ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 15; i++ {
				f.step(time.Second)
				for _, tk := range f.tasks() {
					if tk.Status.State != swarm.TaskStateRunning {
						continue
					}
					if tk.Slot == 0 {
						f.setState(tk, swarm.TaskStateFailed, "task: non-zero exit (1)")
					} else {
						f.setState(tk, swarm.TaskStateComplete, "")
					}
				}
			}
			ts := f.tasks()
			if len(ts) != tt.wantTasks {
				t.Fatalf("want %d tasks in all, have %d", tt.wantTasks, len(ts))
			}
			if got := count(ts, swarm.TaskStateComplete, swarm.TaskStateComplete); got != 1 {
				t.Fatalf("slot 1 should have completed once: %d complete", got)
			}
			if got := count(ts, swarm.TaskStateShutdown, swarm.TaskStateFailed); got != tt.wantTasks-1 {
				t.Fatalf("every failed try should be shut down: %d", got)
			}
			svc, _ := f.svcs.Get(f.ctx, id)
			if svc.UpdateStatus != nil {
				t.Fatalf("a job has no update status: %+v", svc.UpdateStatus)
			}
		})
	}
}

// An update (here a forced one) runs the job again as a new iteration: new
// tasks, the old completed ones kept as history and not counted, old ones
// still running removed.
func TestJobForceUpdateNewIteration(t *testing.T) {
	f := newFixture(t)
	id, err := f.svcs.Create(f.ctx, replicatedJob("job", 1, 2))
	if err != nil {
		t.Fatal(err)
	}
	// Slot 0 completes; slot 1 is running when the update comes.
	f.step(time.Second)
	f.exitAll("job", 0)
	f.step(time.Second)
	f.step(time.Second)
	if count(f.tasks(), "", swarm.TaskStateRunning) != 1 {
		t.Fatal("slot 1 should be running")
	}
	svc, _ := f.svcs.Get(f.ctx, id)
	if svc.JobStatus == nil || svc.JobStatus.JobIteration.Index != 0 {
		t.Fatalf("job status at create: %+v", svc.JobStatus)
	}
	next := svc.Spec
	next.TaskTemplate.ForceUpdate++
	if err := f.svcs.Update(f.ctx, id, next, services.UpdateOptions{Version: svc.Version.Index}); err != nil {
		t.Fatal(err)
	}
	svc, _ = f.svcs.Get(f.ctx, id)
	if svc.JobStatus == nil || svc.JobStatus.JobIteration.Index != 1 || svc.UpdateStatus != nil {
		t.Fatalf("after the update: job status %+v, update status %+v", svc.JobStatus, svc.UpdateStatus)
	}
	for i := 0; i < 10; i++ {
		f.step(time.Second)
		f.exitAll("job", 0)
	}
	var old, cur []*model.Task
	for _, tk := range f.tasks() {
		if tk.JobIteration != nil && tk.JobIteration.Index == 1 {
			cur = append(cur, tk)
		} else {
			old = append(old, tk)
		}
	}
	if len(cur) != 2 || count(cur, swarm.TaskStateComplete, swarm.TaskStateComplete) != 2 {
		t.Fatalf("iteration 1: want 2 completed tasks, have %d", len(cur))
	}
	// The old running task was removed (the fake agent stops it; the real
	// one then deletes it); the old completed one stays as history.
	if count(old, swarm.TaskStateComplete, swarm.TaskStateComplete) != 1 || count(old, swarm.TaskStateRemove, "") != 1 {
		t.Fatalf("iteration 0: want one completed task kept and one removed, have %d tasks", len(old))
	}
}

// A global job runs once on every node that can take it; drained nodes and
// nodes failing the constraints get nothing. An update removes the old
// iteration's tasks, as in Swarm.
func TestGlobalJob(t *testing.T) {
	f := newFixture(t)
	f.nodes(
		testNode{id: "n1", labels: map[string]string{"db": "yes"}},
		testNode{id: "n2", labels: map[string]string{"db": "yes"}},
		testNode{id: "n3", avail: swarm.NodeAvailabilityDrain, labels: map[string]string{"db": "yes"}},
		testNode{id: "n4"},
	)
	s := globalJob("gjob")
	s.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"node.labels.db == yes"}}
	id, err := f.svcs.Create(f.ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		f.step(time.Second)
		f.exitAll("gjob", 0)
	}
	ts := f.tasks()
	onNode := map[string]int{}
	for _, tk := range ts {
		onNode[tk.NodeID]++
		if tk.Slot != 0 || tk.Status.State != swarm.TaskStateComplete || tk.DesiredState != swarm.TaskStateComplete {
			t.Fatalf("task on %s: slot %d, %s/%s", tk.NodeID, tk.Slot, tk.DesiredState, tk.Status.State)
		}
	}
	if len(ts) != 2 || onNode["n1"] != 1 || onNode["n2"] != 1 {
		t.Fatalf("want one completed task on each of n1 and n2, have %v", onNode)
	}
	svc, _ := f.svcs.Get(f.ctx, id)
	next := svc.Spec
	next.TaskTemplate.ForceUpdate++
	if err := f.svcs.Update(f.ctx, id, next, services.UpdateOptions{Version: svc.Version.Index}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		f.step(time.Second)
		f.exitAll("gjob", 0)
	}
	ts = f.tasks()
	if got := count(ts, swarm.TaskStateRemove, ""); got != 2 {
		t.Fatalf("the old iteration's 2 tasks should be removed: %d", got)
	}
	if got := count(ts, swarm.TaskStateComplete, swarm.TaskStateComplete); got != 2 {
		t.Fatalf("the new iteration should complete once per node: %d", got)
	}
}

// Replicas beyond MaxReplicas per node wait with Swarm's reason, and a
// job's waiting task runs once an earlier one is done.
func TestMaxReplicasPerNode(t *testing.T) {
	f := newFixture(t)
	s := replicated("web", 3)
	s.TaskTemplate.Placement = &swarm.Placement{MaxReplicas: 1}
	if _, err := f.svcs.Create(f.ctx, s); err != nil {
		t.Fatal(err)
	}
	f.step(0)
	f.step(0)
	ts := f.tasks()
	if got := count(ts, swarm.TaskStateRunning, swarm.TaskStateRunning); got != 1 {
		t.Fatalf("one replica should run on the one node: %d", got)
	}
	for _, tk := range ts {
		if tk.Status.State == swarm.TaskStatePending && tk.Status.Err != "no suitable node (max replicas per node limit exceed)" {
			t.Fatalf("pending reason %q", tk.Status.Err)
		}
	}
	if got := count(ts, swarm.TaskStateRunning, swarm.TaskStatePending); got != 2 {
		t.Fatalf("two replicas should wait: %d", got)
	}

	j := replicatedJob("job", 3, 3)
	j.TaskTemplate.Placement = &swarm.Placement{MaxReplicas: 1}
	if _, err := f.svcs.Create(f.ctx, j); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 12; i++ {
		f.step(time.Second)
		running := 0
		for _, tk := range f.tasks() {
			if tk.ServiceName == "job" && tk.Status.State == swarm.TaskStateRunning {
				running++
			}
		}
		if running > 1 {
			t.Fatalf("max one job task per node, %d running", running)
		}
		f.exitAll("job", 0)
	}
	done := 0
	for _, tk := range f.tasks() {
		if tk.ServiceName == "job" && tk.Status.State == swarm.TaskStateComplete {
			done++
		}
	}
	if done != 3 {
		t.Fatalf("the job should complete 3 tasks one after the other: %d", done)
	}
}

// With several nodes, MaxReplicas puts one replica on each.
func TestMaxReplicasSeveralNodes(t *testing.T) {
	f := newFixture(t)
	f.nodes(testNode{id: "n1"}, testNode{id: "n2"}, testNode{id: "n3"})
	s := replicated("web", 4)
	s.TaskTemplate.Placement = &swarm.Placement{MaxReplicas: 1}
	if _, err := f.svcs.Create(f.ctx, s); err != nil {
		t.Fatal(err)
	}
	f.step(0)
	onNode := map[string]int{}
	for _, tk := range f.tasks() {
		onNode[tk.NodeID]++
	}
	if onNode["n1"] != 1 || onNode["n2"] != 1 || onNode["n3"] != 1 || onNode[""] != 1 {
		t.Fatalf("want one replica per node and one waiting: %v", onNode)
	}
}

// Reservations are checked against what the node offers minus what its
// live tasks reserve; a task that does not fit waits with Swarm's reason
// and is placed once room frees.
func TestReservations(t *testing.T) {
	const mib = 1 << 20
	f := newFixture(t)
	f.o.SetResources(2e9, 1000*mib)
	a := replicated("a", 3)
	a.TaskTemplate.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{MemoryBytes: 400 * mib}}
	aID, err := f.svcs.Create(f.ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	f.step(0)
	ts := f.tasks()
	if got := count(ts, swarm.TaskStateRunning, swarm.TaskStateRunning); got != 2 {
		t.Fatalf("two 400 MiB tasks fit in 1000 MiB: %d running", got)
	}
	var waiting *model.Task
	for _, tk := range ts {
		if tk.Status.State == swarm.TaskStatePending {
			waiting = tk
		}
	}
	if waiting == nil || waiting.NodeID != "" || waiting.Status.Err != "no suitable node (insufficient resources on 1 node)" {
		t.Fatalf("the third should wait unplaced with Swarm's reason: %+v", waiting)
	}
	cpu := replicated("cpu", 1)
	cpu.TaskTemplate.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{NanoCPUs: 3e9}}
	if _, err := f.svcs.Create(f.ctx, cpu); err != nil {
		t.Fatal(err)
	}
	// A global service whose task cannot fit waits on its node.
	g := swarm.ServiceSpec{}
	g.Name = "g"
	g.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: "img:1"}
	g.Mode.Global = &swarm.GlobalService{}
	g.TaskTemplate.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{MemoryBytes: 300 * mib}}
	if _, err := f.svcs.Create(f.ctx, g); err != nil {
		t.Fatal(err)
	}
	f.step(0)
	f.step(0)
	for _, tk := range f.tasks() {
		switch tk.ServiceName {
		case "cpu":
			if tk.Status.State != swarm.TaskStatePending || tk.Status.Err != "no suitable node (insufficient resources on 1 node)" {
				t.Fatalf("3 CPUs on a 2-CPU node: %s %q", tk.Status.State, tk.Status.Err)
			}
		case "g":
			if tk.NodeID != "node1" || tk.Status.State != swarm.TaskStatePending || tk.Status.Err != "insufficient resources on 1 node" {
				t.Fatalf("global task short of memory: node %q, %s %q", tk.NodeID, tk.Status.State, tk.Status.Err)
			}
		}
	}
	// Scaling a down to 1 frees 400 MiB: the global task gets its room.
	svc, _ := f.svcs.Get(f.ctx, aID)
	next := svc.Spec
	one := uint64(1)
	next.Mode.Replicated = &swarm.ReplicatedService{Replicas: &one}
	if err := f.svcs.Update(f.ctx, aID, next, services.UpdateOptions{Version: svc.Version.Index}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		f.step(time.Second)
	}
	for _, tk := range f.tasks() {
		if tk.ServiceName == "g" && tk.Status.State != swarm.TaskStateRunning {
			t.Fatalf("the global task should run once memory is free: %s %q", tk.Status.State, tk.Status.Err)
		}
	}
}

// Spread over a node label: each label value (nodes without the label
// forming one more group) gets an even share; within a group the node with
// the fewest of the service's tasks is chosen.
func TestSpreadPreference(t *testing.T) {
	f := newFixture(t)
	f.nodes(
		testNode{id: "n1", labels: map[string]string{"zone": "a"}},
		testNode{id: "n2", labels: map[string]string{"zone": "a"}},
		testNode{id: "n3", labels: map[string]string{"zone": "b"}},
		testNode{id: "n4"},
	)
	s := replicated("web", 6)
	s.TaskTemplate.Placement = &swarm.Placement{Preferences: []swarm.PlacementPreference{{Spread: &swarm.SpreadOver{SpreadDescriptor: "node.labels.zone"}}}}
	if _, err := f.svcs.Create(f.ctx, s); err != nil {
		t.Fatal(err)
	}
	f.step(0)
	onNode := map[string]int{}
	for _, tk := range f.tasks() {
		onNode[tk.NodeID]++
	}
	want := map[string]int{"n1": 1, "n2": 1, "n3": 2, "n4": 2}
	for n, c := range want {
		if onNode[n] != c {
			t.Fatalf("spread over zone: %v, want %v", onNode, want)
		}
	}
	// Without the preference the same nodes share the tasks evenly.
	u := replicated("plain", 8)
	if _, err := f.svcs.Create(f.ctx, u); err != nil {
		t.Fatal(err)
	}
	f.step(0)
	plain := map[string]int{}
	for _, tk := range f.tasks() {
		if tk.ServiceName == "plain" {
			plain[tk.NodeID]++
		}
	}
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		if plain[n] != 2 {
			t.Fatalf("no preference: %v, want 2 per node", plain)
		}
	}
}

// With several nodes the reason counts each node at the first filter it
// fails, most failures first, as Swarm's scheduler words it.
func TestNoSuitableNodeExplanation(t *testing.T) {
	f := newFixture(t)
	f.nodes(
		testNode{id: "n1", avail: swarm.NodeAvailabilityPause},
		testNode{id: "n2"},
		testNode{id: "n3"},
	)
	s := replicated("web", 1)
	s.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"node.labels.zone == a"}}
	if _, err := f.svcs.Create(f.ctx, s); err != nil {
		t.Fatal(err)
	}
	f.pass()
	ts := f.tasks()
	want := "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available for new tasks)"
	if len(ts) != 1 || ts[0].Status.Err != want {
		t.Fatalf("reason %q, want %q", ts[0].Status.Err, want)
	}
}

// Pausing a node places nothing new on it but, unlike draining, leaves its
// tasks running, as in Swarm.
func TestPauseKeepsTasks(t *testing.T) {
	f := newFixture(t)
	f.nodes(testNode{id: "node1"})
	if _, err := f.svcs.Create(f.ctx, replicated("web", 1)); err != nil {
		t.Fatal(err)
	}
	f.step(0)
	f.testNodes[0].avail = swarm.NodeAvailabilityPause
	if _, err := f.svcs.Create(f.ctx, replicated("late", 1)); err != nil {
		t.Fatal(err)
	}
	f.step(0)
	f.step(0)
	for _, tk := range f.tasks() {
		switch tk.ServiceName {
		case "web":
			if tk.DesiredState != swarm.TaskStateRunning || tk.Status.State != swarm.TaskStateRunning {
				t.Fatalf("pause must not stop a running task: %s/%s", tk.DesiredState, tk.Status.State)
			}
		case "late":
			if tk.Status.Err != "no suitable node (1 node not available for new tasks)" {
				t.Fatalf("a new task on a paused node: %q", tk.Status.Err)
			}
		}
	}
}

// testNode is a fake node for placement: active and roomy unless told.
type testNode struct {
	id     string
	avail  swarm.NodeAvailability
	labels map[string]string
	// arch is the node's architecture as its engine reports it ("amd64"
	// when empty).
	arch string
}

// nodes makes the orchestrator see these nodes instead of its own one;
// tests may change f.testNodes between passes.
func (f *fixture) nodes(ns ...testNode) {
	for i := range ns {
		n := ns[i]
		if n.avail == "" {
			n.avail = swarm.NodeAvailabilityActive
		}
		f.testNodes = append(f.testNodes, &n)
	}
	f.o.listNodes = func(context.Context) ([]*schedNode, error) {
		var out []*schedNode
		for _, n := range f.testNodes {
			arch := n.arch
			if arch == "" {
				arch = "amd64"
			}
			out = append(out, &schedNode{
				node:  constraint.Node{ID: n.id, Hostname: n.id, Role: "manager", OS: "linux", Arch: arch, Labels: n.labels},
				avail: n.avail, nanoCPUs: 4e9, memoryBytes: 8 << 30,
			})
		}
		return out, nil
	}
}

// A global task waiting for room on its node is not the node's to start,
// but it is stopped like any other when the node is drained or the
// service removed.
func TestGlobalWaitingTaskRetired(t *testing.T) {
	f := newFixture(t)
	f.nodes(testNode{id: "node1"})
	g := swarm.ServiceSpec{}
	g.Name = "g"
	g.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: "img:1"}
	g.Mode.Global = &swarm.GlobalService{}
	g.TaskTemplate.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{MemoryBytes: 64 << 30}}
	id, err := f.svcs.Create(f.ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	f.step(0)
	f.step(0)
	ts := f.tasks()
	if len(ts) != 1 || !model.Unscheduled(ts[0]) || ts[0].NodeID != "node1" {
		t.Fatalf("want one task waiting on node1, have %d", len(ts))
	}
	f.testNodes[0].avail = swarm.NodeAvailabilityDrain
	f.step(0)
	f.step(0)
	ts = f.tasks()
	if len(ts) != 1 || ts[0].DesiredState != swarm.TaskStateShutdown || ts[0].Status.State != swarm.TaskStateShutdown {
		t.Fatalf("draining should shut the waiting task down: %d tasks, %s/%s", len(ts), ts[0].DesiredState, ts[0].Status.State)
	}
	f.testNodes[0].avail = swarm.NodeAvailabilityActive
	f.step(0)
	if err := f.svcs.Remove(f.ctx, id); err != nil {
		t.Fatal(err)
	}
	f.step(0)
	f.step(0)
	for _, tk := range f.tasks() {
		if tk.DesiredState != swarm.TaskStateRemove || !model.Terminal(tk.Status.State) {
			t.Fatalf("after service rm every task should be removed and down: %s/%s", tk.DesiredState, tk.Status.State)
		}
	}
}
