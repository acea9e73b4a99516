package orchestrator

import (
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// fullAgent: like agent() plus deleting tasks marked for removal.
func (f *fixture) fullAgent() {
	f.agent()
	for _, t := range f.tasks() {
		if t.DesiredState == swarm.TaskStateRemove && model.Terminal(t.Status.State) {
			_ = f.st.Table(model.TasksTable).Delete(f.ctx, t.ID, "", 0, nil)
		}
	}
}

// Regression: a pending (unplaceable) task whose service is then updated is asked to
// shut down, but no agent ever acts on an unassigned task: the slot stays busy.
func TestUpdateOfPendingTaskProceeds(t *testing.T) {
	f := newFixture(t)
	s := replicated("web", 1)
	s.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"node.labels.zone==nowhere"}}
	id, err := f.svcs.Create(f.ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	f.pass()
	svc, _ := f.svcs.Get(f.ctx, id)
	next := svc.Spec
	next.TaskTemplate.Placement = nil // fix the constraint
	if err := f.svcs.Update(f.ctx, id, next, services.UpdateOptions{Version: svc.Version.Index}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		f.agent()
		f.now = f.now.Add(time.Second)
		f.pass()
	}
	ts := f.tasks()
	for _, tk := range ts {
		t.Logf("task %s node=%q desired=%s state=%s", tk.ID, tk.NodeID, tk.DesiredState, tk.Status.State)
	}
	if count(ts, swarm.TaskStateRunning, swarm.TaskStateRunning) != 1 {
		t.Fatalf("service never gets a running task after fixing its constraint")
	}
}

// Regression: start-first update whose new task fails: nothing restarts it and the
// failure action never fires.
func TestStartFirstFailureAppliesFailureAction(t *testing.T) {
	f := newFixture(t)
	s := replicated("web", 1)
	s.UpdateConfig = &swarm.UpdateConfig{Parallelism: 1, Order: swarm.UpdateOrderStartFirst, FailureAction: swarm.UpdateFailureActionPause}
	id, _ := f.svcs.Create(f.ctx, s)
	f.pass()
	f.agent()
	svc, _ := f.svcs.Get(f.ctx, id)
	next := svc.Spec
	cs := *next.TaskTemplate.ContainerSpec
	cs.Image = "img:bad"
	next.TaskTemplate.ContainerSpec = &cs
	if err := f.svcs.Update(f.ctx, id, next, services.UpdateOptions{Version: svc.Version.Index}); err != nil {
		t.Fatal(err)
	}
	f.pass() // creates the new task
	for _, tk := range f.tasks() {
		if tk.Spec.ContainerSpec.Image == "img:bad" {
			f.setState(tk, swarm.TaskStateRejected, "No such image: img:bad")
		}
	}
	for i := 0; i < 30; i++ {
		f.now = f.now.Add(time.Second)
		f.pass()
	}
	svc, _ = f.svcs.Get(f.ctx, id)
	for _, tk := range f.tasks() {
		t.Logf("task %s img=%s desired=%s state=%s", tk.ID, tk.Spec.ContainerSpec.Image, tk.DesiredState, tk.Status.State)
	}
	t.Logf("update status: %+v", svc.UpdateStatus)
	if svc.UpdateStatus != nil && svc.UpdateStatus.State == swarm.UpdateStateUpdating {
		t.Fatalf("update stuck in 'updating' forever; failure action never applied")
	}
}

// Regression: restart-max-attempts >= 5 is never reached because pruned history is
// what the count is taken from.
func TestMaxAttemptsHonoured(t *testing.T) {
	for _, maxA := range []int{2, 4, 5, 6} {
		t.Run(itoa(maxA), func(t *testing.T) {
			f := newFixture(t)
			s := replicated("web", 1)
			d := time.Duration(0)
			max := uint64(maxA)
			s.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure, Delay: &d, MaxAttempts: &max}
			_, _ = f.svcs.Create(f.ctx, s)
			f.pass()
			created := 0
			seen := map[string]bool{}
			for i := 0; i < 40; i++ {
				for _, tk := range f.tasks() {
					if !seen[tk.ID] {
						seen[tk.ID] = true
						created++
					}
					if tk.DesiredState == swarm.TaskStateRunning && !model.Terminal(tk.Status.State) {
						f.setState(tk, swarm.TaskStateFailed, "task: non-zero exit (1)")
					}
				}
				f.fullAgent()
				f.now = f.now.Add(time.Second)
				f.pass()
			}
			t.Logf("tasks created: %d (max attempts %d => want at most %d)", created, max, max+1)
			if created > int(max)+1 {
				t.Fatalf("restart policy max attempts not honoured: %d tasks", created)
			}
		})
	}
}
