package orchestrator

import (
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// updateTo changes the service's image (a task template change, so a
// rollout), and whatever else change changes.
func (f *fixture) updateTo(id, image string, change func(*swarm.ServiceSpec)) {
	f.t.Helper()
	svc := f.mustGet(id)
	next := svc.Spec
	cs := *next.TaskTemplate.ContainerSpec
	cs.Image = image
	next.TaskTemplate.ContainerSpec = &cs
	if change != nil {
		change(&next)
	}
	if err := f.svcs.Update(f.ctx, id, next, services.UpdateOptions{Version: svc.Version.Index}); err != nil {
		f.t.Fatal(err)
	}
}

// failImage fails every running task of the given image.
func (f *fixture) failImage(image string) int {
	f.t.Helper()
	return f.failWhere(func(tk *model.Task) bool { return tk.Spec.ContainerSpec.Image == image })
}

// failWhere fails every running task that match selects.
func (f *fixture) failWhere(match func(*model.Task) bool) int {
	f.t.Helper()
	n := 0
	for _, tk := range f.tasks() {
		if match(tk) && tk.Status.State == swarm.TaskStateRunning {
			f.setState(tk, swarm.TaskStateFailed, "task: non-zero exit (1)")
			n++
		}
	}
	return n
}

// MaxFailureRatio: as Swarm's updater, the failure action applies once the
// failed updated tasks exceed the ratio of the slots being updated; a
// slot whose updated task failed counts once, however often its
// replacements fail.
func TestMaxFailureRatio(t *testing.T) {
	f := newFixture(t)
	s := replicated("web", 4)
	d := time.Duration(0)
	s.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny, Delay: &d}
	s.UpdateConfig = &swarm.UpdateConfig{Parallelism: 1, FailureAction: swarm.UpdateFailureActionPause, MaxFailureRatio: 0.5, Monitor: time.Minute}
	id := f.mustCreate(s)
	for i := 0; i < 3; i++ {
		f.step(time.Second)
	}
	f.updateTo(id, "img:2", nil)
	state := func() swarm.UpdateState {
		st := f.mustGet(id).UpdateStatus
		if st == nil {
			return ""
		}
		return st.State
	}
	updated := func(tk *model.Task) bool { return tk.Spec.ContainerSpec.Image == "img:2" }
	inSlot := func(slot int) func(*model.Task) bool {
		return func(tk *model.Task) bool { return updated(tk) && tk.Slot == slot }
	}
	// Slot 1 is updated first; its task fails, then its replacement: one
	// slot of four, within the ratio.
	f.step(time.Second)
	f.step(time.Second)
	for i := 0; i < 2; i++ {
		if n := f.failWhere(inSlot(1)); n != 1 {
			t.Fatalf("failure %d: %d updated tasks running in slot 1, want 1", i+1, n)
		}
		f.step(time.Second)
		f.step(time.Second)
	}
	if got := state(); got != swarm.UpdateStateUpdating {
		t.Fatalf("after one failed slot of four (ratio 0.5): update %s, want updating", got)
	}
	// The rollout goes on: a second slot fails, 2/4, not above the ratio.
	failNext := func(done map[int]bool) int {
		t.Helper()
		for i := 0; i < 8; i++ {
			for _, tk := range f.tasks() {
				if updated(tk) && !done[tk.Slot] && tk.Status.State == swarm.TaskStateRunning {
					f.setState(tk, swarm.TaskStateFailed, "task: non-zero exit (1)")
					f.step(time.Second)
					return tk.Slot
				}
			}
			f.step(time.Second)
		}
		t.Fatal("the rollout did not go on to another slot")
		return 0
	}
	done := map[int]bool{1: true}
	done[failNext(done)] = true
	if got := state(); got != swarm.UpdateStateUpdating {
		t.Fatalf("after two failed slots of four (ratio 0.5): update %s, want updating", got)
	}
	// A third: 3/4 > 0.5, the update pauses.
	done[failNext(done)] = true
	st := f.mustGet(id).UpdateStatus
	if st == nil || st.State != swarm.UpdateStatePaused || !strings.HasPrefix(st.Message, "update paused due to failure or early termination of task ") {
		t.Fatalf("after three failed slots of four: %+v, want paused", st)
	}
}

// With a ratio of 0 (the default) the first failure applies the action.
func TestMaxFailureRatioZero(t *testing.T) {
	f := newFixture(t)
	s := replicated("web", 4)
	s.UpdateConfig = &swarm.UpdateConfig{Parallelism: 1, FailureAction: swarm.UpdateFailureActionPause}
	id := f.mustCreate(s)
	f.step(time.Second)
	f.step(time.Second)
	f.updateTo(id, "img:2", nil)
	f.step(time.Second)
	f.step(time.Second)
	if n := f.failImage("img:2"); n != 1 {
		t.Fatalf("%d updated tasks running, want 1", n)
	}
	f.step(time.Second)
	if st := f.mustGet(id).UpdateStatus; st == nil || st.State != swarm.UpdateStatePaused {
		t.Fatalf("update status %+v, want paused", st)
	}
}

// A rollback applies its own failure action: pause (and rollback, since a
// rollback is never rolled back) pauses it with Swarm's message.
func TestRollbackFailureActionPauses(t *testing.T) {
	for _, action := range []swarm.FailureAction{swarm.UpdateFailureActionPause, swarm.UpdateFailureActionRollback} {
		t.Run(string(action), func(t *testing.T) {
			f := newFixture(t)
			s := replicated("web", 1)
			s.RollbackConfig = &swarm.UpdateConfig{Parallelism: 1, FailureAction: action}
			id := f.mustCreate(s)
			f.step(time.Second)
			f.step(time.Second)
			f.updateTo(id, "img:2", nil)
			for i := 0; i < 3; i++ {
				f.step(time.Second)
			}
			svc := f.mustGet(id)
			if err := f.svcs.Update(f.ctx, id, swarm.ServiceSpec{}, services.UpdateOptions{Version: svc.Version.Index, Rollback: true}); err != nil {
				t.Fatal(err)
			}
			f.step(time.Second)
			f.step(time.Second)
			if n := f.failImage("img:1"); n != 1 {
				t.Fatalf("%d rolled-back tasks running, want 1", n)
			}
			f.step(time.Second)
			st := f.mustGet(id).UpdateStatus
			if st == nil || st.State != swarm.UpdateStateRollbackPaused || !strings.HasPrefix(st.Message, "rollback paused due to failure or early termination of task ") {
				t.Fatalf("rollback status %+v, want rollback_paused", st)
			}
		})
	}
}
