package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/manager/dispatcher"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// TaskLister gives a consistent view of all tasks.
type TaskLister interface {
	Snapshot(ctx context.Context) ([]*model.Service, []*model.Task, error)
}

// NetworkAttacher gives the engine networks and DNS aliases of a task's
// network attachments (networks.Manager implements it).
type NetworkAttacher interface {
	EngineAttachments(ctx context.Context, nets []swarm.NetworkAttachmentConfig, serviceName string) (ids, aliases []string, err error)
}

// PullAuth gives the registry credentials (the X-Registry-Auth value) a
// service was given with --with-registry-auth, nil when none; the agent
// holds them only for the pull and wipes them after.
type PullAuth interface {
	RegistryAuth(ctx context.Context, serviceID string) ([]byte, error)
}

// DataSource is the dispatcher as the agent sees it.
type DataSource interface {
	TaskData(ctx context.Context, nodeID, taskID string) ([]dispatcher.Payload, error)
}

// Agent runs this node's tasks.
type Agent struct {
	nodeID string
	tasks  TaskLister
	table  *store.Table
	mirror *store.Mirror
	data   DataSource
	nets   NetworkAttacher
	auth   PullAuth
	eng    *engine.Engine
	fs     *secretfs.Manager
	log    *slog.Logger
	now    func() time.Time

	mu sync.Mutex
	// busy holds tasks with an operation (start, stop) in flight, so a
	// pass does not start a second one.
	busy map[string]bool
	// started holds tasks this process began starting; a task found half
	// started that is not in it was interrupted by a restart.
	started map[string]bool
	wg      sync.WaitGroup
}

// Config wires an agent.
type Config struct {
	NodeID string
	Tasks  TaskLister
	Store  *store.Store
	Mirror *store.Mirror
	Data   DataSource
	Engine *engine.Engine
	// Networks resolves task network attachments; nil: tasks with
	// networks are rejected.
	Networks NetworkAttacher
	SecretFS *secretfs.Manager
	// PullAuth gives services' registry credentials; nil pulls without.
	PullAuth PullAuth
	Logger   *slog.Logger
}

// New returns an agent.
func New(c Config) *Agent {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		nodeID: c.NodeID, tasks: c.Tasks, table: c.Store.Table(model.TasksTable), mirror: c.Mirror,
		data: c.Data, nets: c.Networks, auth: c.PullAuth, eng: c.Engine, fs: c.SecretFS, log: c.Logger,
		now: func() time.Time { return time.Now().UTC() }, busy: map[string]bool{}, started: map[string]bool{},
	}
}

// Run reconciles on task changes, container exits, and every second.
func (a *Agent) Run(ctx context.Context) {
	defer a.wg.Wait()
	exits := make(chan struct{}, 1)
	go a.watchExits(ctx, exits)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		changed := a.mirror.TableChanged(model.TasksTable)
		if err := a.Reconcile(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("agent pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-exits:
		case <-tick.C:
		}
	}
}

// watchExits turns engine "die" events into wake-ups, re-subscribing when
// the stream breaks (for example while the engine restarts).
func (a *Agent) watchExits(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		ch, errc := a.eng.Exits(ctx)
	loop:
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-ch:
				if !ok {
					break loop
				}
				select {
				case wake <- struct{}{}:
				default:
				}
			case <-errc:
				break loop
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (a *Agent) claim(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.busy[id] {
		return false
	}
	a.busy[id] = true
	return true
}

func (a *Agent) release(id string) {
	a.mu.Lock()
	delete(a.busy, id)
	a.mu.Unlock()
}

// spawn runs op for task id in the background unless one is in flight.
func (a *Agent) spawn(ctx context.Context, id string, op func(context.Context)) {
	if !a.claim(id) {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer a.release(id)
		op(ctx)
	}()
}

// Reconcile makes one pass.
func (a *Agent) Reconcile(ctx context.Context) error {
	_, all, err := a.tasks.Snapshot(ctx)
	if err != nil {
		return err
	}
	ctrs, err := a.eng.ListTasks(ctx)
	if err != nil {
		// Without an engine nothing can start; say so on the tasks that
		// wait, so `docker service ps` shows why.
		for _, t := range all {
			if t.NodeID == a.nodeID && model.Runs(t.DesiredState) && t.Status.State == swarm.TaskStateAssigned && a.claim(t.ID) {
				if _, serr := a.setStatus(ctx, t, swarm.TaskStatus{State: swarm.TaskStatePending, Message: "waiting for the Docker Engine",
					Err: "the Docker Engine is not reachable; the task starts when it answers"}); serr != nil {
					a.log.Warn("task status", "task", t.ID, "err", serr)
				}
				a.release(t.ID)
			}
		}
		return err
	}
	byTask := map[string]engine.State{}
	for _, c := range ctrs {
		if tid := c.Labels["com.docker.swarm.task.id"]; tid != "" && c.Labels[labelHush] == a.nodeID {
			byTask[tid] = c
		}
	}
	mine := map[string]bool{}
	for _, t := range all {
		if t.NodeID != a.nodeID {
			continue
		}
		mine[t.ID] = true
		t := t
		c, hasC := byTask[t.ID]
		switch {
		case model.Unscheduled(t) && model.Runs(t.DesiredState):
			// Named for this node but waiting for room on it (a global
			// task short of resources): the orchestrator assigns it.
		case model.Runs(t.DesiredState) && (t.Status.State == swarm.TaskStateAssigned || t.Status.State == swarm.TaskStatePending || t.Status.State == swarm.TaskStateReady):
			a.spawn(ctx, t.ID, func(ctx context.Context) { a.start(ctx, t) })
		case model.Runs(t.DesiredState) && model.Before(t.Status.State, swarm.TaskStateRunning) && !a.wasStarted(t.ID):
			// Interrupted mid-start (a restart, or a status write that
			// failed): adopt a running container, or fail the task so the
			// orchestrator replaces it.
			a.spawn(ctx, t.ID, func(ctx context.Context) { a.recoverStart(ctx, t) })
		case model.Runs(t.DesiredState) && t.Status.State == swarm.TaskStateRunning:
			if !hasC {
				a.spawn(ctx, t.ID, func(ctx context.Context) {
					a.finish(ctx, t, swarm.TaskStateFailed, "container vanished", "task: container was removed outside hush", nil)
				})
			} else if !c.Running {
				a.spawn(ctx, t.ID, func(ctx context.Context) { a.exited(ctx, t, c) })
			} else if ok, _ := t.ReloadsInPlace(); ok && !model.SameVersions(t.DataVersions, t.LoadedVersions) {
				a.spawn(ctx, t.ID, func(ctx context.Context) { a.reload(ctx, t, c) })
			}
		case t.DesiredState == swarm.TaskStateReady:
			// A restart waiting out its delay: nothing to do yet.
		case !model.Runs(t.DesiredState) && !model.Terminal(t.Status.State):
			a.spawn(ctx, t.ID, func(ctx context.Context) { a.stop(ctx, t, c.ID) })
		case t.DesiredState == swarm.TaskStateRemove && model.Terminal(t.Status.State):
			a.spawn(ctx, t.ID, func(ctx context.Context) { a.remove(ctx, t, c.ID) })
		case model.Terminal(t.Status.State):
			// Secrets live no longer than the task.
			if _, ok := a.fs.Lookup(t.ID); ok {
				a.spawn(ctx, t.ID, func(ctx context.Context) { a.unmount(t.ID) })
			}
		}
	}
	// Containers and mounts of tasks that no longer exist.
	for tid, c := range byTask {
		if !mine[tid] {
			a.spawn(ctx, tid, func(ctx context.Context) {
				if err := a.eng.Remove(ctx, c.ID); err != nil {
					a.log.Warn("removing orphan container", "container", c.ID, "err", err)
				}
				a.unmount(tid)
			})
		}
	}
	ids, err := a.fs.Tasks()
	if err == nil {
		for _, tid := range ids {
			if !mine[tid] {
				a.spawn(ctx, tid, func(ctx context.Context) { a.unmount(tid) })
			}
		}
	}
	return nil
}

// labelHush marks containers this hush node manages, so a Swarm (or another
// hushd) on the same engine never has its containers adopted or removed.
const labelHush = "io.hush.node.id"

// setStatus writes a task's status with a revision check, re-reading and
// retrying if the orchestrator wrote the task meanwhile.
func (a *Agent) setStatus(ctx context.Context, t *model.Task, st swarm.TaskStatus) (*model.Task, error) {
	return a.setStatusWith(ctx, t, st, nil)
}

// setStatusWith is setStatus that also applies change (nil: none) to the
// task it writes, on every retry.
func (a *Agent) setStatusWith(ctx context.Context, t *model.Task, st swarm.TaskStatus, change func(*model.Task)) (*model.Task, error) {
	cur := t
	for attempt := 0; attempt < 5; attempt++ {
		next := *cur
		st.Timestamp = a.now()
		next.Status = st
		if change != nil {
			change(&next)
		}
		next.UpdatedAt = st.Timestamp
		val, err := json.Marshal(&next)
		if err != nil {
			return nil, err
		}
		rev, err := a.table.Update(ctx, cur.ID, int64(cur.Version.Index), val)
		if err == nil {
			next.Version.Index = uint64(rev)
			return &next, nil
		}
		if !errors.Is(err, store.ErrStale) {
			return nil, err
		}
		o, err := a.table.Get(ctx, cur.ID)
		if err != nil {
			return nil, err
		}
		fresh, err := model.Decode[model.Task](o.Value)
		if err != nil {
			return nil, err
		}
		fresh.Version.Index = uint64(o.ModRev)
		cur = fresh
	}
	return nil, fmt.Errorf("task %s: status write kept conflicting", t.ID)
}

func (a *Agent) wasStarted(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.started[id] || a.busy[id]
}

// recoverStart finishes a task found half started. This pass's snapshot
// may predate a start that has just completed, so it decides on a fresh
// read of the task and of the engine's containers, never on the snapshot.
func (a *Agent) recoverStart(ctx context.Context, stale *model.Task) {
	o, err := a.table.Get(ctx, stale.ID)
	if err != nil {
		return
	}
	t, err := model.Decode[model.Task](o.Value)
	if err != nil {
		return
	}
	t.Version.Index = uint64(o.ModRev)
	if !model.Runs(t.DesiredState) || !model.Before(t.Status.State, swarm.TaskStateRunning) ||
		t.Status.State == swarm.TaskStateAssigned || t.Status.State == swarm.TaskStatePending || t.Status.State == swarm.TaskStateReady {
		return
	}
	ctrs, err := a.eng.ListTasks(ctx)
	if err != nil {
		return
	}
	for _, c := range ctrs {
		if c.Labels["com.docker.swarm.task.id"] != t.ID || c.Labels[labelHush] != a.nodeID {
			continue
		}
		if c.Running {
			a.adopt(ctx, t, c)
			return
		}
		_ = a.eng.Remove(ctx, c.ID)
	}
	a.finish(ctx, t, swarm.TaskStateFailed, "interrupted", "task: start interrupted before the container ran", nil)
}

func (a *Agent) adopt(ctx context.Context, t *model.Task, c engine.State) {
	if _, err := a.setStatus(ctx, t, swarm.TaskStatus{State: swarm.TaskStateRunning, Message: "started",
		ContainerStatus: &swarm.ContainerStatus{ContainerID: c.ID, PID: c.Pid}}); err != nil {
		a.log.Warn("task status", "task", t.ID, "err", err)
	}
}

func (a *Agent) start(ctx context.Context, t *model.Task) {
	a.mu.Lock()
	a.started[t.ID] = true
	a.mu.Unlock()
	// Once this start returns, a task still short of a final or running
	// state (a status write failed) is treated as interrupted: adopted or
	// failed by the next pass, never left half started.
	defer func() {
		a.mu.Lock()
		delete(a.started, t.ID)
		a.mu.Unlock()
	}()
	log := a.log.With("task", t.ID, "service", t.ServiceName)
	t, err := a.setStatus(ctx, t, swarm.TaskStatus{State: swarm.TaskStatePreparing, Message: "preparing"})
	if err != nil {
		log.Warn("task status", "err", err)
		return
	}
	cs := t.Spec.ContainerSpec
	if err := a.pullImage(ctx, t, log); err != nil {
		// No longer wanted (or the agent stops): the next pass stops the
		// task, which never ran.
		return
	}
	if ok, err := a.eng.HasImage(ctx, cs.Image); err != nil || !ok {
		msg := fmt.Sprintf("No such image: %s", cs.Image)
		if err != nil {
			msg = err.Error()
		}
		a.finish(ctx, t, swarm.TaskStateRejected, "preparing", msg, nil)
		return
	}
	if msg := a.engineRefusal(ctx, t); msg != "" {
		a.finish(ctx, t, swarm.TaskStateRejected, "preparing", msg, nil)
		return
	}
	binds, err := a.mountSecrets(ctx, t)
	if err != nil {
		a.finish(ctx, t, swarm.TaskStateRejected, "preparing", err.Error(), nil)
		return
	}
	spec := a.containerSpec(t, binds)
	if specTemplated(&spec) {
		host, _ := os.Hostname()
		tc := templateContext(t, a.serviceLabels(ctx, t.ServiceID), host)
		if err := expandSpec(ctx, &spec, tc); err != nil {
			a.finish(ctx, t, swarm.TaskStateRejected, "preparing", err.Error(), nil)
			return
		}
	}
	if len(t.Spec.Networks) > 0 {
		if a.nets == nil {
			a.finish(ctx, t, swarm.TaskStateRejected, "preparing", "networks are not available on this node", nil)
			return
		}
		spec.Networks, spec.NetworkAliases, err = a.nets.EngineAttachments(ctx, t.Spec.Networks, t.ServiceName)
		if err != nil {
			a.finish(ctx, t, swarm.TaskStateRejected, "preparing", err.Error(), nil)
			return
		}
	}
	t, err = a.setStatus(ctx, t, swarm.TaskStatus{State: swarm.TaskStateStarting, Message: "starting"})
	if err != nil {
		log.Warn("task status", "err", err)
		return
	}
	id, err := a.eng.Create(ctx, spec)
	if err == nil {
		err = a.eng.Start(ctx, id)
	}
	if err != nil {
		a.finish(ctx, t, swarm.TaskStateFailed, "starting", err.Error(), &swarm.ContainerStatus{ContainerID: id})
		return
	}
	st, err := a.eng.Inspect(ctx, id)
	if err != nil {
		log.Warn("inspect after start", "err", err)
	}
	msg := "started"
	if ok, why := t.ReloadsInPlace(); !ok && t.Reloads() {
		// Said where `docker service ps --no-trunc` and inspect show it.
		msg = fmt.Sprintf("started; %s=%s: %s, so a rotation restarts this task", model.RotateLabel, t.RotateMode, why)
	}
	loaded := t.DataVersions
	if _, err := a.setStatusWith(ctx, t, swarm.TaskStatus{State: swarm.TaskStateRunning, Message: msg,
		ContainerStatus: &swarm.ContainerStatus{ContainerID: id, PID: st.Pid}}, func(n *model.Task) { n.LoadedVersions = loaded }); err != nil {
		log.Warn("task status", "err", err)
		return
	}
	log.Info("task running", "container", id)
}

// pullImage has the engine pull the task's image, as a Swarm worker does
// while the task is preparing: every time (a mutable tag is brought up to
// date), with the service's registry credentials. A failed pull is only
// logged: if the engine has the image the task runs from it (a registry that
// is down does not stop a node from running what it has), and if not the
// caller rejects the task with the engine's "No such image", as Swarm does;
// the restart policy then retries it with a new task. It returns an error
// only when the pull was cut short because the task is no longer wanted or
// the agent stops.
func (a *Agent) pullImage(ctx context.Context, t *model.Task, log *slog.Logger) error {
	img := t.Spec.ContainerSpec.Image
	var auth []byte
	if a.auth != nil {
		var err error
		if auth, err = a.auth.RegistryAuth(ctx, t.ServiceID); err != nil {
			// As Swarm with credentials it cannot decode: pull without.
			log.Warn("registry credentials of the service unavailable; pulling without", "err", err)
			auth = nil
		}
	}
	pctx, cancel := a.whileWanted(ctx, t.ID)
	defer cancel()
	// The client takes the header value as a string: that copy cannot be
	// wiped, the bytes can.
	err := a.eng.Pull(pctx, img, string(auth))
	clear(auth)
	switch {
	case err == nil:
		return nil
	case pctx.Err() != nil:
		log.Info("image pull abandoned: the task is no longer wanted", "image", img)
		return pctx.Err()
	}
	if ok, herr := a.eng.HasImage(ctx, img); herr == nil && ok {
		// Routine for images built or loaded on this host, whose registry
		// (often docker.io) is not reachable or never had them.
		log.Info("pulling image failed; running the engine's copy", "image", img, "err", err)
		return nil
	}
	log.Warn("pulling image failed", "image", img, "err", err)
	return nil
}

// whileWanted returns a context that ends when ctx does or when task id
// stops being wanted running (its service was removed, scaled down or
// updated), so that a long pull does not hold a task that is going away.
func (a *Agent) whileWanted(ctx context.Context, id string) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		for wctx.Err() == nil {
			changed := a.mirror.TableChanged(model.TasksTable)
			o, err := a.table.Get(wctx, id)
			if errors.Is(err, store.ErrNotFound) {
				cancel()
				return
			}
			if err == nil {
				if cur, derr := model.Decode[model.Task](o.Value); derr == nil && !model.Runs(cur.DesiredState) {
					cancel()
					return
				}
			}
			select {
			case <-wctx.Done():
			case <-changed:
			}
		}
	}()
	return wctx, cancel
}

// mountSecrets fetches the task's data, renders the templated ones, and
// puts it on the task's tmpfs.
func (a *Agent) mountSecrets(ctx context.Context, t *model.Task) ([]engine.Bind, error) {
	files, wipe, err := a.taskFiles(ctx, t)
	defer wipe()
	if err != nil || len(files) == 0 {
		return nil, err
	}
	var mt *secretfs.Mount
	if ok, _ := t.ReloadsInPlace(); ok {
		mt, err = a.fs.MountTree(ctx, t.ID, files)
	} else {
		mt, err = a.fs.Mount(ctx, t.ID, files)
	}
	if err != nil {
		return nil, err
	}
	var binds []engine.Bind
	for _, b := range mt.Bindings() {
		binds = append(binds, engine.Bind{HostPath: b.HostPath, ContainerPath: b.ContainerPath})
	}
	return binds, nil
}

// taskFiles fetches the task's data (the versions it holds) and renders
// the templated ones; wipe clears the plaintext and must always be called.
func (a *Agent) taskFiles(ctx context.Context, t *model.Task) ([]secretfs.File, func(), error) {
	payloads, err := a.data.TaskData(ctx, a.nodeID, t.ID)
	wipe := func() {
		for i := range payloads {
			clear(payloads[i].Data)
		}
	}
	if err != nil {
		return nil, wipe, fmt.Errorf("fetching secrets: %w", err)
	}
	if len(payloads) == 0 {
		return nil, wipe, nil
	}
	// Templated objects are rendered for this task in memory; only the
	// rendering reaches the tmpfs (and is wiped with the rest).
	if err := a.renderPayloads(ctx, t, payloads); err != nil {
		return nil, wipe, err
	}
	files := make([]secretfs.File, 0, len(payloads))
	for _, p := range payloads {
		uid, err1 := strconv.Atoi(p.UID)
		gid, err2 := strconv.Atoi(p.GID)
		if err1 != nil || err2 != nil {
			return nil, wipe, fmt.Errorf("%s %s: uid and gid must be numeric", p.Kind, p.Name)
		}
		files = append(files, secretfs.File{Target: p.Target, UID: uid, GID: gid, Mode: fsMode(p.Mode), Data: p.Data})
	}
	return files, wipe, nil
}

func (a *Agent) containerSpec(t *model.Task, binds []engine.Bind) engine.Spec {
	cs := t.Spec.ContainerSpec
	labels := map[string]string{}
	for k, v := range cs.Labels {
		labels[k] = v
	}
	labels["com.docker.swarm.service.id"] = t.ServiceID
	labels["com.docker.swarm.service.name"] = t.ServiceName
	labels["com.docker.swarm.task"] = ""
	labels["com.docker.swarm.task.id"] = t.ID
	labels["com.docker.swarm.task.name"] = t.ContainerName()
	labels["com.docker.swarm.node.id"] = t.NodeID
	labels[labelHush] = a.nodeID
	spec := engine.Spec{
		Name: t.ContainerName(), Labels: labels, Image: cs.Image,
		Command: cs.Command, Args: cs.Args, Env: cs.Env, Dir: cs.Dir, User: cs.User, Hostname: cs.Hostname,
		TTY: cs.TTY, OpenStdin: cs.OpenStdin, StopSignal: cs.StopSignal,
		Init: cs.Init, Binds: binds, Ports: publishes(t.Ports),
	}
	applyTaskSpec(&spec, t.Spec)
	return spec
}

// exited records how a task's container ended.
func (a *Agent) exited(ctx context.Context, t *model.Task, c engine.State) {
	a.log.Info("task container exited", "task", t.ID, "service", t.ServiceName, "exitCode", c.ExitCode, "status", c.Status, "error", c.Err)
	cst := &swarm.ContainerStatus{ContainerID: c.ID, ExitCode: c.ExitCode}
	if c.ExitCode == 0 {
		a.finish(ctx, t, swarm.TaskStateComplete, "finished", "", cst)
		return
	}
	a.finish(ctx, t, swarm.TaskStateFailed, "started", fmt.Sprintf("task: non-zero exit (%d)", c.ExitCode), cst)
}

// finish moves a task to a final state and drops its secrets.
func (a *Agent) finish(ctx context.Context, t *model.Task, state swarm.TaskState, msg, errText string, cst *swarm.ContainerStatus) {
	a.unmount(t.ID)
	if _, err := a.setStatus(ctx, t, swarm.TaskStatus{State: state, Message: msg, Err: errText, ContainerStatus: cst}); err != nil {
		a.log.Warn("task status", "task", t.ID, "err", err)
	}
}

// stop shuts a task's container down with its grace period (Swarm applies
// StopGracePeriod here, at stop time, and does not store it on the
// container; nil lets the engine use its default of 10 s).
func (a *Agent) stop(ctx context.Context, t *model.Task, containerID string) {
	if containerID != "" {
		if err := a.eng.Stop(ctx, containerID, t.Spec.ContainerSpec.StopGracePeriod); err != nil {
			a.log.Warn("stopping task container", "task", t.ID, "err", err)
			return
		}
	}
	a.finish(ctx, t, swarm.TaskStateShutdown, "shutdown", "", t.Status.ContainerStatus)
}

// remove deletes a finished task's container, mount and record.
func (a *Agent) remove(ctx context.Context, t *model.Task, containerID string) {
	if containerID != "" {
		if err := a.eng.Remove(ctx, containerID); err != nil {
			a.log.Warn("removing task container", "task", t.ID, "err", err)
			return
		}
	}
	a.unmount(t.ID)
	a.mu.Lock()
	delete(a.started, t.ID)
	a.mu.Unlock()
	if err := a.table.Delete(ctx, t.ID, "", int64(t.Version.Index), nil); err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrStale) {
		a.log.Warn("deleting task", "task", t.ID, "err", err)
	}
}

func (a *Agent) unmount(taskID string) {
	if err := a.fs.Unmount(taskID); err != nil {
		a.log.Warn("unmounting task secrets", "task", taskID, "err", err)
	}
}

func fsMode(m uint32) os.FileMode { return os.FileMode(m) & os.ModePerm }

// publishes turns a service's published ports into host bindings. On one
// host, Swarm's ingress and host modes both come down to the engine binding
// the port; with replicas > 1 a fixed published port fits only one task.
func publishes(ports []swarm.PortConfig) []engine.Publish {
	var out []engine.Publish
	for _, p := range ports {
		if p.TargetPort == 0 || p.TargetPort > 65535 || p.PublishedPort > 65535 {
			continue
		}
		out = append(out, engine.Publish{Target: uint16(p.TargetPort), Published: uint16(p.PublishedPort), Protocol: string(p.Protocol)})
	}
	return out
}
