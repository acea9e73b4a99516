package dispatcher

import (
	"context"
	"testing"
	"time"

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
