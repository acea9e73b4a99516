package dispatcher

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/dispatcher/dispatchertest"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

func task(id, node string, desired, state swarm.TaskState, secretIDs ...string) *model.Task {
	t := &model.Task{ServiceName: "svc"}
	t.ID, t.NodeID, t.DesiredState, t.Status.State, t.ServiceID = id, node, desired, state, "svc1"
	cs := &swarm.ContainerSpec{Image: "x"}
	for _, s := range secretIDs {
		cs.Secrets = append(cs.Secrets, &swarm.SecretReference{SecretID: s, SecretName: "name-" + s, File: &swarm.SecretReferenceFileTarget{Name: s, UID: "0", GID: "0", Mode: 0o444}})
	}
	t.Spec.ContainerSpec = cs
	return t
}

func newDispatcher(m *dispatchertest.MemStore, d *dispatchertest.Data) *Dispatcher {
	return New(Config{Tasks: m, Changes: m, Table: m, Secrets: d, Configs: d})
}

func open(t *testing.T, d *Dispatcher, node string) *Session {
	t.Helper()
	s, err := d.Open(context.Background(), node)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func next(t *testing.T, s *Session) model.Assignments {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := s.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func taskIDs(m model.Assignments) []string {
	var ids []string
	for _, at := range m.Tasks {
		ids = append(ids, at.Task.ID)
	}
	sort.Strings(ids)
	return ids
}

func refStrings(rs []model.DataRef) []string {
	var out []string
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%s/%s@%d", r.Kind, r.ID, r.Version))
	}
	sort.Strings(out)
	return out
}

func itemStrings(its []model.DataItem) []string {
	var out []string
	for _, it := range its {
		out = append(out, fmt.Sprintf("%s/%s@%d=%s", it.Kind, it.ID, it.Version, it.Data))
	}
	sort.Strings(out)
	return out
}

func same(a, b []string) bool { return slices.Equal(a, b) }

// TestAssignmentsFullThenIncrements: a node is sent its own tasks (not
// another node's, not those waiting for room on it) and the versions its
// tasks that should run hold, once each, then only what changed; a version
// is removed when the last task holding it ends, and nothing is sent when
// nothing of the node changed.
func TestAssignmentsFullThenIncrements(t *testing.T) {
	m := dispatchertest.NewMemStore()
	d := &dispatchertest.Data{}
	t1 := task("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning, "s1", "s2")
	t1.DataVersions = map[string]int{model.DataKey("secret", "s2"): 3}
	m.Put(t, t1)
	m.Put(t, task("t2", "n2", swarm.TaskStateRunning, swarm.TaskStateRunning, "s3"))
	m.Put(t, task("t3", "n1", swarm.TaskStateShutdown, swarm.TaskStateRunning, "s4"))
	m.Put(t, task("t5", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned, "s1"))
	waiting := task("t4", "n1", swarm.TaskStateRunning, swarm.TaskStatePending, "s5")
	waiting.Status.Message = model.MsgPendingScheduling
	m.Put(t, waiting)
	s := open(t, newDispatcher(m, d), "n1")

	full := next(t, s)
	if !full.Full || !same(taskIDs(full), []string{"t1", "t3", "t5"}) ||
		!same(itemStrings(full.Data), []string{"secret/s1@1=value-of-s1-v1", "secret/s2@3=value-of-s2-v3"}) {
		t.Fatalf("full set: %v %v full=%v", taskIDs(full), itemStrings(full.Data), full.Full)
	}
	if len(d.Opened) != 2 {
		t.Fatalf("opened %v: s1 once for two tasks, s2; never s3 (n2), s4 (not to run), s5 (unscheduled)", d.Opened)
	}

	// A rotation of s2 reaches t1: the new version comes, the old goes.
	t1.DataVersions = map[string]int{model.DataKey("secret", "s2"): 4}
	m.Put(t, t1)
	inc := next(t, s)
	if inc.Full || !same(taskIDs(inc), []string{"t1"}) || !same(itemStrings(inc.Data), []string{"secret/s2@4=value-of-s2-v4"}) ||
		!same(refStrings(inc.RemovedData), []string{"secret/s2@3"}) || len(inc.RemovedTasks) != 0 {
		t.Fatalf("rotation increment: %+v", inc)
	}

	// Another node's change sends nothing; t1's deletion removes it, and
	// s2 (only t1 held it), but not s1 (t5 holds it).
	m.Put(t, task("t2", "n2", swarm.TaskStateShutdown, swarm.TaskStateRunning, "s3"))
	m.Del("t1")
	inc = next(t, s)
	if len(inc.Tasks) != 0 || !same(inc.RemovedTasks, []string{"t1"}) || len(inc.Data) != 0 ||
		!same(refStrings(inc.RemovedData), []string{"secret/s2@4"}) {
		t.Fatalf("removal increment: %+v", inc)
	}

	// t5 ends: its data goes, the task stays (it is still the node's).
	t5 := m.Task(t, "t5")
	t5.Status.State = swarm.TaskStateFailed
	m.Put(t, t5)
	inc = next(t, s)
	if !same(taskIDs(inc), []string{"t5"}) || !same(refStrings(inc.RemovedData), []string{"secret/s1@1"}) {
		t.Fatalf("end increment: %+v", inc)
	}

	// A new session starts from a full set again.
	s2 := open(t, newDispatcher(m, d), "n1")
	if f := next(t, s2); !f.Full || !same(taskIDs(f), []string{"t3", "t5"}) || len(f.Data) != 0 {
		t.Fatalf("second session: %+v", f)
	}
}

// TestNextWaitsForChange: with nothing new, Next blocks until the context
// ends.
func TestNextWaitsForChange(t *testing.T) {
	m := dispatchertest.NewMemStore()
	m.Put(t, task("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning))
	s := open(t, newDispatcher(m, &dispatchertest.Data{}), "n1")
	next(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Next(ctx); err != context.DeadlineExceeded {
		t.Fatalf("got %v, want the deadline", err)
	}
}

// TestServiceLabelsTravel: a task carries its service's labels, and a
// label change is sent.
func TestServiceLabelsTravel(t *testing.T) {
	m := dispatchertest.NewMemStore()
	svc := &model.Service{}
	svc.ID = "svc1"
	svc.Spec.Labels = map[string]string{"a": "1"}
	m.Svcs = []*model.Service{svc}
	m.Put(t, task("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning))
	s := open(t, newDispatcher(m, &dispatchertest.Data{}), "n1")
	if f := next(t, s); len(f.Tasks) != 1 || f.Tasks[0].ServiceLabels["a"] != "1" {
		t.Fatalf("full: %+v", f)
	}
	svc2 := &model.Service{}
	svc2.ID = "svc1"
	svc2.Spec.Labels = map[string]string{"a": "2"}
	m.SetServices(svc2)
	if inc := next(t, s); len(inc.Tasks) != 1 || inc.Tasks[0].ServiceLabels["a"] != "2" {
		t.Fatalf("increment: %+v", inc)
	}
}

func TestOpenNeedsIdentity(t *testing.T) {
	if _, err := newDispatcher(dispatchertest.NewMemStore(), &dispatchertest.Data{}).Open(context.Background(), ""); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("got %v", err)
	}
}

// TestReportStatus: a node's reports are written only for its own tasks,
// only forward along the task state machine, with versions it was given.
func TestReportStatus(t *testing.T) {
	loaded := func(n int) map[string]int { return map[string]int{model.DataKey("secret", "s1"): n} }
	tests := []struct {
		name    string
		task    *model.Task
		report  model.StatusReport
		wantErr error
		// wantState is the stored state after the report.
		wantState swarm.TaskState
	}{
		{"forward", task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned, "s1"),
			model.StatusReport{State: swarm.TaskStatePreparing}, nil, swarm.TaskStatePreparing},
		{"start of a restarted task", task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateReady, "s1"),
			model.StatusReport{State: swarm.TaskStatePreparing}, nil, swarm.TaskStatePreparing},
		{"start during the restart delay", task("t", "n1", swarm.TaskStateReady, swarm.TaskStateReady, "s1"),
			model.StatusReport{State: swarm.TaskStateStarting}, errdefs.ErrFailedPrecondition, swarm.TaskStateReady},
		{"run during the restart delay", task("t", "n1", swarm.TaskStateReady, swarm.TaskStateReady, "s1"),
			model.StatusReport{State: swarm.TaskStateRunning}, errdefs.ErrFailedPrecondition, swarm.TaskStateReady},
		{"prepare during the restart delay", task("t", "n1", swarm.TaskStateReady, swarm.TaskStateReady, "s1"),
			model.StatusReport{State: swarm.TaskStatePreparing}, nil, swarm.TaskStatePreparing},
		{"shut down during the restart delay", task("t", "n1", swarm.TaskStateReady, swarm.TaskStateReady, "s1"),
			model.StatusReport{State: swarm.TaskStateShutdown}, nil, swarm.TaskStateShutdown},
		{"ready is the orchestrator's", task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned, "s1"),
			model.StatusReport{State: swarm.TaskStateReady}, errdefs.ErrInvalidArgument, swarm.TaskStateAssigned},
		{"same state (reload)", task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning, "s1"),
			model.StatusReport{State: swarm.TaskStateRunning, Loaded: loaded(1)}, nil, swarm.TaskStateRunning},
		{"another node's task", task("t", "n2", swarm.TaskStateRunning, swarm.TaskStateAssigned, "s1"),
			model.StatusReport{State: swarm.TaskStatePreparing}, errdefs.ErrUnauthorized, swarm.TaskStateAssigned},
		{"backwards", task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning, "s1"),
			model.StatusReport{State: swarm.TaskStateStarting}, errdefs.ErrFailedPrecondition, swarm.TaskStateRunning},
		{"out of a final state", task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateFailed, "s1"),
			model.StatusReport{State: swarm.TaskStateRejected}, errdefs.ErrFailedPrecondition, swarm.TaskStateFailed},
		{"a manager's state", task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned, "s1"),
			model.StatusReport{State: swarm.TaskStateOrphaned}, errdefs.ErrInvalidArgument, swarm.TaskStateAssigned},
		{"repeat of the final state", task("t", "n1", swarm.TaskStateShutdown, swarm.TaskStateShutdown, "s1"),
			model.StatusReport{State: swarm.TaskStateShutdown, Message: "again"}, nil, swarm.TaskStateShutdown},
		{"loaded an unreferenced object", task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateStarting, "s1"),
			model.StatusReport{State: swarm.TaskStateRunning, Loaded: map[string]int{model.DataKey("secret", "s9"): 1}}, errdefs.ErrInvalidArgument, swarm.TaskStateStarting},
		{"loaded a version never given", task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateStarting, "s1"),
			model.StatusReport{State: swarm.TaskStateRunning, Loaded: loaded(2)}, errdefs.ErrInvalidArgument, swarm.TaskStateStarting},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := dispatchertest.NewMemStore()
			m.Put(t, tt.task)
			s := open(t, newDispatcher(m, &dispatchertest.Data{}), "n1")
			tt.report.TaskID = "t"
			got, err := s.ReportStatus(context.Background(), tt.report)
			if tt.wantErr != nil {
				if !errdefs.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
			} else if err != nil || got.Status.State != tt.wantState {
				t.Fatalf("got %v %v", got, err)
			}
			if st := m.Task(t, "t").Status.State; st != tt.wantState {
				t.Fatalf("stored state %s, want %s", st, tt.wantState)
			}
		})
	}
}

// TestReportStatusRacesOrchestrator: a status write that loses a race
// with the orchestrator's write is re-applied on the fresh record, keeping
// the orchestrator's change; one that a change makes invalid is refused.
func TestReportStatusRacesOrchestrator(t *testing.T) {
	m := dispatchertest.NewMemStore()
	tk := task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning, "s1")
	m.Put(t, tk)
	s := open(t, newDispatcher(m, &dispatchertest.Data{}), "n1")
	raced := false
	m.BeforeUpdate = func() {
		if !raced {
			raced = true
			tk.DesiredState = swarm.TaskStateShutdown
			m.Put(t, tk)
		}
	}
	got, err := s.ReportStatus(context.Background(), model.StatusReport{TaskID: "t", State: swarm.TaskStateFailed, Err: "exit 1"})
	if err != nil || got.Status.State != swarm.TaskStateFailed {
		t.Fatalf("got %v %v", got, err)
	}
	if st := m.Task(t, "t"); st.DesiredState != swarm.TaskStateShutdown || st.Status.State != swarm.TaskStateFailed || st.Status.Err != "exit 1" {
		t.Fatalf("stored %s/%s %q", st.DesiredState, st.Status.State, st.Status.Err)
	}

	// The task moves to another node between the read and the write.
	m2 := dispatchertest.NewMemStore()
	tk2 := task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning)
	m2.Put(t, tk2)
	s2 := open(t, newDispatcher(m2, &dispatchertest.Data{}), "n1")
	raced = false
	m2.BeforeUpdate = func() {
		if !raced {
			raced = true
			tk2.NodeID = "n2"
			m2.Put(t, tk2)
		}
	}
	if _, err := s2.ReportStatus(context.Background(), model.StatusReport{TaskID: "t", State: swarm.TaskStateFailed}); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("got %v after the task moved", err)
	}
}

// TestReportStatusClock: a node's timestamp is kept unless it lies in the
// dispatcher's future.
func TestReportStatusClock(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		at, want time.Time
	}{{now.Add(-time.Second), now.Add(-time.Second)}, {now.Add(time.Hour), now}, {time.Time{}, now}} {
		m := dispatchertest.NewMemStore()
		m.Put(t, task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned))
		d := New(Config{Tasks: m, Changes: m, Table: m, Secrets: &dispatchertest.Data{}, Configs: &dispatchertest.Data{}, Now: func() time.Time { return now }})
		got, err := open(t, d, "n1").ReportStatus(context.Background(), model.StatusReport{TaskID: "t", State: swarm.TaskStatePreparing, At: tc.at})
		if err != nil || !got.Status.Timestamp.Equal(tc.want) {
			t.Fatalf("at %v: got %v %v", tc.at, got.Status.Timestamp, err)
		}
	}
}

// TestRemoveTask: only the node's own task, desired removed and ended.
func TestRemoveTask(t *testing.T) {
	tests := []struct {
		name     string
		task     *model.Task
		wantErr  error
		wantGone bool
	}{
		{"ended and desired removed", task("t", "n1", swarm.TaskStateRemove, swarm.TaskStateShutdown), nil, true},
		{"still running", task("t", "n1", swarm.TaskStateRemove, swarm.TaskStateRunning), errdefs.ErrFailedPrecondition, false},
		{"not desired removed", task("t", "n1", swarm.TaskStateShutdown, swarm.TaskStateShutdown), errdefs.ErrFailedPrecondition, false},
		{"another node's", task("t", "n2", swarm.TaskStateRemove, swarm.TaskStateShutdown), errdefs.ErrUnauthorized, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := dispatchertest.NewMemStore()
			m.Put(t, tt.task)
			err := open(t, newDispatcher(m, &dispatchertest.Data{}), "n1").RemoveTask(context.Background(), "t")
			if (tt.wantErr == nil && err != nil) || (tt.wantErr != nil && !errdefs.Is(err, tt.wantErr)) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			if _, gerr := m.Get(context.Background(), "t"); errdefs.Is(gerr, errdefs.ErrNotFound) != tt.wantGone {
				t.Fatalf("gone: %v, want %v", gerr, tt.wantGone)
			}
		})
	}
}

type auth struct{ asked []string }

func (a *auth) RegistryAuth(_ context.Context, id string) ([]byte, error) {
	a.asked = append(a.asked, id)
	return []byte("creds-" + id), nil
}

type nets struct{ asked int }

func (n *nets) TaskNetworks(_ context.Context, cfg []swarm.NetworkAttachmentConfig, _ string) ([]model.TaskNetwork, []string, error) {
	n.asked++
	return []model.TaskNetwork{{ID: cfg[0].Target, Name: cfg[0].Target}}, nil, nil
}

// TestOwnTaskOnly: registry credentials, network attachments and fresh
// reads are given for the node's own tasks only (credentials only while the
// task should run).
func TestOwnTaskOnly(t *testing.T) {
	m := dispatchertest.NewMemStore()
	mine := task("mine", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned)
	mine.Spec.Networks = []swarm.NetworkAttachmentConfig{{Target: "net1"}}
	m.Put(t, mine)
	theirs := task("theirs", "n2", swarm.TaskStateRunning, swarm.TaskStateAssigned)
	theirs.Spec.Networks = []swarm.NetworkAttachmentConfig{{Target: "net2"}}
	m.Put(t, theirs)
	m.Put(t, task("stopped", "n1", swarm.TaskStateShutdown, swarm.TaskStateRunning))
	a, n := &auth{}, &nets{}
	s := open(t, New(Config{Tasks: m, Changes: m, Table: m, Secrets: &dispatchertest.Data{}, Configs: &dispatchertest.Data{}, PullAuth: a, Networks: n}), "n1")
	ctx := context.Background()
	if b, err := s.RegistryAuth(ctx, "mine"); err != nil || string(b) != "creds-svc1" {
		t.Fatalf("own: %q %v", b, err)
	}
	if _, err := s.RegistryAuth(ctx, "theirs"); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("theirs: %v", err)
	}
	if _, err := s.RegistryAuth(ctx, "stopped"); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("stopped: %v", err)
	}
	if len(a.asked) != 1 {
		t.Fatalf("credentials read %d times", len(a.asked))
	}
	if nets, _, err := s.Attachments(ctx, "mine"); err != nil || len(nets) != 1 || nets[0].ID != "net1" {
		t.Fatalf("own attachments: %v %v", nets, err)
	}
	if _, _, err := s.Attachments(ctx, "theirs"); !errdefs.Is(err, errdefs.ErrUnauthorized) || n.asked != 1 {
		t.Fatalf("their attachments: %v (asked %d)", err, n.asked)
	}
	if _, err := s.Task(ctx, "theirs"); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("their task: %v", err)
	}
	if _, err := s.Task(ctx, "nope"); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown task: %v", err)
	}
}

// TestTemplatingAndConfigs: configs travel like secrets, each with its
// templating driver and the version the task holds.
func TestTemplatingAndConfigs(t *testing.T) {
	m := dispatchertest.NewMemStore()
	tk := task("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned, "s1")
	tk.Spec.ContainerSpec.Configs = []*swarm.ConfigReference{
		{ConfigID: "c1", ConfigName: "c1", File: &swarm.ConfigReferenceFileTarget{Name: "app.conf", UID: "0", GID: "0", Mode: 0o444}},
		{ConfigID: "c2", ConfigName: "cred", Runtime: &swarm.ConfigReferenceRuntimeTarget{}},
	}
	tk.DataVersions = map[string]int{model.DataKey("config", "c1"): 7}
	m.Put(t, tk)
	d := &dispatchertest.Data{Templated: map[string]bool{"c1": true}}
	f := next(t, open(t, newDispatcher(m, d), "n1"))
	if !same(itemStrings(f.Data), []string{"config/c1@7=value-of-c1-v7", "secret/s1@1=value-of-s1-v1"}) {
		t.Fatalf("data: %v", itemStrings(f.Data))
	}
	for _, it := range f.Data {
		if want := map[string]string{"c1": "golang", "s1": ""}[it.ID]; it.Templating != want {
			t.Errorf("%s templating %q", it.ID, it.Templating)
		}
	}
}

// TestUnscheduledTaskNotOwned: a task that names the node while it waits
// for room there is not the node's (the stream does not send it): the node
// can neither move it on, nor get its registry credentials, network
// attachments or record, nor delete it.
func TestUnscheduledTaskNotOwned(t *testing.T) {
	m := dispatchertest.NewMemStore()
	waiting := task("w", "n1", swarm.TaskStateRunning, swarm.TaskStatePending)
	waiting.Status.Message = model.MsgPendingScheduling
	waiting.Spec.Networks = []swarm.NetworkAttachmentConfig{{Target: "net1"}}
	m.Put(t, waiting)
	a, n := &auth{}, &nets{}
	s := open(t, New(Config{Tasks: m, Changes: m, Table: m, Secrets: &dispatchertest.Data{}, Configs: &dispatchertest.Data{}, PullAuth: a, Networks: n}), "n1")
	ctx := context.Background()
	for _, st := range []swarm.TaskState{swarm.TaskStateAssigned, swarm.TaskStateRunning, swarm.TaskStateComplete} {
		if _, err := s.ReportStatus(ctx, model.StatusReport{TaskID: "w", State: st}); !errdefs.Is(err, errdefs.ErrUnauthorized) {
			t.Fatalf("report %s: %v", st, err)
		}
	}
	if got := m.Task(t, "w").Status; got.State != swarm.TaskStatePending || got.Message != model.MsgPendingScheduling {
		t.Fatalf("stored status %+v", got)
	}
	if _, err := s.RegistryAuth(ctx, "w"); !errdefs.Is(err, errdefs.ErrUnauthorized) || len(a.asked) != 0 {
		t.Fatalf("credentials: %v (asked %d)", err, len(a.asked))
	}
	if _, _, err := s.Attachments(ctx, "w"); !errdefs.Is(err, errdefs.ErrUnauthorized) || n.asked != 0 {
		t.Fatalf("attachments: %v (asked %d)", err, n.asked)
	}
	if _, err := s.Task(ctx, "w"); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("task: %v", err)
	}
	// Never placed: the orchestrator deletes it, not the node.
	waiting.DesiredState = swarm.TaskStateRemove
	m.Put(t, waiting)
	if err := s.RemoveTask(ctx, "w"); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("remove: %v", err)
	}
}

// TestReportStatusBounded: what a node writes into a task record is
// bounded (a node is a client): a long message or error is cut on a
// character boundary, and a report naming a container ID or loaded
// versions out of all proportion is refused.
func TestReportStatusBounded(t *testing.T) {
	m := dispatchertest.NewMemStore()
	m.Put(t, task("t", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned))
	s := open(t, newDispatcher(m, &dispatchertest.Data{}), "n1")
	long := strings.Repeat("é", maxStatusText)
	got, err := s.ReportStatus(context.Background(), model.StatusReport{TaskID: "t", State: swarm.TaskStatePreparing, Message: long, Err: long})
	if err != nil {
		t.Fatal(err)
	}
	st := m.Task(t, "t").Status
	for _, s := range []string{got.Status.Message, got.Status.Err, st.Message, st.Err} {
		if len(s) > maxStatusText || !utf8.ValidString(s) || !strings.HasPrefix(long, s) || s == "" {
			t.Fatalf("kept %d bytes (valid %v)", len(s), utf8.ValidString(s))
		}
	}
	_, err = s.ReportStatus(context.Background(), model.StatusReport{TaskID: "t", State: swarm.TaskStateStarting,
		Container: &swarm.ContainerStatus{ContainerID: strings.Repeat("a", 1<<20)}})
	if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("huge container ID: %v", err)
	}
}
