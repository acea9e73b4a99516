package orchestrator

import (
	"fmt"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// failRepeatedly fails the running task of a one-replica service n times,
// letting the orchestrator restart it each time, and returns the tasks
// the orchestrator still keeps (those not marked for removal).
func failRepeatedly(t *testing.T, f *fixture, n int) []*model.Task {
	t.Helper()
	for i := 0; i < n; i++ {
		for _, tk := range f.tasks() {
			if tk.DesiredState == swarm.TaskStateRunning && !model.Terminal(tk.Status.State) {
				f.setState(tk, swarm.TaskStateFailed, "task: non-zero exit (1)")
			}
		}
		f.now = f.now.Add(time.Second)
		f.pass()
	}
	// Pruning may trail a restart by one pass, as Swarm's task reaper
	// trails its orchestrator.
	f.pass()
	var kept []*model.Task
	for _, tk := range f.tasks() {
		if tk.DesiredState != swarm.TaskStateRemove {
			kept = append(kept, tk)
		}
	}
	return kept
}

func TestHistoryLimitFromSettings(t *testing.T) {
	for _, tc := range []struct {
		limit    int64
		failures int
		want     int
	}{
		{limit: 2, failures: 6, want: 2},
		{limit: 3, failures: 6, want: 3},
		{limit: 0, failures: 4, want: 1}, // the running task is never pruned
		{limit: -1, failures: 6, want: 7},
	} {
		t.Run(fmt.Sprint(tc.limit), func(t *testing.T) {
			f := newFixture(t)
			f.o.SetSettings(func() Settings { return Settings{HistoryLimit: tc.limit} })
			s := replicated("web", 1)
			d := time.Duration(0)
			s.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny, Delay: &d}
			if _, err := f.svcs.Create(f.ctx, s); err != nil {
				t.Fatal(err)
			}
			f.pass()
			if got := len(failRepeatedly(t, f, tc.failures)); got != tc.want {
				t.Fatalf("history limit %d: %d tasks kept, want %d", tc.limit, got, tc.want)
			}
		})
	}
}

func TestDefaultsWithoutSettings(t *testing.T) {
	f := newFixture(t)
	s := replicated("web", 1)
	d := time.Duration(0)
	s.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny, Delay: &d}
	if _, err := f.svcs.Create(f.ctx, s); err != nil {
		t.Fatal(err)
	}
	f.pass()
	if got := len(failRepeatedly(t, f, 8)); got != defaultHistoryLimit {
		t.Fatalf("%d tasks kept, want Swarm's default %d", got, defaultHistoryLimit)
	}
}

func TestTaskDefaultLogDriver(t *testing.T) {
	f := newFixture(t)
	def := &swarm.Driver{Name: "json-file", Options: map[string]string{"max-size": "1m"}}
	f.o.SetSettings(func() Settings { return Settings{HistoryLimit: 5, LogDriver: def} })
	plain := replicated("plain", 1)
	own := replicated("own", 1)
	own.TaskTemplate.LogDriver = &swarm.Driver{Name: "none"}
	for _, s := range []swarm.ServiceSpec{plain, own} {
		if _, err := f.svcs.Create(f.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	f.pass()
	got := map[string]string{}
	for _, tk := range f.tasks() {
		if tk.Spec.LogDriver == nil {
			t.Fatalf("task of %s has no log driver", tk.ServiceName)
		}
		got[tk.ServiceName] = tk.Spec.LogDriver.Name
	}
	if got["plain"] != "json-file" || got["own"] != "none" {
		t.Fatalf("log drivers %v: the default applies only to services that name none", got)
	}
	// The service itself is unchanged: the default is the task's.
	svcs, _, _ := f.svcs.Snapshot(f.ctx)
	for _, s := range svcs {
		if s.Spec.Name == "plain" && s.Spec.TaskTemplate.LogDriver != nil {
			t.Fatal("the default log driver leaked into the service spec")
		}
	}
}
