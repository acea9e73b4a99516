package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// Agent runs this node's tasks.
type Agent struct {
	nodeID    string
	conn      Connector
	onRemoved func()
	x         Executor
	view      *view
	log       *slog.Logger
	now       func() time.Time
	// retry is the wait before a broken session is opened again.
	retry time.Duration
	// dataWait bounds how long a start or reload waits for data versions
	// not delivered yet.
	dataWait time.Duration

	mu   sync.Mutex
	sess Session
	// busy holds tasks with an operation (start, stop) in flight, so a
	// pass does not start a second one.
	busy map[string]bool
	// started holds tasks this process began starting; a task found half
	// started that is not in it was interrupted by a restart.
	started map[string]bool
	// taskNets holds the swarm networks of the tasks this process
	// started, until their removal.
	taskNets map[string][]string
	wg       sync.WaitGroup

	// pruneNets: this node removes the engine networks its tasks no
	// longer use (a worker); netMu keeps a prune from running between a
	// task's realisation of its networks and its container's creation.
	pruneNets bool
	netMu     sync.RWMutex
	// prunedAtStart: the first pass with a full set and an engine pruned
	// (only the Reconcile loop reads and writes it).
	prunedAtStart bool
}

// Config wires an agent.
type Config struct {
	NodeID string
	// Dispatcher opens this node's sessions: the agent's only channel to
	// the managers.
	Dispatcher Connector
	Executor   Executor
	Logger     *slog.Logger
	// OnRemoved is called (once, from the agent's goroutine) when the
	// managers say this node was removed from the cluster; the agent then
	// stops following. It must not wait for Run to return.
	OnRemoved func()
	// PruneNetworks makes the agent remove the engine networks its tasks
	// no longer use once a task using one is removed: a worker's, which
	// has no networks manager to remove those of removed networks.
	PruneNetworks bool
}

// ErrNodeRemoved is how a session (or its opening) fails once the managers
// removed this node (`docker node rm`): the node is no longer part of the
// cluster, and reconnecting is pointless.
var ErrNodeRemoved = errors.New("node is removed from cluster")

// New returns an agent.
func New(c Config) *Agent {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		nodeID: c.NodeID, conn: c.Dispatcher, onRemoved: c.OnRemoved, x: c.Executor, view: newView(c.NodeID), log: c.Logger,
		now: func() time.Time { return time.Now().UTC() }, retry: time.Second, dataWait: dataWait,
		busy: map[string]bool{}, started: map[string]bool{}, taskNets: map[string][]string{}, pruneNets: c.PruneNetworks,
	}
}

// Run follows this node's assignments and reconciles on their changes,
// container exits, and every second.
func (a *Agent) Run(ctx context.Context) {
	// Last: no data version outlives the agent in memory.
	defer a.view.wipe()
	defer a.wg.Wait()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.follow(ctx)
	}()
	exits := make(chan struct{}, 1)
	go a.watchExits(ctx, exits)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		changed := a.view.Changed()
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

// follow keeps a session open and applies its messages to the view; a
// broken session is opened again, and its full set replaces the view.
func (a *Agent) follow(ctx context.Context) {
	for ctx.Err() == nil {
		s, err := a.conn.Open(ctx)
		if err == nil {
			a.mu.Lock()
			a.sess = s
			a.mu.Unlock()
			for {
				var m model.Assignments
				if m, err = s.Next(ctx); err != nil {
					break
				}
				a.view.apply(m)
			}
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrNodeRemoved) {
			// Swarm's node leaves the cluster: nothing will serve it again.
			a.log.Warn("this node was removed from the cluster", "err", err)
			if a.onRemoved != nil {
				a.onRemoved()
			}
			return
		}
		a.log.Warn("dispatcher session broke; opening another", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(a.retry):
		}
	}
}

// session is the current session (nil before the first one opens).
func (a *Agent) session() Session {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sess
}

// watchExits turns container exits into wake-ups, re-subscribing when the
// stream breaks (for example while the engine restarts).
func (a *Agent) watchExits(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		ch, errc := a.x.Exits(ctx)
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

// msgWaitEngine is the status message of a task waiting for the engine.
const msgWaitEngine = "waiting for the Docker Engine"

// Reconcile makes one pass.
func (a *Agent) Reconcile(ctx context.Context) error {
	assigned, synced := a.view.snapshot()
	if !synced {
		// Until a full set arrives the agent cannot tell its tasks from
		// orphans: it touches nothing.
		return nil
	}
	ctrs, err := a.x.Containers(ctx)
	if err != nil {
		// Without an engine nothing can start; say so on the tasks that
		// wait, so `docker service ps` shows why.
		for _, at := range assigned {
			t := at.Task
			if model.Runs(t.DesiredState) && t.Status.State == swarm.TaskStateAssigned && t.Status.Message != msgWaitEngine && a.claim(t.ID) {
				if _, serr := a.report(ctx, t, swarm.TaskStatus{State: swarm.TaskStateAssigned, Message: msgWaitEngine,
					Err: "the Docker Engine is not reachable; the task starts when it answers"}, nil); serr != nil {
					a.log.Warn("task status", "task", t.ID, "err", serr)
				}
				a.release(t.ID)
			}
		}
		return err
	}
	if a.pruneNets && !a.prunedAtStart {
		// A worker restarted knows none of its tasks' networks yet:
		// what its tasks left behind while it was down (or under an
		// earlier run) goes now, not at the next removal; a network a
		// running container uses stays (the engine refuses), and a
		// starting task realises its own again.
		a.prunedAtStart = true
		a.pruneNetworks(ctx)
	}
	byTask := map[string]engine.State{}
	for _, c := range ctrs {
		if tid := c.Labels["com.docker.swarm.task.id"]; tid != "" && c.Labels[labelHush] == a.nodeID {
			byTask[tid] = c
		}
	}
	mounts, merr := a.x.SecretMounts()
	mounted := map[string]bool{}
	for _, id := range mounts {
		mounted[id] = true
	}
	mine := map[string]bool{}
	for _, at := range assigned {
		t := at.Task
		mine[t.ID] = true
		c, hasC := byTask[t.ID]
		switch {
		case model.Unscheduled(t) && model.Runs(t.DesiredState):
			// Named for this node but waiting for room on it (a global
			// task short of resources): the orchestrator assigns it.
		case model.Runs(t.DesiredState) && (t.Status.State == swarm.TaskStateAssigned || t.Status.State == swarm.TaskStatePending || t.Status.State == swarm.TaskStateReady):
			a.spawn(ctx, t.ID, func(ctx context.Context) { a.start(ctx, t) })
		case model.Runs(t.DesiredState) && t.Status.State == swarm.TaskStateStarting && hasC && !a.wasStarted(t.ID) &&
			t.Status.ContainerStatus != nil && t.Status.ContainerStatus.ContainerID == c.ID:
			// Started, waiting for its health check to pass (start).
			switch {
			case !c.Running:
				a.spawn(ctx, t.ID, func(ctx context.Context) { a.exited(ctx, t, c) })
			case c.Health == healthUnhealthy:
				a.spawn(ctx, t.ID, func(ctx context.Context) { a.unhealthy(ctx, t, c) })
			case c.Health != healthStarting:
				a.spawn(ctx, t.ID, func(ctx context.Context) { a.healthy(ctx, t, c) })
			}
		case model.Runs(t.DesiredState) && model.Before(t.Status.State, swarm.TaskStateRunning) && !a.wasStarted(t.ID):
			// Interrupted mid-start (a restart, or a status report that
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
			} else if c.Health == healthUnhealthy {
				a.spawn(ctx, t.ID, func(ctx context.Context) { a.unhealthy(ctx, t, c) })
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
			if mounted[t.ID] {
				a.spawn(ctx, t.ID, func(ctx context.Context) { a.unmount(t.ID) })
			}
		}
	}
	// Containers and mounts of tasks no longer assigned to this node.
	for tid, c := range byTask {
		if !mine[tid] {
			a.spawn(ctx, tid, func(ctx context.Context) {
				if err := a.x.Remove(ctx, c.ID); err != nil {
					a.log.Warn("removing orphan container", "container", c.ID, "err", err)
				}
				a.unmount(tid)
			})
		}
	}
	if merr == nil {
		for _, tid := range mounts {
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

// report sends a task's status (and, when loaded is not nil, the versions
// its container now holds) to the dispatcher, which checks and writes it;
// it returns the task as stored.
func (a *Agent) report(ctx context.Context, t *model.Task, st swarm.TaskStatus, loaded map[string]int) (*model.Task, error) {
	s := a.session()
	if s == nil {
		return nil, fmt.Errorf("task %s: no dispatcher session", t.ID)
	}
	n, err := s.ReportStatus(ctx, model.StatusReport{TaskID: t.ID, State: st.State, Message: st.Message, Err: st.Err,
		Container: st.ContainerStatus, At: a.now(), Loaded: loaded})
	if err != nil {
		return nil, err
	}
	a.view.noted(n)
	return n, nil
}

func (a *Agent) wasStarted(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.started[id] || a.busy[id]
}

// recoverStart finishes a task found half started. This pass's view may
// predate a start that has just completed, so it decides on a fresh read
// of the task and of the engine's containers, never on the view.
func (a *Agent) recoverStart(ctx context.Context, stale *model.Task) {
	s := a.session()
	if s == nil {
		return
	}
	t, err := s.Task(ctx, stale.ID)
	if err != nil {
		return
	}
	if !model.Runs(t.DesiredState) || !model.Before(t.Status.State, swarm.TaskStateRunning) ||
		t.Status.State == swarm.TaskStateAssigned || t.Status.State == swarm.TaskStatePending || t.Status.State == swarm.TaskStateReady {
		return
	}
	ctrs, err := a.x.Containers(ctx)
	if err != nil {
		return
	}
	for _, c := range ctrs {
		if c.Labels["com.docker.swarm.task.id"] != t.ID || c.Labels[labelHush] != a.nodeID {
			continue
		}
		if c.Running {
			switch c.Health {
			case healthStarting:
				a.awaitHealth(ctx, t, c)
			case healthUnhealthy:
				a.unhealthy(ctx, t, c)
			default:
				a.adopt(ctx, t, c)
			}
			return
		}
		_ = a.x.Remove(ctx, c.ID)
	}
	a.finish(ctx, t, swarm.TaskStateFailed, "interrupted", "task: start interrupted before the container ran", nil)
}

// awaitHealth records container c on task t, which stays starting until
// c's health check first passes (Reconcile then reports it running).
func (a *Agent) awaitHealth(ctx context.Context, t *model.Task, c engine.State) {
	if t.Status.State == swarm.TaskStateStarting && t.Status.ContainerStatus != nil && t.Status.ContainerStatus.ContainerID == c.ID {
		return
	}
	if _, err := a.report(ctx, t, swarm.TaskStatus{State: swarm.TaskStateStarting, Message: "starting",
		ContainerStatus: &swarm.ContainerStatus{ContainerID: c.ID, PID: c.Pid}}, nil); err != nil {
		a.log.Warn("task status", "task", t.ID, "err", err)
	}
}

func (a *Agent) adopt(ctx context.Context, t *model.Task, c engine.State) {
	if _, err := a.report(ctx, t, swarm.TaskStatus{State: swarm.TaskStateRunning, Message: "started",
		ContainerStatus: &swarm.ContainerStatus{ContainerID: c.ID, PID: c.Pid}}, nil); err != nil {
		a.log.Warn("task status", "task", t.ID, "err", err)
	}
}

func (a *Agent) start(ctx context.Context, t *model.Task) {
	a.mu.Lock()
	a.started[t.ID] = true
	a.mu.Unlock()
	// Once this start returns, a task still short of a final or running
	// state (a status report failed) is treated as interrupted: adopted
	// or failed by the next pass, never left half started.
	id := t.ID
	defer func() {
		a.mu.Lock()
		delete(a.started, id)
		a.mu.Unlock()
	}()
	log := a.log.With("task", t.ID, "service", t.ServiceName)
	t, err := a.report(ctx, t, swarm.TaskStatus{State: swarm.TaskStatePreparing, Message: "preparing"}, nil)
	if err != nil {
		// t is nil here.
		log.Warn("task status", "err", err)
		return
	}
	cs := t.Spec.ContainerSpec
	if err := a.pullImage(ctx, t, log); err != nil {
		// No longer wanted (or the agent stops): the next pass stops the
		// task, which never ran.
		return
	}
	if ok, err := a.x.HasImage(ctx, cs.Image); err != nil || !ok {
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
		tc := templateContext(t, a.serviceLabels(t.ID), host)
		if err := expandSpec(ctx, &spec, tc); err != nil {
			a.finish(ctx, t, swarm.TaskStateRejected, "preparing", err.Error(), nil)
			return
		}
	}
	var nets []model.TaskNetwork
	if len(t.Spec.Networks) > 0 {
		nets, spec.NetworkAliases, err = a.networks(ctx, t.ID)
		if err == nil {
			// Realised now so that an engine refusing one rejects the
			// task before it starts; again below, under netMu.
			_, err = a.realise(ctx, nets)
		}
		if err != nil {
			a.finish(ctx, t, swarm.TaskStateRejected, "preparing", err.Error(), nil)
			return
		}
	}
	t, err = a.report(ctx, t, swarm.TaskStatus{State: swarm.TaskStateStarting, Message: "starting"}, nil)
	if err != nil {
		log.Warn("task status", "err", err)
		return
	}
	unlockNets := func() {}
	if len(nets) > 0 {
		// Held from here until the container runs (an endpoint of its
		// networks), not across the report above (a call to a manager):
		// a worker's prune of its unused networks never takes one in
		// between, and the realisation here restores one a prune took
		// since the first.
		a.netMu.RLock()
		held := true
		unlockNets = func() {
			if held {
				held = false
				a.netMu.RUnlock()
			}
		}
		defer unlockNets()
		spec.Networks, err = a.realise(ctx, nets)
		if err != nil {
			unlockNets()
			a.finish(ctx, t, swarm.TaskStateFailed, "starting", err.Error(), nil)
			return
		}
	}
	cid, err := a.x.Create(ctx, spec)
	if err == nil {
		err = a.x.Start(ctx, cid)
	}
	unlockNets()
	if err != nil {
		a.finish(ctx, t, swarm.TaskStateFailed, "starting", err.Error(), &swarm.ContainerStatus{ContainerID: cid})
		return
	}
	st, err := a.x.Inspect(ctx, cid)
	if err != nil {
		log.Warn("inspect after start", "err", err)
	}
	loaded := maps.Clone(t.DataVersions)
	if loaded == nil {
		loaded = map[string]int{} // recorded as none, not left as it was
	}
	if st.Health == healthStarting {
		// As Swarm's executor, a task with a health check runs only once
		// the check first passes; until then it stays starting, with its
		// container (for logs) and loaded versions recorded. Reconcile
		// takes it on (healthy, unhealthy or exited).
		if _, err := a.report(ctx, t, swarm.TaskStatus{State: swarm.TaskStateStarting, Message: "starting",
			ContainerStatus: &swarm.ContainerStatus{ContainerID: cid, PID: st.Pid}}, loaded); err != nil {
			log.Warn("task status", "err", err)
			return
		}
		log.Info("task started; waiting for its health check", "container", cid)
		return
	}
	if _, err := a.report(ctx, t, swarm.TaskStatus{State: swarm.TaskStateRunning, Message: startedMsg(t),
		ContainerStatus: &swarm.ContainerStatus{ContainerID: cid, PID: st.Pid}}, loaded); err != nil {
		log.Warn("task status", "err", err)
		return
	}
	log.Info("task running", "container", cid)
}

// startedMsg is the status message of a task that runs.
func startedMsg(t *model.Task) string {
	if ok, why := t.ReloadsInPlace(); !ok && t.Reloads() {
		// Said where `docker service ps --no-trunc` and inspect show it.
		return fmt.Sprintf("started; %s=%s: %s, so a rotation restarts this task", model.RotateLabel, t.RotateMode, why)
	}
	return "started"
}

// healthy reports a task whose container's health check first passed (or
// which no longer has one) as running.
func (a *Agent) healthy(ctx context.Context, t *model.Task, c engine.State) {
	if _, err := a.report(ctx, t, swarm.TaskStatus{State: swarm.TaskStateRunning, Message: startedMsg(t),
		ContainerStatus: &swarm.ContainerStatus{ContainerID: c.ID, PID: c.Pid}}, nil); err != nil {
		a.log.Warn("task status", "task", t.ID, "err", err)
		return
	}
	a.log.Info("task running", "task", t.ID, "service", t.ServiceName, "container", c.ID)
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
	auth, err := a.session().RegistryAuth(ctx, t.ID)
	if err != nil {
		// As Swarm with credentials it cannot decode: pull without.
		log.Warn("registry credentials of the service unavailable; pulling without", "err", err)
		auth = nil
	}
	pctx, cancel := a.whileWanted(ctx, t.ID)
	defer cancel()
	// The client takes the header value as a string: that copy cannot be
	// wiped, the bytes can.
	err = a.x.Pull(pctx, img, string(auth))
	clear(auth)
	switch {
	case err == nil:
		return nil
	case pctx.Err() != nil:
		log.Info("image pull abandoned: the task is no longer wanted", "image", img)
		return pctx.Err()
	}
	if ok, herr := a.x.HasImage(ctx, img); herr == nil && ok {
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
			changed := a.view.Changed()
			if at, ok := a.view.task(id); !ok || !model.Runs(at.Task.DesiredState) {
				cancel()
				return
			}
			select {
			case <-wctx.Done():
			case <-changed:
			}
		}
	}()
	return wctx, cancel
}

// mountSecrets puts the task's data, rendered, on its tmpfs.
func (a *Agent) mountSecrets(ctx context.Context, t *model.Task) ([]engine.Bind, error) {
	files, wipe, err := a.taskFiles(ctx, t)
	defer wipe()
	if err != nil || len(files) == 0 {
		return nil, err
	}
	tree, _ := t.ReloadsInPlace()
	return a.x.MountSecrets(ctx, t.ID, files, tree)
}

// dataWait bounds how long a task waits for data versions the dispatcher
// has not delivered yet (a rotation's versions travel with the task
// change, but the agent's own report may have shown it the change first).
const dataWait = 10 * time.Second

// taskFiles gathers the task's data (the versions it holds) and renders
// the templated ones; wipe clears the plaintext and must always be called.
// Only a task this node was assigned, and that should run, gets data, and
// only of the objects it references.
func (a *Agent) taskFiles(ctx context.Context, t *model.Task) ([]secretfs.File, func(), error) {
	var payloads []payload
	wipe := func() {
		for i := range payloads {
			clear(payloads[i].Data)
		}
	}
	at, ok := a.view.task(t.ID)
	if !ok || at.Task.NodeID != a.nodeID || t.NodeID != a.nodeID || !model.Runs(at.Task.DesiredState) {
		return nil, wipe, fmt.Errorf("fetching secrets: task %s is not assigned to this node to run", t.ID)
	}
	refs := fileRefs(t)
	if len(refs) == 0 {
		return nil, wipe, nil
	}
	deadline := time.NewTimer(a.dataWait)
	defer deadline.Stop()
	for {
		changed := a.view.Changed()
		var missing *fileRef
		payloads = payloads[:0]
		for i, r := range refs {
			it, ok := a.view.copyData(model.DataRef{Kind: r.kind, ID: r.id, Version: t.HeldVersion(r.kind, r.id)})
			if !ok {
				missing = &refs[i]
				break
			}
			p := r.payload
			p.Data, p.Templating = it.Data, it.Templating
			payloads = append(payloads, p)
		}
		if missing == nil {
			break
		}
		wipe()
		select {
		case <-changed:
			continue
		case <-ctx.Done():
			return nil, wipe, ctx.Err()
		case <-deadline.C:
		}
		return nil, wipe, fmt.Errorf("fetching secrets: %s %s version %d was not delivered to this node",
			missing.kind, missing.Name, t.HeldVersion(missing.kind, missing.id))
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

// payload is one file's worth of data for a task.
type payload struct {
	Kind string // "secret" or "config"
	ID   string
	Name string
	// Target, UID, GID and Mode are the reference's file settings.
	Target   string
	UID, GID string
	Mode     uint32
	Data     []byte
	// Templating is the object's templating driver ("" for none).
	Templating string
}

// fileRef is a reference of a task to an object it mounts as a file.
type fileRef struct {
	kind, id string
	payload
}

// fileRefs lists t's file references, secrets then configs, in spec order.
func fileRefs(t *model.Task) []fileRef {
	cs := t.Spec.ContainerSpec
	if cs == nil {
		return nil
	}
	var out []fileRef
	for _, r := range cs.Secrets {
		if r == nil || r.File == nil {
			continue
		}
		out = append(out, fileRef{kind: "secret", id: r.SecretID, payload: payload{Kind: "secret", ID: r.SecretID, Name: r.SecretName,
			Target: r.File.Name, UID: r.File.UID, GID: r.File.GID, Mode: uint32(r.File.Mode)}})
	}
	for _, r := range cs.Configs {
		if r == nil || r.File == nil {
			continue
		}
		out = append(out, fileRef{kind: "config", id: r.ConfigID, payload: payload{Kind: "config", ID: r.ConfigID, Name: r.ConfigName,
			Target: configTarget(r.File.Name), UID: r.File.UID, GID: r.File.GID, Mode: uint32(r.File.Mode)}})
	}
	return out
}

// configTarget is where a config file goes: Swarm mounts a relative config
// target under "/" (secrets go under /run/secrets); the CLI sends the short
// syntax's target relative ("app_conf" → /app_conf).
func configTarget(name string) string {
	if len(name) > 0 && name[0] == '/' {
		return name
	}
	return "/" + name
}

func (a *Agent) containerSpec(t *model.Task, binds []engine.Bind) engine.Spec {
	cs := t.Spec.ContainerSpec
	labels := maps.Clone(cs.Labels)
	if labels == nil {
		labels = map[string]string{}
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

// healthUnhealthy is the engine's health status of a container whose
// health check failed its retries.
const healthUnhealthy = "unhealthy"

// healthStarting is the health status of a container whose check has not
// passed yet (nor failed its retries).
const healthStarting = "starting"

// unhealthy ends a task whose container's health check failed, as Swarm's
// executor does: the container is stopped (with the task's grace period)
// and the task fails with the health cause beside its exit code, so that
// the restart policy and an update's failure action apply; a container
// that exits 0 when stopped completes, as in Swarm.
func (a *Agent) unhealthy(ctx context.Context, t *model.Task, c engine.State) {
	a.log.Warn("task container unhealthy; stopping it", "task", t.ID, "service", t.ServiceName)
	if err := a.x.Stop(ctx, c.ID, t.Spec.ContainerSpec.StopGracePeriod); err != nil {
		a.log.Warn("stopping an unhealthy task container", "task", t.ID, "err", err)
		return
	}
	st, err := a.x.Inspect(ctx, c.ID)
	if err != nil {
		a.log.Warn("inspecting an unhealthy task container", "task", t.ID, "err", err)
		return
	}
	cst := &swarm.ContainerStatus{ContainerID: c.ID, ExitCode: st.ExitCode}
	if st.ExitCode == 0 {
		a.finish(ctx, t, swarm.TaskStateComplete, "finished", "", cst)
		return
	}
	a.finish(ctx, t, swarm.TaskStateFailed, "started", fmt.Sprintf("task: non-zero exit (%d): dockerexec: unhealthy container", st.ExitCode), cst)
}

// finish moves a task to a final state and drops its secrets.
func (a *Agent) finish(ctx context.Context, t *model.Task, state swarm.TaskState, msg, errText string, cst *swarm.ContainerStatus) {
	a.unmount(t.ID)
	if _, err := a.report(ctx, t, swarm.TaskStatus{State: state, Message: msg, Err: errText, ContainerStatus: cst}, nil); err != nil {
		a.log.Warn("task status", "task", t.ID, "err", err)
	}
}

// stop shuts a task's container down with its grace period (Swarm applies
// StopGracePeriod here, at stop time, and does not store it on the
// container; nil lets the engine use its default of 10 s).
func (a *Agent) stop(ctx context.Context, t *model.Task, containerID string) {
	if containerID != "" {
		if err := a.x.Stop(ctx, containerID, t.Spec.ContainerSpec.StopGracePeriod); err != nil {
			a.log.Warn("stopping task container", "task", t.ID, "err", err)
			return
		}
	}
	a.finish(ctx, t, swarm.TaskStateShutdown, "shutdown", "", t.Status.ContainerStatus)
}

// remove deletes a finished task's container and mount, then has the
// dispatcher delete its record.
func (a *Agent) remove(ctx context.Context, t *model.Task, containerID string) {
	if containerID != "" {
		if err := a.x.Remove(ctx, containerID); err != nil {
			a.log.Warn("removing task container", "task", t.ID, "err", err)
			return
		}
	}
	a.unmount(t.ID)
	a.mu.Lock()
	delete(a.started, t.ID)
	_, hadNets := a.taskNets[t.ID]
	delete(a.taskNets, t.ID)
	a.mu.Unlock()
	if hadNets && a.pruneNets {
		a.pruneNetworks(ctx)
	}
	if s := a.session(); s != nil {
		if err := s.RemoveTask(ctx, t.ID); err != nil {
			a.log.Warn("deleting task", "task", t.ID, "err", err)
		}
	}
}

// networks gives a task's networks, as the dispatcher describes them for
// this node to realise, in the spec's order, and the DNS aliases; the
// task counts as using them (pruneNetworks) from here to its removal.
func (a *Agent) networks(ctx context.Context, taskID string) ([]model.TaskNetwork, []string, error) {
	nets, aliases, err := a.session().Attachments(ctx, taskID)
	if err != nil {
		return nil, nil, err
	}
	if len(nets) == 0 {
		// Called only for a task with networks: none here is an answer
		// this agent cannot read (a manager of the former shape, which
		// gave engine network IDs), not the default network.
		return nil, nil, errors.New("the manager described none of the task's networks (a manager of another hushd version?)")
	}
	hushIDs := make([]string, 0, len(nets))
	for _, n := range nets {
		hushIDs = append(hushIDs, n.ID)
	}
	a.mu.Lock()
	a.taskNets[taskID] = hushIDs
	a.mu.Unlock()
	return nets, aliases, nil
}

// realise gives the engine networks realising nets on this node's engine,
// in their order, creating those that are missing.
func (a *Agent) realise(ctx context.Context, nets []model.TaskNetwork) ([]string, error) {
	ids := make([]string, 0, len(nets))
	for _, n := range nets {
		id, err := a.x.Network(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("network %s: %w", n.Name, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// pruneNetworks removes (on a worker) the engine networks no task of this
// node uses any more: a worker has no store to learn of a network's
// removal from, and a network stays on a node only while its tasks need
// it, as in Swarm.
func (a *Agent) pruneNetworks(ctx context.Context) {
	a.netMu.Lock()
	defer a.netMu.Unlock()
	keep := map[string]bool{}
	a.mu.Lock()
	for _, ids := range a.taskNets {
		for _, id := range ids {
			keep[id] = true
		}
	}
	a.mu.Unlock()
	if err := a.x.PruneNetworks(ctx, keep); err != nil {
		a.log.Warn("removing unused networks", "err", err)
	}
}

func (a *Agent) unmount(taskID string) {
	if err := a.x.UnmountSecrets(taskID); err != nil {
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
