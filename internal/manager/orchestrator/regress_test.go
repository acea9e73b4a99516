package orchestrator

import (
	"strconv"
	"strings"
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
	id := f.mustCreate(s)
	f.pass()
	svc := f.mustGet(id)
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
	id := f.mustCreate(s)
	f.pass()
	f.agent()
	old := f.tasks()
	if len(old) != 1 || old[0].Status.State != swarm.TaskStateRunning {
		t.Fatalf("before the update: want one running task, have %d", len(old))
	}
	// The fake clock must not lag the services manager's real one, which
	// stamps the update's start: the rollout's tasks are those made since.
	f.now = f.now.Add(time.Second)
	svc := f.mustGet(id)
	next := svc.Spec
	cs := *next.TaskTemplate.ContainerSpec
	cs.Image = "img:bad"
	next.TaskTemplate.ContainerSpec = &cs
	if err := f.svcs.Update(f.ctx, id, next, services.UpdateOptions{Version: svc.Version.Index}); err != nil {
		t.Fatal(err)
	}
	f.pass() // creates the new task beside the old one
	var bad *model.Task
	for _, tk := range f.tasks() {
		if tk.Spec.ContainerSpec.Image == "img:bad" {
			if bad != nil {
				t.Fatalf("start-first made more than one new task at once")
			}
			bad = tk
		}
	}
	if bad == nil {
		t.Fatal("start-first update made no new task")
	}
	f.setState(bad, swarm.TaskStateRejected, "No such image: img:bad")
	for i := 0; i < 30; i++ {
		f.now = f.now.Add(time.Second)
		f.pass()
	}

	svc = f.mustGet(id)
	if svc.UpdateStatus == nil {
		t.Fatal("UpdateStatus is nil after a failed update: want paused")
	}
	if svc.UpdateStatus.State != swarm.UpdateStatePaused || !strings.Contains(svc.UpdateStatus.Message, bad.ID) {
		t.Errorf("update status after the new task failed: %s %q, want paused naming task %s", svc.UpdateStatus.State, svc.UpdateStatus.Message, bad.ID)
	}
	// The restart policy applies to the failed task too: it is shut down
	// and replaced; the old task keeps running meanwhile (start-first).
	var replacements int
	for _, tk := range f.tasks() {
		switch {
		case tk.ID == bad.ID:
			if tk.DesiredState != swarm.TaskStateShutdown {
				t.Errorf("the failed task is still desired %s", tk.DesiredState)
			}
		case tk.ID == old[0].ID:
			if tk.DesiredState != swarm.TaskStateRunning {
				t.Errorf("the old task is desired %s after the new one failed; start-first keeps it running", tk.DesiredState)
			}
		case tk.Spec.ContainerSpec.Image == "img:bad":
			replacements++
		}
	}
	if replacements != 1 {
		t.Errorf("the failed task was replaced %d times, want once (the rollout is paused)", replacements)
	}
}

// Regression: restart-max-attempts >= 5 is never reached because pruned history is
// what the count is taken from.
func TestMaxAttemptsHonoured(t *testing.T) {
	for _, maxA := range []int{2, 4, 5, 6} {
		t.Run(strconv.Itoa(maxA), func(t *testing.T) {
			f := newFixture(t)
			s := replicated("web", 1)
			d := time.Duration(0)
			max := uint64(maxA)
			s.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure, Delay: &d, MaxAttempts: &max}
			f.mustCreate(s)
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
			// The first task and one per restart allowed.
			if created != maxA+1 {
				t.Fatalf("restart policy max attempts %d: %d tasks created, want %d", maxA, created, maxA+1)
			}
		})
	}
}
