package dispatcher

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/dispatcher/dispatchertest"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// TestReportStatusNotBackdated: a node's timestamp never puts a task's
// status before the one it replaces. The orchestrator times the restart
// delay from a failure's timestamp and an update's monitor period from a
// running task's, so a node reporting far in the past (a clock behind, or
// a node that wants its task restarted at once) would skip both.
func TestReportStatusNotBackdated(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	assignedAt := now.Add(-time.Minute)
	for _, tc := range []struct {
		name  string
		state swarm.TaskState
		at    time.Time
		want  time.Time
	}{
		{"running an hour before its assignment", swarm.TaskStateRunning, now.Add(-time.Hour), assignedAt},
		{"failed in 1970", swarm.TaskStateFailed, time.Unix(0, 0), assignedAt},
		{"after its assignment", swarm.TaskStateRunning, assignedAt.Add(time.Second), assignedAt.Add(time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := dispatchertest.NewMemStore()
			tk := task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned)
			tk.Status.Timestamp = assignedAt
			m.Put(t, tk)
			d := New(Config{Tasks: m, Changes: m, Table: m, Secrets: &dispatchertest.Data{}, Configs: &dispatchertest.Data{}, Now: func() time.Time { return now }})
			got, err := open(t, d, "n1").ReportStatus(context.Background(), model.StatusReport{TaskID: "t", State: tc.state, At: tc.at})
			if err != nil {
				t.Fatal(err)
			}
			if !got.Status.Timestamp.Equal(tc.want) {
				t.Fatalf("answered timestamp %v, want %v", got.Status.Timestamp, tc.want)
			}
			if st := m.Task(t, "t").Status.Timestamp; !st.Equal(tc.want) {
				t.Fatalf("stored timestamp %v, want %v", st, tc.want)
			}
		})
	}
}

// TestStatusRepeatsBounded: a report that advances a task's state is
// bounded by the state machine (a handful per task), but a repeat of the
// same state (a new message, container or loaded versions) was written
// every time: a node repeating reports with new messages made one store
// write each, and every write wakes every session's diff. Repeats are
// bounded per node, with a burst no agent reaches (it repeats a state
// once per engine outage, start or reload of a task); transitions are not
// charged.
func TestStatusRepeatsBounded(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := dispatchertest.NewMemStore()
	m.Put(t, task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning))
	m.Put(t, task("u", "n1", swarm.TaskStateRunning, swarm.TaskStateStarting))
	d := New(Config{Tasks: m, Changes: m, Table: m, Secrets: &dispatchertest.Data{}, Configs: &dispatchertest.Data{}, Now: func() time.Time { return now }})
	s := open(t, d, "n1")
	ctx := context.Background()
	refused := -1
	for i := range repeatBurst + 10 {
		if _, err := s.ReportStatus(ctx, model.StatusReport{TaskID: "t", State: swarm.TaskStateRunning, Message: fmt.Sprint("m", i)}); err != nil {
			if !errdefs.Is(err, errdefs.ErrUnavailable) {
				t.Fatalf("repeat %d: %v, want unavailable", i, err)
			}
			refused = i
			break
		}
	}
	if refused != repeatBurst {
		t.Fatalf("first repeat refused: %d, want %d", refused, repeatBurst)
	}
	if msg := m.Task(t, "t").Status.Message; msg != fmt.Sprint("m", repeatBurst-1) {
		t.Fatalf("stored message %q: a refused repeat was written", msg)
	}
	// The budget is the node's: a new session does not refill it.
	if _, err := open(t, d, "n1").ReportStatus(ctx, model.StatusReport{TaskID: "t", State: swarm.TaskStateRunning, Message: "again"}); !errdefs.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("a repeat through a new session: %v, want unavailable", err)
	}
	// A transition is not a repeat.
	if _, err := s.ReportStatus(ctx, model.StatusReport{TaskID: "u", State: swarm.TaskStateRunning}); err != nil {
		t.Fatalf("a transition past the repeat budget: %v", err)
	}
	now = now.Add(repeatEvery)
	if _, err := s.ReportStatus(ctx, model.StatusReport{TaskID: "t", State: swarm.TaskStateRunning, Message: "later"}); err != nil {
		t.Fatalf("a repeat once the budget refilled: %v", err)
	}
}
