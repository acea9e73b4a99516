// Package orchestrator turns services into tasks: it keeps one running task
// per replica slot (or per node for global services), runs jobs to their
// completions, places tasks on nodes (constraints, spread preferences,
// replicas per node, resource reservations), replaces tasks by the restart
// policy, rolls out spec changes by the update config, and prunes task
// history.
//
// It only writes desired states and new tasks; the agent owns task status.
// It never handles secret data.
package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// Orchestrator reconciles services and tasks.
type Orchestrator struct {
	svcs   *services.Manager
	mirror *store.Mirror
	tasks  *store.Table
	nodeID string
	log    *slog.Logger
	now    func() time.Time
	// engineLabels are this node's engine labels.
	engineLabels map[string]string
	// nanoCPUs and memoryBytes are what this node offers to reservations.
	nanoCPUs, memoryBytes int64
	// listNodes lists the nodes tasks may be placed on (nil: this node).
	listNodes func(context.Context) ([]*schedNode, error)
	// nodes (by ID in byNode) are the nodes of the current pass, charged
	// with the tasks placed on them; parsed memoises each service's
	// placement within the pass.
	nodes  []*schedNode
	byNode map[string]*schedNode
	// down are the nodes of the pass recorded Down: their tasks are
	// replaced elsewhere and no longer keep their slots busy.
	down   map[string]bool
	parsed map[string]parsedPlacement
	// lastBatch is when the last update batch of a service finished; the
	// update delay counts from it. Lost on restart, which only shortens
	// one delay.
	lastBatch map[string]time.Time
	settings  func() Settings
	// dataVersions reads the current secret and config versions; curData
	// holds them for the pass (keyed by model.DataKey).
	dataVersions DataVersions
	curData      map[string]int
	// lastMounts says whether the last pass saw a service mounting a
	// secret or config; mountsData whether the current wait watches them.
	lastMounts, mountsData bool
	// rotationSeen is when a pass first saw a service's rotation (see
	// startRotation); lost on restart, which only delays a status write.
	rotationSeen map[string]time.Time
	// rolledBack is the service a rotation rollback wrote in this pass.
	rolledBack string
	// leader, when set, is the leadership this orchestrator acts under:
	// every write it makes (tasks, service rollout status, rollbacks)
	// carries its guard, so a deposed leader's fail and change nothing.
	leader *store.Leadership
	// deposed is set once a write found the leadership over: later
	// writes fail at once with store.ErrDeposed, sending nothing, and Run
	// returns rather than retry what can only fail.
	deposed atomic.Bool
}

// SetLeadership makes every write carry l's guard (a manager of a cluster
// runs the orchestrator only while it leads). Call before Run.
func (o *Orchestrator) SetLeadership(l *store.Leadership) { o.leader = l }

// guards are the preconditions of the orchestrator's writes.
func (o *Orchestrator) guards() []store.Cond {
	if o.leader == nil {
		return nil
	}
	return []store.Cond{o.leader.Guard()}
}

// leaderWrite runs write with the leadership's guards. A failed guard is
// explained (store.Leadership.Explain): a lost race for the object is
// store.ErrStale, which the next pass decides again; a lost leadership is
// store.ErrDeposed, and no later write is sent.
func (o *Orchestrator) leaderWrite(ctx context.Context, write func(guards []store.Cond) error) error {
	if o.deposed.Load() {
		return store.ErrDeposed
	}
	err := write(o.guards())
	if o.leader != nil && errors.Is(err, store.ErrGuard) {
		err = o.leader.Explain(ctx, err)
		if errors.Is(err, store.ErrDeposed) {
			o.deposed.Store(true)
		}
	}
	return err
}

// setUpdateStatus records a service's rollout status as the leader.
func (o *Orchestrator) setUpdateStatus(ctx context.Context, svc *model.Service, st *swarm.UpdateStatus) error {
	return o.leaderWrite(ctx, func(guards []store.Cond) error {
		return o.svcs.SetUpdateStatus(ctx, svc, st, guards...)
	})
}

// New returns an orchestrator for the manager's node nodeID (hush runs one
// node per manager for now).
func New(st *store.Store, mir *store.Mirror, svcs *services.Manager, nodeID string, log *slog.Logger) *Orchestrator {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Orchestrator{
		svcs: svcs, mirror: mir, tasks: st.Table(model.TasksTable), nodeID: nodeID, log: log,
		now: func() time.Time { return time.Now().UTC() }, lastBatch: map[string]time.Time{},
	}
}

// SetEngineLabels gives the node's engine labels ("k=v"), which
// `engine.labels.*` placement constraints match. Call before Run.
func (o *Orchestrator) SetEngineLabels(labels []string) {
	o.engineLabels = map[string]string{}
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		o.engineLabels[k] = v
	}
}

// Run reconciles on every change to services, tasks or nodes, and at least
// every 500 ms so that delays (restart, update) elapse without a write to
// wake it.
func (o *Orchestrator) Run(ctx context.Context) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		// Secrets and configs wake it only while a service mounts one: a
		// rotation is all it looks for there, and without this every
		// secret create cost a pass.
		tables := []string{model.ServicesTable, model.TasksTable, "nodes"}
		if o.mountsData {
			tables = append(tables, "secrets", "configs")
		}
		changed := o.mirror.TableChanged(tables...)
		if err := o.Reconcile(ctx); err != nil && ctx.Err() == nil {
			if errors.Is(err, store.ErrDeposed) {
				// Its successor acts now; the caller campaigns again.
				o.log.Info("orchestrator: leadership lost, no longer acting")
				return
			}
			o.log.Warn("orchestrator pass failed", "err", err)
		}
		if !o.mountsData && o.lastMounts {
			// The pass found the first mount: watch data from now on.
			o.mountsData = true
			continue
		}
		o.mountsData = o.lastMounts
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

// Reconcile makes one pass over all services.
func (o *Orchestrator) Reconcile(ctx context.Context) error {
	svcs, tasks, err := o.svcs.Snapshot(ctx)
	if err != nil {
		return err
	}
	if err := o.loadNodes(ctx, tasks); err != nil {
		return err
	}
	if err := o.loadDataVersions(ctx, svcs); err != nil {
		return err
	}
	o.rolledBack = ""
	byService := map[string][]*model.Task{}
	for _, t := range tasks {
		byService[t.ServiceID] = append(byService[t.ServiceID], t)
	}
	var errs []error
	live := map[string]bool{}
	for _, s := range svcs {
		live[s.ID] = true
		if err := o.reconcileService(ctx, s, byService[s.ID]); err != nil {
			errs = append(errs, fmt.Errorf("service %s: %w", s.ID, err))
		}
	}
	// Tasks of removed services are handed to the agent for removal; a
	// drained node stops all of its tasks.
	byID := map[string]*model.Service{}
	for _, s := range svcs {
		byID[s.ID] = s
	}
	for _, t := range tasks {
		if t.NodeID == "" && !wanted(t) {
			// No agent owns an unplaced task: retire it here.
			errs = append(errs, o.retireUnplaced(ctx, t))
			continue
		}
		if svc := byID[t.ServiceID]; svc != nil && model.Runs(t.DesiredState) {
			switch {
			case o.down[t.NodeID]:
				// Its node is down: as in Swarm, the task is shut down
				// (its agent stops it if the node comes back) and its slot
				// gets a task on another node at once.
				errs = append(errs, o.setDesired(ctx, t, swarm.TaskStateShutdown))
				continue
			case t.NodeID == "":
				// Waiting for a node: place it if one can take it now.
				errs = append(errs, o.placePending(ctx, svc, t))
				continue
			case model.Unscheduled(t) && o.mayStay(svc, t.NodeID):
				// A global task waiting for room on its node.
				errs = append(errs, o.placeOnNode(ctx, svc, t))
				continue
			case !model.Terminal(t.Status.State) && !o.mayStay(svc, t.NodeID):
				// Drained, or its constraints no longer hold: stop it; the
				// slot gets a pending task instead.
				errs = append(errs, o.setDesired(ctx, t, swarm.TaskStateShutdown))
				continue
			}
		}
		if !live[t.ServiceID] && t.DesiredState != swarm.TaskStateRemove {
			errs = append(errs, o.setDesired(ctx, t, swarm.TaskStateRemove))
		}
	}
	return errors.Join(errs...)
}

// olderTask orders tasks by creation: time, then store revision for tasks
// made within one clock tick.
func olderTask(a, b *model.Task) bool {
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return a.CreatedAt.Before(b.CreatedAt)
	}
	return a.CreateIndex < b.CreateIndex
}

// slotKey identifies a replica slot, or a node for global services.
func slotKey(t *model.Task) string {
	if t.Slot != 0 {
		return strconv.Itoa(t.Slot)
	}
	return "node:" + t.NodeID
}

type slot struct {
	key   string
	num   int
	tasks []*model.Task // oldest first
}

// desired returns the tasks the orchestrator wants running in the slot.
func (s *slot) desired() []*model.Task {
	var out []*model.Task
	for _, t := range s.tasks {
		if wanted(t) {
			out = append(out, t)
		}
	}
	return out
}

// wanted reports whether the orchestrator wants t to run: now (a job's
// task: until it completes), or (desired state "ready") once its restart
// delay is over.
func wanted(t *model.Task) bool {
	return model.Runs(t.DesiredState) || t.DesiredState == swarm.TaskStateReady
}

// busy reports whether a task of the slot is still alive (not terminal).
// A task on a down node is not waited for: nothing will report its end.
func (o *Orchestrator) busy(s *slot) bool {
	for _, t := range s.tasks {
		if !model.Terminal(t.Status.State) && !o.down[t.NodeID] {
			return true
		}
	}
	return false
}

func (o *Orchestrator) reconcileService(ctx context.Context, svc *model.Service, tasks []*model.Task) error {
	spec := &svc.Spec
	if services.IsJob(spec) {
		return o.reconcileJob(ctx, svc, tasks)
	}
	hash := model.TemplateHash(spec)
	slots := map[string]*slot{}
	for _, t := range tasks {
		k := slotKey(t)
		if slots[k] == nil {
			slots[k] = &slot{key: k, num: t.Slot}
		}
		slots[k].tasks = append(slots[k].tasks, t)
	}
	for _, s := range slots {
		sort.Slice(s.tasks, func(i, j int) bool { return olderTask(s.tasks[i], s.tasks[j]) })
	}
	// The slots the service wants.
	want := map[string]int{}
	if spec.Mode.Global != nil {
		// One slot per node; a node that cannot take the service gets no
		// task (createTask), and its old tasks stay as history.
		for _, n := range o.nodes {
			want["node:"+n.node.ID] = 0
		}
	} else {
		n := 1
		if spec.Mode.Replicated != nil && spec.Mode.Replicated.Replicas != nil {
			n = int(*spec.Mode.Replicated.Replicas)
		}
		for i := 1; i <= n; i++ {
			want[strconv.Itoa(i)] = i
		}
	}
	var errs []error
	// Scale down: slots no longer wanted go away with their history, as in
	// Swarm (the agent stops the containers, then deletes the tasks).
	for k, s := range slots {
		if _, ok := want[k]; ok {
			continue
		}
		if id, ok := strings.CutPrefix(k, "node:"); ok && o.down[id] {
			// A global task of a down node is shut down (Reconcile), not
			// removed: the node may come back, and its history stays.
			continue
		}
		for _, t := range s.tasks {
			errs = append(errs, o.setDesired(ctx, t, swarm.TaskStateRemove))
		}
	}
	uc := updateConfig(svc)
	ro := &rolloutPass{overRatio: failuresOverRatio(svc, uc, slots, want, hash)}
	inflight, outdated := 0, []*slot{}
	updating, specChanged, reloading := false, false, false
	rotated := ""
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return want[keys[i]] < want[keys[j]] || want[keys[i]] == want[keys[j]] && keys[i] < keys[j]
	})
	for _, k := range keys {
		s := slots[k]
		if s == nil {
			s = &slot{key: k, num: want[k]}
			slots[k] = s
		}
		d := s.desired()
		switch {
		case len(d) == 0:
			// Nothing wanted running: start one, once the old task is gone
			// (stop-first), or at once (start-first, or a fresh slot).
			if !o.busy(s) || uc.Order == swarm.UpdateOrderStartFirst {
				errs = append(errs, o.createTask(ctx, svc, s))
			}
			if len(s.tasks) > 0 {
				inflight++
			}
		default:
			cur := d[len(d)-1]
			if o.down[cur.NodeID] && model.Runs(cur.DesiredState) {
				// Its node is down: restarted elsewhere at once, as
				// Swarm's restart supervisor does (Reconcile shuts down
				// any older task of the slot there).
				errs = append(errs, o.restartDown(ctx, svc, s, cur))
				continue
			}
			if cur.DesiredState == swarm.TaskStateReady {
				// A restart waiting out its delay.
				if !o.now().Before(cur.NotBefore) {
					errs = append(errs, o.setDesired(ctx, cur, swarm.TaskStateRunning))
				}
				continue
			}
			if len(d) > 1 {
				if model.Terminal(cur.Status.State) {
					// start-first and the new task died: the restart policy
					// and the update's failure action apply to it.
					errs = append(errs, o.restart(ctx, svc, s, cur, ro))
					inflight++
					continue
				}
				// start-first: retire the older ones once the newest runs.
				if cur.Status.State == swarm.TaskStateRunning {
					for _, t := range d[:len(d)-1] {
						errs = append(errs, o.setDesired(ctx, t, swarm.TaskStateShutdown))
					}
				}
				inflight++
				continue
			}
			if model.Terminal(cur.Status.State) {
				errs = append(errs, o.restart(ctx, svc, s, cur, ro))
				continue
			}
			why, stale := o.dataOutdated(svc, cur)
			if inPlace, _ := cur.ReloadsInPlace(); inPlace && cur.TemplateHash == hash {
				// reload / signal: the task takes the new versions where it
				// runs; the agent swaps them in (rotation.go).
				if stale {
					reloading = true
					if rotated == "" {
						rotated = why
					}
					if cur.Status.State == swarm.TaskStateRunning {
						errs = append(errs, o.requestReload(ctx, svc, cur))
					}
					inflight++
					continue
				}
				if !model.SameVersions(cur.DataVersions, cur.LoadedVersions) && cur.Status.State == swarm.TaskStateRunning {
					reloading = true
					if rotated == "" {
						rotated = "reload of new versions"
					}
					inflight++
					continue
				}
			}
			if cur.TemplateHash != hash || stale {
				outdated = append(outdated, s)
				updating = true
				if cur.TemplateHash != hash {
					specChanged = true
				} else if rotated == "" {
					rotated = why
				}
			} else if cur.Status.State != swarm.TaskStateRunning && svc.UpdateStatus != nil && svc.UpdateStatus.State == swarm.UpdateStateUpdating {
				inflight++
			}
		}
	}
	if !updating && !reloading {
		delete(o.rotationSeen, svc.ID)
	}
	if (updating || reloading) && !specChanged && rotated != "" {
		started, err := o.startRotation(ctx, svc, rotated)
		errs = append(errs, err)
		if !started {
			// A restart rollout begins once its status is shown, so that
			// a failure is the update's (failure action) from the start.
			outdated = nil
		}
	}
	errs = append(errs, o.rollout(ctx, svc, uc, outdated, inflight))
	// Like Swarm, an update is complete only once the last new task has run
	// for the monitor period; clients (the docker CLI) wait for both.
	if !updating && !reloading && inflight == 0 && !ro.statusSet && o.rolledBack != svc.ID && o.now().Sub(lastStart(slots)) >= monitorOf(uc) {
		errs = append(errs, o.finishUpdate(ctx, svc))
	}
	for _, s := range slots {
		errs = append(errs, o.prune(ctx, svc, s))
	}
	return errors.Join(errs...)
}

// lastStart is when the most recently started task meant to run began.
func lastStart(slots map[string]*slot) time.Time {
	var last time.Time
	for _, s := range slots {
		for _, t := range s.desired() {
			if t.Status.State == swarm.TaskStateRunning && t.Status.Timestamp.After(last) {
				last = t.Status.Timestamp
			}
		}
	}
	return last
}

func monitorOf(uc swarm.UpdateConfig) time.Duration {
	if uc.Monitor == 0 {
		return 5 * time.Second
	}
	return uc.Monitor
}

// updateConfig is the config of the rollout in progress: the rollback
// config while rolling back, else the update config, each with Swarm's
// defaults when the spec has none (a rollback does not borrow the update
// config).
func updateConfig(svc *model.Service) swarm.UpdateConfig {
	uc := swarm.UpdateConfig{Parallelism: 1, Order: swarm.UpdateOrderStopFirst, FailureAction: swarm.UpdateFailureActionPause}
	src := svc.Spec.UpdateConfig
	if rollingBack(svc) {
		src = svc.Spec.RollbackConfig
	}
	if src != nil {
		uc = *src
		if uc.Order == "" {
			uc.Order = swarm.UpdateOrderStopFirst
		}
	}
	return uc
}

// rollout moves up to Parallelism outdated slots onto the new spec.
func (o *Orchestrator) rollout(ctx context.Context, svc *model.Service, uc swarm.UpdateConfig, outdated []*slot, inflight int) error {
	if len(outdated) == 0 {
		return nil
	}
	if st := svc.UpdateStatus; st != nil && (st.State == swarm.UpdateStatePaused || st.State == swarm.UpdateStateRollbackPaused) {
		return nil
	}
	par := int(uc.Parallelism)
	if par == 0 {
		par = len(outdated)
	}
	if inflight >= par {
		return nil
	}
	if inflight == 0 {
		if last, ok := o.lastBatch[svc.ID]; ok && o.now().Sub(last) < uc.Delay {
			return nil
		}
	}
	var errs []error
	for _, s := range outdated[:min(par-inflight, len(outdated))] {
		old := s.desired()[0]
		if uc.Order == swarm.UpdateOrderStartFirst {
			errs = append(errs, o.createTask(ctx, svc, s))
		} else {
			errs = append(errs, o.setDesired(ctx, old, swarm.TaskStateShutdown))
		}
	}
	o.lastBatch[svc.ID] = o.now()
	return errors.Join(errs...)
}

// finishUpdate marks a rollout complete once every slot runs the new spec.
func (o *Orchestrator) finishUpdate(ctx context.Context, svc *model.Service) error {
	st := svc.UpdateStatus
	if st == nil {
		return nil
	}
	now := o.now()
	switch st.State {
	case swarm.UpdateStateUpdating:
		return o.setUpdateStatus(ctx, svc, &swarm.UpdateStatus{State: swarm.UpdateStateCompleted, StartedAt: st.StartedAt, CompletedAt: &now, Message: "update completed"})
	case swarm.UpdateStateRollbackStarted:
		return o.setUpdateStatus(ctx, svc, &swarm.UpdateStatus{State: swarm.UpdateStateRollbackCompleted, StartedAt: st.StartedAt, CompletedAt: &now, Message: "rollback completed"})
	}
	return nil
}

func rollingBack(svc *model.Service) bool {
	return svc.UpdateStatus != nil && svc.UpdateStatus.State == swarm.UpdateStateRollbackStarted
}

// rollingOut reports whether an update or a rollback is in progress.
func rollingOut(svc *model.Service) bool {
	return svc.UpdateStatus != nil && (svc.UpdateStatus.State == swarm.UpdateStateUpdating || rollingBack(svc))
}

// failuresOverRatio reports whether the rollout in progress has more
// failed slots than its MaxFailureRatio allows, counted as Swarm's updater
// counts them: slots whose task made by this rollout (the current
// template, created since it started) failed, over the slots it updates
// (those, and those still running the old template). A slot counts once
// however often its replacements fail.
func failuresOverRatio(svc *model.Service, uc swarm.UpdateConfig, slots map[string]*slot, want map[string]int, hash string) bool {
	if !rollingOut(svc) || svc.UpdateStatus.StartedAt == nil {
		return false
	}
	started := *svc.UpdateStatus.StartedAt
	failed, dirty := 0, 0
	for k := range want {
		s := slots[k]
		if s == nil {
			continue
		}
		isDirty, isFailed := false, false
		for _, t := range s.tasks {
			switch {
			case t.TemplateHash != hash:
				isDirty = isDirty || wanted(t) && !model.Terminal(t.Status.State)
			case !t.CreatedAt.Before(started):
				isDirty = true
				isFailed = isFailed || failedState(t.Status.State)
			}
		}
		if isDirty {
			dirty++
		}
		if isFailed {
			failed++
		}
	}
	if dirty == 0 {
		return failed > 0
	}
	return float64(failed)/float64(dirty) > float64(uc.MaxFailureRatio)
}

// rolloutPass is what one pass over a service knows of its rollout.
type rolloutPass struct {
	// overRatio: the rollout's failures exceed its MaxFailureRatio.
	overRatio bool
	// statusSet: the pass applied the failure action, which wrote the
	// service; its copy in hand is stale.
	statusSet bool
}

// restart applies the restart policy to a slot whose task ended by itself.
// During a rollout, a failed task of the new template counts against the
// rollout's MaxFailureRatio, and the failure action applies once the
// failures exceed it.
func (o *Orchestrator) restart(ctx context.Context, svc *model.Service, s *slot, dead *model.Task, ro *rolloutPass) error {
	rp := restartPolicyOf(svc)
	failed := dead.Status.State != swarm.TaskStateComplete
	if dead.TemplateHash == model.TemplateHash(&svc.Spec) && failed && rollingOut(svc) && ro.overRatio && !ro.statusSet {
		if err := o.updateFailed(ctx, svc, dead); err != nil {
			return err
		}
		ro.statusSet = updateConfig(svc).FailureAction != swarm.UpdateFailureActionContinue
	}
	switch {
	case rp.cond == swarm.RestartPolicyConditionNone:
		return nil
	case rp.cond == swarm.RestartPolicyConditionOnFailure && !failed:
		return nil
	}
	// Restarts are counted on the task lineage itself (each replacement
	// carries its predecessors' restart times), since the task history in
	// the store is pruned to a few tasks per slot.
	if rp.exhausted(dead, o.now()) {
		return nil
	}
	// As in Swarm, the replacement exists at once and waits out the delay
	// with desired state "ready".
	if err := o.setDesired(ctx, dead, swarm.TaskStateShutdown); err != nil {
		return err
	}
	return o.createTaskAfter(ctx, svc, s, append(trimRestarts(dead.Restarts), o.now()), dead.Status.Timestamp.Add(rp.delay))
}

// restartDown replaces the task of a down node as Swarm does: whatever the
// restart condition and attempts, the task is shut down (kept as history;
// its agent stops it if the node returns) and its replacement exists at
// once, on another node, waiting out the restart delay from now; the
// restart counts in the lineage.
func (o *Orchestrator) restartDown(ctx context.Context, svc *model.Service, s *slot, t *model.Task) error {
	if err := o.setDesired(ctx, t, swarm.TaskStateShutdown); err != nil {
		return err
	}
	now := o.now()
	return o.createTaskAfter(ctx, svc, s, append(trimRestarts(t.Restarts), now), now.Add(restartPolicyOf(svc).delay))
}

// restartPolicy is a service's restart policy with Swarm's defaults.
type restartPolicy struct {
	cond        swarm.RestartPolicyCondition
	delay       time.Duration
	maxAttempts uint64
	window      time.Duration
}

func restartPolicyOf(svc *model.Service) restartPolicy {
	p := restartPolicy{cond: swarm.RestartPolicyConditionAny, delay: 5 * time.Second}
	if rp := svc.Spec.TaskTemplate.RestartPolicy; rp != nil {
		if rp.Condition != "" {
			p.cond = rp.Condition
		}
		if rp.Delay != nil {
			p.delay = *rp.Delay
		}
		if rp.MaxAttempts != nil {
			p.maxAttempts = *rp.MaxAttempts
		}
		if rp.Window != nil {
			p.window = *rp.Window
		}
	}
	return p
}

// exhausted reports whether dead's lineage has used up its restarts.
func (p restartPolicy) exhausted(dead *model.Task, now time.Time) bool {
	return p.maxAttempts > 0 && uint64(restartsWithin(dead.Restarts, p.window, now)) >= p.maxAttempts
}

// restartsWithin counts restarts in the window (all of them when 0).
func restartsWithin(times []time.Time, window time.Duration, now time.Time) int {
	if window == 0 {
		return len(times)
	}
	n := 0
	for _, t := range times {
		if now.Sub(t) <= window {
			n++
		}
	}
	return n
}

// trimRestarts bounds the history a task carries.
func trimRestarts(times []time.Time) []time.Time {
	const keep = 64
	if len(times) > keep {
		return append([]time.Time(nil), times[len(times)-keep:]...)
	}
	return times
}

// updateFailed applies the rollout's failure action. A rollback is never
// rolled back: its action "rollback" pauses it, as in Swarm.
func (o *Orchestrator) updateFailed(ctx context.Context, svc *model.Service, dead *model.Task) error {
	uc := updateConfig(svc)
	now := o.now()
	switch {
	case uc.FailureAction == swarm.UpdateFailureActionContinue:
		return nil
	case rollingBack(svc):
		o.log.Warn("rollback failed, pausing it", "service", svc.Spec.Name, "task", dead.ID)
		return o.setUpdateStatus(ctx, svc, &swarm.UpdateStatus{
			State: swarm.UpdateStateRollbackPaused, StartedAt: svc.UpdateStatus.StartedAt, CompletedAt: &now,
			Message: fmt.Sprintf("rollback paused due to failure or early termination of task %s", dead.ID),
		})
	case uc.FailureAction == swarm.UpdateFailureActionRollback && isRotation(svc.UpdateStatus):
		// The spec did not change: the way back is the previous versions
		// (rotation.go); with none, the rollout pauses.
		if ok, err := o.rollBackRotation(ctx, svc, dead); ok || err != nil {
			return err
		}
	case uc.FailureAction == swarm.UpdateFailureActionRollback:
		if svc.PreviousSpec == nil {
			break
		}
		o.log.Warn("update failed, rolling back", "service", svc.Spec.Name, "task", dead.ID)
		return o.leaderWrite(ctx, func(guards []store.Cond) error {
			return o.svcs.Update(ctx, svc.ID, swarm.ServiceSpec{}, services.UpdateOptions{Version: svc.Version.Index, Rollback: true, Guards: guards})
		})
	}
	return o.setUpdateStatus(ctx, svc, &swarm.UpdateStatus{
		State: swarm.UpdateStatePaused, StartedAt: svc.UpdateStatus.StartedAt, CompletedAt: &now,
		Message: fmt.Sprintf("update paused due to failure or early termination of task %s", dead.ID),
	})
}

// prune keeps at most TaskHistoryRetentionLimit tasks per slot, deleting
// the oldest finished ones; the agent removes their containers.
func (o *Orchestrator) prune(ctx context.Context, svc *model.Service, s *slot) error {
	limit := o.historyLimit()
	if limit < 0 {
		return nil
	}
	if limit < 1 && services.IsJob(&svc.Spec) {
		// A job slot's newest task is its record: completed (never run
		// again) or given up (never retried). Swarm never prunes job tasks.
		limit = 1
	}
	var errs []error
	for i := 0; len(s.tasks)-i > limit && i < len(s.tasks); i++ {
		t := s.tasks[i]
		if t.DesiredState == swarm.TaskStateRunning || !model.Terminal(t.Status.State) {
			continue
		}
		if t.DesiredState != swarm.TaskStateRemove {
			errs = append(errs, o.setDesired(ctx, t, swarm.TaskStateRemove))
		}
	}
	return errors.Join(errs...)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// createTask adds a task to slot s. A task that cannot be placed waits,
// unassigned and pending with the reason, as in Swarm; global services
// simply have no task on a node they cannot use, and wait on their node
// for the resources or room they lack there.
func (o *Orchestrator) createTask(ctx context.Context, svc *model.Service, s *slot) error {
	return o.createTaskAfter(ctx, svc, s, nil, time.Time{})
}

// createTaskAfter is createTask for a replacement that inherits the restart
// history of the task it replaces.
func (o *Orchestrator) createTaskAfter(ctx context.Context, svc *model.Service, s *slot, restarts []time.Time, notBefore time.Time) error {
	var node *schedNode
	var why string
	if id, ok := strings.CutPrefix(s.key, "node:"); ok {
		node = o.byNode[id]
		if node == nil || !o.eligible(svc, node) {
			return nil
		}
		if f := o.check(svc, node); f >= 0 {
			// Swarm words this without "no suitable node (...)".
			why = explain(f, 1)
		}
	} else {
		node, why = o.pick(svc)
	}
	id, err := identity.NewID()
	if err != nil {
		return err
	}
	now := o.now()
	t := model.Task{TemplateHash: model.TemplateHash(&svc.Spec), ServiceName: svc.Spec.Name}
	t.ID = id
	t.CreatedAt, t.UpdatedAt = now, now
	t.Labels = map[string]string{}
	t.Spec = svc.Spec.TaskTemplate
	if t.Spec.LogDriver == nil {
		t.Spec.LogDriver = o.current().LogDriver
	}
	if svc.Spec.EndpointSpec != nil {
		t.Ports = svc.Spec.EndpointSpec.Ports
	}
	t.ServiceID = svc.ID
	t.DataVersions = o.wantVersions(svc)
	t.RotateMode = svc.Spec.Labels[model.RotateLabel]
	t.Restarts = restarts
	t.Slot = s.num
	t.NodeID = node.nodeID()
	t.DesiredState = swarm.TaskStateRunning
	if services.IsJob(&svc.Spec) {
		// A job's task runs until it completes, in the job's iteration.
		t.DesiredState = swarm.TaskStateComplete
		t.JobIteration = &swarm.Version{Index: jobIteration(svc)}
	}
	t.Status = swarm.TaskStatus{Timestamp: now, State: swarm.TaskStateAssigned, Message: "assigned"}
	if now.Before(notBefore) {
		t.DesiredState, t.NotBefore = swarm.TaskStateReady, notBefore
		t.Status = swarm.TaskStatus{Timestamp: now, State: swarm.TaskStateReady, Message: "restart delayed"}
	}
	if why != "" {
		// A replicated task has no node yet; a global one waits on its own.
		t.Status = swarm.TaskStatus{Timestamp: now, State: swarm.TaskStatePending, Message: model.MsgPendingScheduling, Err: why}
	}
	val, err := json.Marshal(&t)
	if err != nil {
		return err
	}
	if err := o.leaderWrite(ctx, func(guards []store.Cond) error {
		_, err := o.tasks.CreateGuarded(ctx, id, "", val, guards)
		return err
	}); err != nil {
		return err
	}
	s.tasks = append(s.tasks, &t)
	o.charge(&t)
	return nil
}

// retireUnplaced ends a task that was never placed: shut down, or deleted
// once it is to be removed.
func (o *Orchestrator) retireUnplaced(ctx context.Context, t *model.Task) error {
	if t.DesiredState == swarm.TaskStateRemove {
		return ignoreRace(o.leaderWrite(ctx, func(guards []store.Cond) error {
			return o.tasks.Delete(ctx, t.ID, "", int64(t.Version.Index), guards)
		}))
	}
	if model.Terminal(t.Status.State) {
		return nil
	}
	return o.writeTask(ctx, t, func(n *model.Task) {
		n.Status = swarm.TaskStatus{Timestamp: n.UpdatedAt, State: swarm.TaskStateShutdown, Message: "shutdown"}
	})
}

// placePending places a task that waits for a node, or records a new
// reason when why it waits has changed.
func (o *Orchestrator) placePending(ctx context.Context, svc *model.Service, t *model.Task) error {
	node, why := o.pick(svc)
	if node == nil {
		return o.setWaiting(ctx, t, why)
	}
	return o.assign(ctx, t, node)
}

// placeOnNode assigns a global task waiting for room on its own node once
// the node has it.
func (o *Orchestrator) placeOnNode(ctx context.Context, svc *model.Service, t *model.Task) error {
	node := o.byNode[t.NodeID]
	if node == nil {
		return nil
	}
	if f := o.check(svc, node); f >= 0 {
		return o.setWaiting(ctx, t, explain(f, 1))
	}
	return o.assign(ctx, t, node)
}

// setWaiting records why a pending task still waits, if that changed.
func (o *Orchestrator) setWaiting(ctx context.Context, t *model.Task, why string) error {
	if t.Status.Err == why {
		return nil
	}
	return o.writeTask(ctx, t, func(n *model.Task) {
		n.Status = swarm.TaskStatus{Timestamp: n.UpdatedAt, State: swarm.TaskStatePending, Message: model.MsgPendingScheduling, Err: why}
	})
}

// assign places a pending task on node.
func (o *Orchestrator) assign(ctx context.Context, t *model.Task, node *schedNode) error {
	var placed *model.Task
	err := o.writeTask(ctx, t, func(n *model.Task) {
		n.NodeID = node.node.ID
		n.Status = swarm.TaskStatus{Timestamp: n.UpdatedAt, State: swarm.TaskStateAssigned, Message: "assigned"}
		placed = n
	})
	if err == nil && placed != nil {
		o.charge(placed)
	}
	return err
}

func (o *Orchestrator) setDesired(ctx context.Context, t *model.Task, state swarm.TaskState) error {
	if t.DesiredState == state {
		return nil
	}
	return o.writeTask(ctx, t, func(n *model.Task) { n.DesiredState = state })
}

// writeTask writes a changed copy of t if t is still current. Losing the
// race to the agent (or to a removal) is not an error: the next pass sees
// the newer task and decides again.
func (o *Orchestrator) writeTask(ctx context.Context, t *model.Task, change func(*model.Task)) error {
	next := *t
	next.UpdatedAt = o.now()
	change(&next)
	val, err := json.Marshal(&next)
	if err != nil {
		return err
	}
	return ignoreRace(o.leaderWrite(ctx, func(guards []store.Cond) error {
		_, err := o.tasks.UpdateGuarded(ctx, t.ID, int64(t.Version.Index), val, guards)
		return err
	}))
}

func ignoreRace(err error) error {
	if errors.Is(err, store.ErrStale) || errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}
