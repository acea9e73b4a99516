package orchestrator

import (
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// A job's completed task is its record that the slot is done, and a
// given-up task that it must not be tried again: a history limit of 0
// prunes neither (Swarm never prunes job tasks).
func TestJobHistoryLimitZero(t *testing.T) {
	t.Run("completed", func(t *testing.T) {
		f := newFixture(t)
		f.o.SetSettings(func() Settings { return Settings{HistoryLimit: 0} })
		f.mustCreate(replicatedJob("job", 1, 1))
		f.step(time.Second)
		f.exitAll("job", 0)
		for i := 0; i < 5; i++ {
			f.pass()
			f.fullAgent()
			f.now = f.now.Add(time.Second)
		}
		ts := f.tasks()
		if len(ts) != 1 || ts[0].Status.State != swarm.TaskStateComplete || ts[0].DesiredState == swarm.TaskStateRemove {
			t.Fatalf("want the one completed task kept, have %d tasks (first %s/%s)", len(ts), ts[0].DesiredState, ts[0].Status.State)
		}
	})
	t.Run("given up", func(t *testing.T) {
		f := newFixture(t)
		f.o.SetSettings(func() Settings { return Settings{HistoryLimit: 0} })
		s := replicatedJob("job", 1, 1)
		s.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone}
		f.mustCreate(s)
		f.step(time.Second)
		f.exitAll("job", 1)
		for i := 0; i < 5; i++ {
			f.pass()
			f.fullAgent()
			f.now = f.now.Add(time.Second)
		}
		ts := f.tasks()
		if len(ts) != 1 || ts[0].Status.State != swarm.TaskStateFailed {
			t.Fatalf("restart condition none: want the one failed task and no retry, have %d tasks", len(ts))
		}
	})
}
