package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// fakeSession is a dispatcher session over tasks in memory: it records
// what the agent reports and asks.
type fakeSession struct {
	mu      sync.Mutex
	rev     uint64
	tasks   map[string]*model.Task
	reports []model.StatusReport
	removed []string
	// nets are the networks Attachments gives per task.
	nets    map[string][]model.TaskNetwork
	authFor []string
	// refuse makes reports on these tasks fail.
	refuse map[string]bool
}

func newFakeSession() *fakeSession { return &fakeSession{tasks: map[string]*model.Task{}} }

func (f *fakeSession) Next(ctx context.Context) (model.Assignments, error) {
	<-ctx.Done()
	return model.Assignments{}, ctx.Err()
}

func (f *fakeSession) put(t *model.Task) *model.Task {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	c := *t
	c.Version.Index = f.rev
	f.tasks[t.ID] = &c
	return &c
}

func (f *fakeSession) Task(_ context.Context, id string) (*model.Task, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[id]
	if !ok {
		return nil, errdefs.NotFound("task %s", id)
	}
	c := *t
	return &c, nil
}

func (f *fakeSession) ReportStatus(_ context.Context, r model.StatusReport) (*model.Task, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, r)
	if f.refuse[r.TaskID] {
		return nil, errdefs.FailedPrecondition("refused")
	}
	t, ok := f.tasks[r.TaskID]
	if !ok {
		return nil, errdefs.NotFound("task %s", r.TaskID)
	}
	c := *t
	f.rev++
	c.Version.Index = f.rev
	c.Status = swarm.TaskStatus{State: r.State, Message: r.Message, Err: r.Err, ContainerStatus: r.Container, Timestamp: r.At}
	if r.Loaded != nil {
		c.LoadedVersions = maps.Clone(r.Loaded)
	}
	f.tasks[c.ID] = &c
	out := c
	return &out, nil
}

func (f *fakeSession) RemoveTask(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, id)
	return nil
}

func (f *fakeSession) Attachments(_ context.Context, taskID string) ([]model.TaskNetwork, []string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.nets == nil {
		return nil, nil, nil
	}
	return slices.Clone(f.nets[taskID]), []string{"web", "tasks.web"}, nil
}

func (f *fakeSession) RegistryAuth(_ context.Context, taskID string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.authFor = append(f.authFor, taskID)
	return []byte("creds"), nil
}

// states lists the states reported for task id, in order.
func (f *fakeSession) states(id string) []swarm.TaskState {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []swarm.TaskState
	for _, r := range f.reports {
		if r.TaskID == id {
			out = append(out, r.State)
		}
	}
	return out
}

func (f *fakeSession) last(id string) model.StatusReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.reports) - 1; i >= 0; i-- {
		if f.reports[i].TaskID == id {
			return f.reports[i]
		}
	}
	return model.StatusReport{}
}

// fakeExec is an engine and tmpfs in memory.
type fakeExec struct {
	mu      sync.Mutex
	n       int
	ctrs    map[string]engine.State
	mounts  map[string][]secretfs.File
	created []engine.Spec
	removed []string
	stopped []string
	killed  []string
	pulls   []string
	swaps   int
	down    bool
	// stopCode is the exit code a stopped container reports.
	stopCode int
	// health is the health status a started container reports.
	health string
	// realised holds the engine networks made for swarm networks (by
	// swarm network ID); prunes records each prune's kept networks.
	realised map[string]string
	prunes   []map[string]bool
}

func (x *fakeExec) Network(_ context.Context, n model.TaskNetwork) (string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.realised == nil {
		x.realised = map[string]string{}
	}
	if id, ok := x.realised[n.ID]; ok {
		return id, nil
	}
	x.realised[n.ID] = "eng-" + n.ID
	return x.realised[n.ID], nil
}

func (x *fakeExec) PruneNetworks(_ context.Context, keep map[string]bool) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.prunes = append(x.prunes, maps.Clone(keep))
	for id := range x.realised {
		if !keep[id] {
			delete(x.realised, id)
		}
	}
	return nil
}

func newFakeExec() *fakeExec {
	return &fakeExec{ctrs: map[string]engine.State{}, mounts: map[string][]secretfs.File{}}
}

func (x *fakeExec) Containers(context.Context) ([]engine.State, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.down {
		return nil, fmt.Errorf("engine down")
	}
	var out []engine.State
	for _, c := range x.ctrs {
		out = append(out, c)
	}
	return out, nil
}

func (x *fakeExec) Exits(context.Context) (<-chan engine.Exit, <-chan error) {
	return make(chan engine.Exit), make(chan error)
}
func (x *fakeExec) Features(context.Context) (engine.Features, error) {
	return engine.Features{APIVersion: "1.51"}, nil
}
func (x *fakeExec) HasImage(context.Context, string) (bool, error) { return true, nil }
func (x *fakeExec) Pull(_ context.Context, ref, auth string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.pulls = append(x.pulls, ref+" "+auth)
	return nil
}

func (x *fakeExec) Create(_ context.Context, s engine.Spec) (string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.n++
	id := fmt.Sprintf("c%d", x.n)
	x.created = append(x.created, s)
	x.ctrs[id] = engine.State{ID: id, Labels: s.Labels, Status: "created"}
	return id, nil
}

func (x *fakeExec) Start(_ context.Context, id string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	c := x.ctrs[id]
	c.Running, c.Pid, c.Status, c.Health = true, 42, "running", x.health
	x.ctrs[id] = c
	return nil
}

func (x *fakeExec) Stop(_ context.Context, id string, _ *time.Duration) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.stopped = append(x.stopped, id)
	c := x.ctrs[id]
	c.Running, c.ExitCode = false, x.stopCode
	x.ctrs[id] = c
	return nil
}

func (x *fakeExec) Kill(_ context.Context, id, sig string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.killed = append(x.killed, id+" "+sig)
	return nil
}

func (x *fakeExec) Remove(_ context.Context, id string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removed = append(x.removed, id)
	delete(x.ctrs, id)
	return nil
}

func (x *fakeExec) Inspect(_ context.Context, id string) (engine.State, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.ctrs[id], nil
}

// copyFiles keeps what reached the "tmpfs" (the agent wipes its own copy).
func copyFiles(files []secretfs.File) []secretfs.File {
	out := slices.Clone(files)
	for i := range out {
		out[i].Data = slices.Clone(files[i].Data)
	}
	return out
}

func (x *fakeExec) MountSecrets(_ context.Context, taskID string, files []secretfs.File, _ bool) ([]engine.Bind, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.mounts[taskID] = copyFiles(files)
	var binds []engine.Bind
	for _, f := range files {
		binds = append(binds, engine.Bind{HostPath: "/tmpfs/" + taskID + f.Target, ContainerPath: f.Target})
	}
	return binds, nil
}

func (x *fakeExec) SwapSecrets(_ context.Context, taskID string, files []secretfs.File) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.swaps++
	x.mounts[taskID] = copyFiles(files)
	return nil
}

func (x *fakeExec) UnmountSecrets(taskID string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.mounts, taskID)
	return nil
}

func (x *fakeExec) SecretMounts() ([]string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return slices.Sorted(maps.Keys(x.mounts)), nil
}

func (x *fakeExec) mount(taskID string) ([]secretfs.File, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	f, ok := x.mounts[taskID]
	return f, ok
}

type rig struct {
	a    *Agent
	sess *fakeSession
	x    *fakeExec
}

// newRig is an agent of node n1 with a session open (no full set yet).
func newRig() *rig {
	r := &rig{sess: newFakeSession(), x: newFakeExec()}
	r.a = New(Config{NodeID: "n1", Executor: r.x})
	r.a.sess = r.sess
	r.a.dataWait = 50 * time.Millisecond
	return r
}

// send delivers a message, the tasks in it also becoming the session's.
func (r *rig) send(m model.Assignments) {
	for i, at := range m.Tasks {
		m.Tasks[i].Task = r.sess.put(at.Task)
	}
	r.a.view.apply(m)
}

// pass runs one reconciliation and waits for what it started.
func (r *rig) pass(t *testing.T) {
	t.Helper()
	if err := r.a.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.a.wg.Wait()
}

func newTask(id, node string, desired, state swarm.TaskState, secrets ...string) *model.Task {
	t := &model.Task{ServiceName: "web"}
	t.ID, t.NodeID, t.ServiceID, t.Slot, t.DesiredState, t.Status.State = id, node, "svc1", 1, desired, state
	t.Spec.ContainerSpec = &swarm.ContainerSpec{Image: "img"}
	for _, s := range secrets {
		t.Spec.ContainerSpec.Secrets = append(t.Spec.ContainerSpec.Secrets, &swarm.SecretReference{
			SecretID: s, SecretName: "name-" + s, File: &swarm.SecretReferenceFileTarget{Name: s, UID: "0", GID: "0", Mode: 0o400}})
	}
	return t
}

func item(id string, v int, val string) model.DataItem {
	return model.DataItem{DataRef: model.DataRef{Kind: "secret", ID: id, Version: v}, Name: "name-" + id, Data: []byte(val)}
}

func assign(ts ...*model.Task) []model.AssignedTask {
	var out []model.AssignedTask
	for _, t := range ts {
		out = append(out, model.AssignedTask{Task: t})
	}
	return out
}

// TestStart: an assigned task is started with the version of its data it
// holds (not another), its container labelled for this node, its image
// pulled with its credentials, and its status reported up to running with
// the versions loaded.
func TestStart(t *testing.T) {
	r := newRig()
	tk := newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned, "s1")
	tk.DataVersions = map[string]int{"secret/s1": 2}
	r.send(model.Assignments{Full: true, Tasks: assign(tk), Data: []model.DataItem{item("s1", 1, "old"), item("s1", 2, "new")}})
	r.pass(t)
	if got := r.sess.states("t1"); !slices.Equal(got, []swarm.TaskState{swarm.TaskStatePreparing, swarm.TaskStateStarting, swarm.TaskStateRunning}) {
		t.Fatalf("reports %v", got)
	}
	last := r.sess.last("t1")
	if last.Container == nil || last.Container.ContainerID != "c1" || last.Container.PID != 42 || last.Loaded["secret/s1"] != 2 {
		t.Fatalf("running report %+v", last)
	}
	files, ok := r.x.mount("t1")
	if !ok || len(files) != 1 || string(files[0].Data) != "new" || files[0].Target != "s1" || files[0].Mode != 0o400 {
		t.Fatalf("mount %+v", files)
	}
	if len(r.x.created) != 1 || r.x.created[0].Labels[labelHush] != "n1" || r.x.created[0].Labels["com.docker.swarm.task.id"] != "t1" ||
		r.x.created[0].Name != "web.1.t1" || len(r.x.created[0].Binds) != 1 {
		t.Fatalf("created %+v", r.x.created)
	}
	if !slices.Equal(r.x.pulls, []string{"img creds"}) || !slices.Equal(r.sess.authFor, []string{"t1"}) {
		t.Fatalf("pulls %v, credentials asked for %v", r.x.pulls, r.sess.authFor)
	}
	// The agent's view has its own report: the next pass does nothing.
	r.pass(t)
	if len(r.x.created) != 1 || len(r.sess.states("t1")) != 3 {
		t.Fatalf("second pass acted: created %d, reports %v", len(r.x.created), r.sess.states("t1"))
	}
}

// TestStartWaitsForHealth: a task whose container has a health check
// stays starting (its container and the versions it loaded recorded)
// until the check first passes, then runs; one whose check fails never
// runs: its container is stopped and the task fails. As Swarm's executor,
// whose task runs only once healthy (so `service create` and an update's
// monitor wait for healthy tasks); hush reported running at once.
func TestStartWaitsForHealth(t *testing.T) {
	for _, tc := range []struct {
		then      string
		wantState swarm.TaskState
		wantErr   string
	}{
		{"healthy", swarm.TaskStateRunning, ""},
		{"unhealthy", swarm.TaskStateFailed, "task: non-zero exit (137): dockerexec: unhealthy container"},
	} {
		t.Run(tc.then, func(t *testing.T) {
			r := newRig()
			r.x.health, r.x.stopCode = "starting", 137
			tk := newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned, "s1")
			tk.DataVersions = map[string]int{"secret/s1": 1}
			r.send(model.Assignments{Full: true, Tasks: assign(tk), Data: []model.DataItem{item("s1", 1, "v")}})
			r.pass(t)
			if got := r.sess.states("t1"); !slices.Equal(got, []swarm.TaskState{swarm.TaskStatePreparing, swarm.TaskStateStarting, swarm.TaskStateStarting}) {
				t.Fatalf("reports before the check passed %v", got)
			}
			last := r.sess.last("t1")
			if last.Container == nil || last.Container.ContainerID != "c1" || last.Loaded["secret/s1"] != 1 {
				t.Fatalf("starting report %+v", last)
			}
			// Still starting: nothing more.
			r.pass(t)
			if n := len(r.sess.states("t1")); n != 3 || len(r.x.stopped) != 0 {
				t.Fatalf("a pass while the check starts acted: reports %v, stopped %v", r.sess.states("t1"), r.x.stopped)
			}
			c := r.x.ctrs["c1"]
			c.Health = tc.then
			r.x.ctrs["c1"] = c
			r.pass(t)
			last = r.sess.last("t1")
			if last.State != tc.wantState || last.Err != tc.wantErr || last.Container == nil || last.Container.ContainerID != "c1" {
				t.Fatalf("report once %s: %+v", tc.then, last)
			}
		})
	}
}

// TestStaleStartingWaitsForHealth: a pass whose view still has the task's
// first starting report (no container yet: its snapshot was taken while
// the start ran), or an agent restarted while the check was starting,
// finds the task's running container through the session: with its check
// still starting it records the container on the task and waits; it never
// adopts it as running (seen on a worker: the race made every such task
// run at once).
func TestStaleStartingWaitsForHealth(t *testing.T) {
	r := newRig()
	tk := newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateStarting)
	r.send(model.Assignments{Full: true, Tasks: assign(tk)})
	r.x.ctrs["c1"] = engine.State{ID: "c1", Running: true, Pid: 42, Health: "starting",
		Labels: map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "t1"}}
	r.pass(t)
	if got := r.sess.states("t1"); len(got) != 1 || got[0] != swarm.TaskStateStarting {
		t.Fatalf("reports %v, want one starting report", got)
	}
	if last := r.sess.last("t1"); last.Container == nil || last.Container.ContainerID != "c1" {
		t.Fatalf("starting report %+v", last)
	}
	r.pass(t)
	if got := r.sess.states("t1"); len(got) != 1 {
		t.Fatalf("a second pass reported %v", got)
	}
	c := r.x.ctrs["c1"]
	c.Health = "healthy"
	r.x.ctrs["c1"] = c
	r.pass(t)
	if last := r.sess.last("t1"); last.State != swarm.TaskStateRunning {
		t.Fatalf("healthy: %+v", last)
	}
}

// TestNothingBeforeFullSet: until the first full set, the agent cannot
// tell its tasks from orphans and touches nothing.
func TestNothingBeforeFullSet(t *testing.T) {
	r := newRig()
	r.x.ctrs["c9"] = engine.State{ID: "c9", Running: true, Labels: map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "t9"}}
	r.x.mounts["t9"] = nil
	r.pass(t)
	if len(r.x.removed) != 0 || len(r.x.mounts) != 1 {
		t.Fatalf("removed %v, mounts %v", r.x.removed, r.x.mounts)
	}
}

// TestOrphans: containers and mounts of tasks no longer assigned to this
// node are removed, once the agent knows its tasks.
func TestOrphans(t *testing.T) {
	r := newRig()
	r.x.ctrs["c9"] = engine.State{ID: "c9", Running: true, Labels: map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "t9"}}
	r.x.ctrs["c8"] = engine.State{ID: "c8", Running: true, Labels: map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "t8"}}
	r.x.mounts["t9"], r.x.mounts["t7"], r.x.mounts["t8"] = nil, nil, nil
	t8 := newTask("t8", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning)
	r.send(model.Assignments{Full: true, Tasks: assign(t8)})
	r.pass(t)
	if !slices.Equal(r.x.removed, []string{"c9"}) {
		t.Fatalf("removed %v, want the orphan c9 only", r.x.removed)
	}
	if got, _ := r.x.SecretMounts(); !slices.Equal(got, []string{"t8"}) {
		t.Fatalf("mounts left %v", got)
	}
	// A task moved away is an orphan too.
	r.send(model.Assignments{RemovedTasks: []string{"t8"}})
	r.pass(t)
	if !slices.Equal(r.x.removed, []string{"c9", "c8"}) {
		t.Fatalf("removed %v", r.x.removed)
	}
}

// TestAdoption: after a restart (a fresh agent), a running task's
// container is kept, one interrupted mid-start is adopted if its container
// runs, and failed if it has none.
func TestAdoption(t *testing.T) {
	r := newRig()
	running := newTask("run", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning)
	half := newTask("half", "n1", swarm.TaskStateRunning, swarm.TaskStateStarting)
	lost := newTask("lost", "n1", swarm.TaskStateRunning, swarm.TaskStatePreparing)
	r.x.ctrs["c-run"] = engine.State{ID: "c-run", Running: true, Labels: map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "run"}}
	r.x.ctrs["c-half"] = engine.State{ID: "c-half", Running: true, Pid: 7, Labels: map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "half"}}
	r.send(model.Assignments{Full: true, Tasks: assign(running, half, lost)})
	r.pass(t)
	if len(r.x.created) != 0 || len(r.x.removed) != 0 || len(r.sess.states("run")) != 0 {
		t.Fatalf("created %d, removed %v, reports on the running task %v", len(r.x.created), r.x.removed, r.sess.states("run"))
	}
	if l := r.sess.last("half"); l.State != swarm.TaskStateRunning || l.Container == nil || l.Container.ContainerID != "c-half" || l.Container.PID != 7 {
		t.Fatalf("half started: %+v", l)
	}
	if l := r.sess.last("lost"); l.State != swarm.TaskStateFailed || l.Err != "task: start interrupted before the container ran" {
		t.Fatalf("lost: %+v", l)
	}
}

// TestExits: how a container ended is reported for the restart policy to
// act on (exit code, non-zero as failed), and its secrets go.
func TestExits(t *testing.T) {
	tests := []struct {
		name      string
		ctr       *engine.State
		wantState swarm.TaskState
		wantErr   string
		wantCode  int
	}{
		{"non-zero exit", &engine.State{ExitCode: 3}, swarm.TaskStateFailed, "task: non-zero exit (3)", 3},
		{"clean exit", &engine.State{ExitCode: 0}, swarm.TaskStateComplete, "", 0},
		{"container vanished", nil, swarm.TaskStateFailed, "task: container was removed outside hush", 0},
		// As Swarm's executor: a container whose health check says
		// unhealthy is stopped and its task fails with the health cause
		// (or completes, if the stop made it exit 0). hush left it running.
		{"unhealthy", &engine.State{Running: true, Health: "unhealthy"}, swarm.TaskStateFailed, "task: non-zero exit (137): dockerexec: unhealthy container", 137},
		{"unhealthy, exits 0 when stopped", &engine.State{Running: true, Health: "unhealthy"}, swarm.TaskStateComplete, "", 0},
		{"healthy", &engine.State{Running: true, Health: "healthy"}, "", "", 0},
		{"health starting", &engine.State{Running: true, Health: "starting"}, "", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig()
			r.x.stopCode = tt.wantCode
			tk := newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning)
			if tt.ctr != nil {
				c := *tt.ctr
				c.ID, c.Labels = "c1", map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "t1"}
				r.x.ctrs["c1"] = c
			}
			r.x.mounts["t1"] = nil
			r.send(model.Assignments{Full: true, Tasks: assign(tk)})
			r.pass(t)
			l := r.sess.last("t1")
			if tt.wantState == "" {
				if l.State != "" || len(r.x.stopped) != 0 {
					t.Fatalf("a running task was reported %+v, stopped %v", l, r.x.stopped)
				}
				return
			}
			if l.State != tt.wantState || l.Err != tt.wantErr || (tt.ctr != nil && (l.Container == nil || l.Container.ExitCode != tt.wantCode)) {
				t.Fatalf("report %+v", l)
			}
			if tt.ctr != nil && tt.ctr.Running && len(r.x.stopped) != 1 {
				t.Fatalf("the unhealthy container was not stopped: %v", r.x.stopped)
			}
			if _, ok := r.x.mount("t1"); ok {
				t.Fatal("secrets still mounted")
			}
		})
	}
}

// TestReload: a reload-mode task given new versions has its files swapped
// in place (no restart), is signalled in signal: mode, and reports the
// versions it loaded.
func TestReload(t *testing.T) {
	for _, mode := range []string{model.RotateReload, "signal:SIGHUP"} {
		t.Run(mode, func(t *testing.T) {
			r := newRig()
			tk := newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning, "s1")
			tk.RotateMode = mode
			tk.DataVersions = map[string]int{"secret/s1": 2}
			tk.LoadedVersions = map[string]int{"secret/s1": 1}
			tk.Status.ContainerStatus = &swarm.ContainerStatus{ContainerID: "c1"}
			r.x.ctrs["c1"] = engine.State{ID: "c1", Running: true, Labels: map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "t1"}}
			r.send(model.Assignments{Full: true, Tasks: assign(tk), Data: []model.DataItem{item("s1", 2, "v2")}})
			r.pass(t)
			files, _ := r.x.mount("t1")
			if r.x.swaps != 1 || len(files) != 1 || string(files[0].Data) != "v2" || len(r.x.stopped) != 0 || len(r.x.created) != 0 {
				t.Fatalf("swaps %d files %+v stopped %v created %d", r.x.swaps, files, r.x.stopped, len(r.x.created))
			}
			l := r.sess.last("t1")
			if l.State != swarm.TaskStateRunning || l.Loaded["secret/s1"] != 2 {
				t.Fatalf("report %+v", l)
			}
			if wantKill := mode != model.RotateReload; wantKill != slices.Equal(r.x.killed, []string{"c1 SIGHUP"}) {
				t.Fatalf("killed %v", r.x.killed)
			}
			r.pass(t)
			if r.x.swaps != 1 {
				t.Fatal("reloaded again once loaded")
			}
		})
	}
}

// TestDataRefused: the agent starts no task of another node, and gives a
// task only the versions it holds of what it references: a version not
// delivered rejects the task rather than mount another.
func TestDataRefused(t *testing.T) {
	r := newRig()
	theirs := newTask("theirs", "n2", swarm.TaskStateRunning, swarm.TaskStateAssigned, "s1")
	short := newTask("short", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned, "s1")
	short.DataVersions = map[string]int{"secret/s1": 3}
	r.sess.put(theirs)
	r.send(model.Assignments{Full: true, Tasks: assign(theirs, short), Data: []model.DataItem{item("s1", 1, "v1"), item("s2", 1, "other")}})
	r.pass(t)
	if len(r.sess.states("theirs")) != 0 {
		t.Fatalf("acted on another node's task: %v", r.sess.states("theirs"))
	}
	if _, _, err := r.a.taskFiles(context.Background(), theirs); err == nil {
		t.Fatal("data given for another node's task")
	}
	l := r.sess.last("short")
	if l.State != swarm.TaskStateRejected || l.Err != "fetching secrets: secret name-s1 version 3 was not delivered to this node" {
		t.Fatalf("report %+v", l)
	}
	if _, ok := r.x.mount("short"); ok || len(r.x.created) != 0 {
		t.Fatal("mounted or created without its data")
	}
}

// TestStopAndRemove: a task no longer wanted is stopped and reported shut
// down; once desired removed, its container goes and the dispatcher is
// asked to delete it.
func TestStopAndRemove(t *testing.T) {
	r := newRig()
	tk := newTask("t1", "n1", swarm.TaskStateShutdown, swarm.TaskStateRunning)
	r.x.ctrs["c1"] = engine.State{ID: "c1", Running: true, Labels: map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "t1"}}
	r.send(model.Assignments{Full: true, Tasks: assign(tk)})
	r.pass(t)
	if !slices.Equal(r.x.stopped, []string{"c1"}) || r.sess.last("t1").State != swarm.TaskStateShutdown {
		t.Fatalf("stopped %v, report %+v", r.x.stopped, r.sess.last("t1"))
	}
	gone, _ := r.sess.Task(context.Background(), "t1")
	gone.DesiredState = swarm.TaskStateRemove
	r.send(model.Assignments{Tasks: assign(gone)})
	r.pass(t)
	if !slices.Equal(r.x.removed, []string{"c1"}) || !slices.Equal(r.sess.removed, []string{"t1"}) {
		t.Fatalf("removed %v, deleted %v", r.x.removed, r.sess.removed)
	}
}

// TestTaskNetworksOnOwnEngine: a task's networks are realised on the
// node's own engine (the session describes them; no manager's engine
// network ID is used), its container joins those with the aliases; a
// worker's agent, once the last task using a network is removed, prunes
// it, keeping the networks of its other tasks.
func TestTaskNetworksOnOwnEngine(t *testing.T) {
	for _, prune := range []bool{false, true} {
		r := newRig()
		r.a.pruneNets = prune
		r.sess.nets = map[string][]model.TaskNetwork{
			"t1": {{ID: "front", Name: "app_front"}, {ID: "back", Name: "app_back"}},
			"t2": {{ID: "back", Name: "app_back"}},
		}
		t1 := newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned)
		t1.Spec.Networks = []swarm.NetworkAttachmentConfig{{Target: "front"}, {Target: "back"}}
		t2 := newTask("t2", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned)
		t2.Spec.Networks = []swarm.NetworkAttachmentConfig{{Target: "back"}}
		r.send(model.Assignments{Full: true, Tasks: assign(t1, t2)})
		r.pass(t)
		var spec1 *engine.Spec
		for i, c := range r.x.created {
			if c.Labels["com.docker.swarm.task.id"] == "t1" {
				spec1 = &r.x.created[i]
			}
		}
		if spec1 == nil || !slices.Equal(spec1.Networks, []string{"eng-front", "eng-back"}) || !slices.Equal(spec1.NetworkAliases, []string{"web", "tasks.web"}) {
			t.Fatalf("t1's container: %+v", spec1)
		}
		// t1 is stopped and removed; t2 keeps running.
		for _, st := range []swarm.TaskState{swarm.TaskStateShutdown, swarm.TaskStateRemove} {
			cur, _ := r.sess.Task(context.Background(), "t1")
			cur.DesiredState = st
			r.send(model.Assignments{Tasks: assign(cur)})
			r.pass(t)
		}
		if !slices.Contains(r.sess.removed, "t1") {
			t.Fatalf("t1 was not removed: %v", r.sess.removed)
		}
		_, front := r.x.realised["front"]
		_, back := r.x.realised["back"]
		if prune {
			// The first is the start's (TestWorkerPrunesAtStart).
			if len(r.x.prunes) != 2 || !maps.Equal(r.x.prunes[1], map[string]bool{"back": true}) || front || !back {
				t.Fatalf("prunes %v, left front %v back %v: want front pruned, back kept for t2", r.x.prunes, front, back)
			}
		} else if len(r.x.prunes) != 0 || !front || !back {
			t.Fatalf("a manager's agent pruned %v (its networks manager removes networks)", r.x.prunes)
		}
	}
}

// TestWorkerPrunesAtStart: a worker's agent, at its first pass with a full
// set and an engine, removes the bridges no task of its holds yet (left by
// tasks removed while it was down); a manager's agent never prunes.
func TestWorkerPrunesAtStart(t *testing.T) {
	for _, prune := range []bool{false, true} {
		r := newRig()
		r.a.pruneNets = prune
		r.x.realised = map[string]string{"gone": "eng-gone"}
		r.pass(t) // no full set yet: nothing
		if len(r.x.prunes) != 0 {
			t.Fatalf("pruned before the full set: %v", r.x.prunes)
		}
		r.send(model.Assignments{Full: true})
		r.pass(t)
		r.pass(t)
		_, left := r.x.realised["gone"]
		if prune && (len(r.x.prunes) != 1 || left) {
			t.Fatalf("worker: prunes %v, stale bridge left %v; want one prune at the first pass", r.x.prunes, left)
		}
		if !prune && (len(r.x.prunes) != 0 || !left) {
			t.Fatalf("manager's agent pruned: %v", r.x.prunes)
		}
	}
}

// TestEngineDown: without the engine, waiting tasks say why, once.
func TestEngineDown(t *testing.T) {
	r := newRig()
	r.x.down = true
	r.send(model.Assignments{Full: true, Tasks: assign(newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned))})
	if err := r.a.Reconcile(context.Background()); err == nil {
		t.Fatal("no error without an engine")
	}
	_ = r.a.Reconcile(context.Background())
	if got := r.sess.states("t1"); !slices.Equal(got, []swarm.TaskState{swarm.TaskStateAssigned}) || r.sess.last("t1").Message != msgWaitEngine {
		t.Fatalf("reports %v %+v", got, r.sess.last("t1"))
	}
}

// TestViewKeepsNewerAndWipes: a stale message does not take a task back
// behind the agent's own report, and removed or replaced versions are
// wiped in memory.
func TestViewKeepsNewerAndWipes(t *testing.T) {
	v := newView("n1")
	old := newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned)
	old.Version.Index = 5
	it := item("s1", 1, "secret-bytes")
	buf := it.Data
	v.apply(model.Assignments{Full: true, Tasks: assign(old), Data: []model.DataItem{it}})
	newer := *old
	newer.Version.Index = 7
	newer.Status.State = swarm.TaskStatePreparing
	v.noted(&newer)
	v.apply(model.Assignments{Tasks: assign(old)})
	if at, _ := v.task("t1"); at.Task.Status.State != swarm.TaskStatePreparing {
		t.Fatalf("view went back to %s", at.Task.Status.State)
	}
	v.apply(model.Assignments{RemovedData: []model.DataRef{it.DataRef}})
	if _, ok := v.copyData(it.DataRef); ok || string(buf) == "secret-bytes" {
		t.Fatalf("removed data kept: %q", buf)
	}
	it2 := item("s2", 1, "more-bytes")
	buf2 := it2.Data
	v.apply(model.Assignments{Data: []model.DataItem{it2}})
	v.apply(model.Assignments{Full: true})
	if string(buf2) == "more-bytes" {
		t.Fatal("a full set did not wipe what it dropped")
	}
}

// TestRefusedReport: a start whose first report the dispatcher refuses
// stops there, leaves nothing behind, and is tried again by the next pass.
func TestRefusedReport(t *testing.T) {
	r := newRig()
	r.sess.refuse = map[string]bool{"t1": true}
	r.send(model.Assignments{Full: true, Tasks: assign(newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateReady))})
	r.pass(t)
	r.pass(t)
	if got := r.sess.states("t1"); !slices.Equal(got, []swarm.TaskState{swarm.TaskStatePreparing, swarm.TaskStatePreparing}) || len(r.x.created) != 0 {
		t.Fatalf("reports %v, created %d", got, len(r.x.created))
	}
	if r.a.wasStarted("t1") {
		t.Fatal("the task is still marked as being started")
	}
}

// scriptedSession plays its messages, then breaks (err) or blocks.
type scriptedSession struct {
	*fakeSession
	msgs []model.Assignments
	err  error
}

func (s *scriptedSession) Next(ctx context.Context) (model.Assignments, error) {
	if len(s.msgs) > 0 {
		m := s.msgs[0]
		s.msgs = s.msgs[1:]
		return m, nil
	}
	if s.err != nil {
		return model.Assignments{}, s.err
	}
	<-ctx.Done()
	return model.Assignments{}, ctx.Err()
}

type connector struct {
	mu       sync.Mutex
	sessions []Session
	opened   int
}

func (c *connector) Open(context.Context) (Session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opened >= len(c.sessions) {
		return nil, fmt.Errorf("no more sessions")
	}
	c.opened++
	return c.sessions[c.opened-1], nil
}

// TestSessionReopens: a broken session is opened again, and the new
// session's full set replaces what the agent held: a task it no longer
// lists is an orphan, and data versions it does not send are wiped.
func TestSessionReopens(t *testing.T) {
	x := newFakeExec()
	x.ctrs["c1"] = engine.State{ID: "c1", Running: true, Labels: map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "t1"}}
	fs := newFakeSession()
	it := item("s1", 1, "value")
	buf := it.Data
	first := &scriptedSession{fakeSession: fs, err: fmt.Errorf("connection reset"), msgs: []model.Assignments{
		{Full: true, Tasks: assign(fs.put(newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning, "s1"))), Data: []model.DataItem{it}},
	}}
	second := &scriptedSession{fakeSession: fs, msgs: []model.Assignments{{Full: true}}}
	c := &connector{sessions: []Session{first, second}}
	a := New(Config{NodeID: "n1", Dispatcher: c, Executor: x})
	a.retry = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		x.mu.Lock()
		removed := slices.Contains(x.removed, "c1")
		x.mu.Unlock()
		if removed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the orphan of the first session's task was not removed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if c.opened != 2 || string(buf) == "value" {
		t.Fatalf("opened %d sessions, data %q", c.opened, buf)
	}
}

// TestRemovedStopsFollowing: a session ending with ErrNodeRemoved calls
// OnRemoved once and opens no other session; any other end reopens.
func TestRemovedStopsFollowing(t *testing.T) {
	for _, tc := range []struct {
		err     error
		removed bool
	}{
		{fmt.Errorf("dispatcher session ended: %w", ErrNodeRemoved), true},
		{fmt.Errorf("connection reset"), false},
	} {
		fs := newFakeSession()
		first := &scriptedSession{fakeSession: fs, err: tc.err, msgs: []model.Assignments{{Full: true}}}
		second := &scriptedSession{fakeSession: fs, msgs: []model.Assignments{{Full: true}}}
		c := &connector{sessions: []Session{first, second}}
		called := make(chan struct{}, 2)
		a := New(Config{NodeID: "n1", Dispatcher: c, Executor: newFakeExec(), OnRemoved: func() { called <- struct{}{} }})
		a.retry = time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		done := make(chan struct{})
		go func() {
			defer close(done)
			a.follow(ctx)
		}()
		if tc.removed {
			// follow returns on its own.
			<-done
		} else {
			for ctx.Err() == nil {
				c.mu.Lock()
				n := c.opened
				c.mu.Unlock()
				if n == 2 {
					break
				}
				time.Sleep(time.Millisecond)
			}
			cancel()
			<-done
		}
		cancel()
		c.mu.Lock()
		opened := c.opened
		c.mu.Unlock()
		if got := len(called); (got == 1) != tc.removed || (opened == 1) != tc.removed {
			t.Errorf("%v: OnRemoved called %d times, %d sessions opened", tc.err, got, opened)
		}
	}
}
