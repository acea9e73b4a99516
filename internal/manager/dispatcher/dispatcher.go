// Package dispatcher is a node's only channel to the managers: it streams
// a node its assignments (its tasks and the secret and config data they
// hold), takes its task status reports and writes them to the store, and
// answers what else the node's agent needs of the cluster (network
// attachments, registry credentials for a pull) for its own tasks.
//
// A node is known by the identity its session was opened with (the
// transport will take it from the node's TLS certificate); nothing a node
// sends names a node, and every call is checked against the task's
// assignment in the store: a node sees and changes only its own tasks,
// receives data only for tasks that should run, only the versions they
// hold, and a task's state only moves forward.
//
// It hands plaintext to its caller in memory only. It must never log data,
// and never answer for a task of another node.
package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// DataSource opens version n of an object's data by exact ID, with the
// name of its templating driver ("" when it is not templated).
type DataSource interface {
	ContentVersion(ctx context.Context, id string, n int) (data []byte, templating string, err error)
}

// TaskSource gives a consistent (linearizable) view of services and tasks.
type TaskSource interface {
	Snapshot(ctx context.Context) ([]*model.Service, []*model.Task, error)
}

// Changes wakes sessions when tables change (the store mirror).
type Changes interface {
	TableChanged(kinds ...string) <-chan struct{}
}

// TaskTable reads and writes task records (the store's tasks table).
type TaskTable interface {
	Get(ctx context.Context, id string) (store.Object, error)
	Update(ctx context.Context, id string, rev int64, val []byte, extra ...store.Op) (int64, error)
	Delete(ctx context.Context, id, name string, rev int64, guards []store.Cond, extra ...store.Op) error
}

// NetworkAttacher gives the networks and DNS aliases of a task's network
// attachments, for the task's node to realise on its own engine
// (networks.Manager implements it).
type NetworkAttacher interface {
	TaskNetworks(ctx context.Context, nets []swarm.NetworkAttachmentConfig, serviceName string) ([]model.TaskNetwork, []string, error)
}

// PullAuth gives the registry credentials a service was given with
// --with-registry-auth (nil when none); the caller wipes them.
type PullAuth interface {
	RegistryAuth(ctx context.Context, serviceID string) ([]byte, error)
}

// Config wires a dispatcher.
type Config struct {
	Tasks   TaskSource
	Changes Changes
	Table   TaskTable
	Secrets DataSource
	Configs DataSource
	// Networks resolves attachments; nil: tasks with networks are refused.
	Networks NetworkAttacher
	// PullAuth gives registry credentials; nil: pulls go without.
	PullAuth PullAuth
	Logger   *slog.Logger
	Now      func() time.Time
}

// Dispatcher serves node sessions.
type Dispatcher struct {
	c   Config
	log *slog.Logger

	mu      sync.Mutex
	repeats map[string]repeatBucket // by node (chargeRepeat)
}

// New returns a dispatcher.
func New(c Config) *Dispatcher {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = func() time.Time { return time.Now().UTC() }
	}
	return &Dispatcher{c: c, log: c.Logger, repeats: map[string]repeatBucket{}}
}

// Open starts a session for node nodeID. The caller vouches for the
// identity (the transport takes it from the node's certificate); every
// call of the session acts for that node only.
func (d *Dispatcher) Open(_ context.Context, nodeID string) (*Session, error) {
	if nodeID == "" {
		return nil, errdefs.Unauthorized("a session needs a node identity")
	}
	return &Session{d: d, node: nodeID, log: d.log.With("node", nodeID)}, nil
}

// Session is one node's session. Next is called by one goroutine at a
// time; the other calls may run concurrently.
type Session struct {
	d    *Dispatcher
	node string
	log  *slog.Logger

	mu      sync.Mutex
	started bool
	// sentTasks and sentLabels are what the node was last sent of each
	// task; sentData the versions it holds.
	sentTasks  map[string]uint64
	sentLabels map[string]map[string]string
	sentData   map[model.DataRef]bool
}

// repeatBucket is a node's budget of same-state reports.
type repeatBucket struct {
	tokens float64
	at     time.Time
}

// maxRepeatBuckets bounds the nodes whose budgets are kept; past it, the
// full ones (nodes that have not repeated lately) are forgotten.
const maxRepeatBuckets = 1 << 16

// chargeRepeat takes one same-state report from the node's budget (kept
// per node, not per session: a new session must not refill it), or
// refuses it: a state only moves forward, so the transitions a node can
// report are bounded by its tasks, but a repeat (a new message, container
// or loaded versions) was a store write each, and each write wakes every
// session's diff. An agent repeats a state once per engine outage, start
// or reload of a task, far below the budget; a refused one is retried.
func (s *Session) chargeRepeat(taskID string) error {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.c.Now()
	refill := func(b repeatBucket) repeatBucket {
		if el := now.Sub(b.at); el > 0 {
			b.tokens = min(b.tokens+float64(el)/float64(repeatEvery), repeatBurst)
			b.at = now
		}
		return b
	}
	b, ok := d.repeats[s.node]
	if !ok {
		if len(d.repeats) >= maxRepeatBuckets {
			for n, ob := range d.repeats {
				if refill(ob).tokens >= repeatBurst {
					delete(d.repeats, n)
				}
			}
		}
		b = repeatBucket{tokens: repeatBurst, at: now}
	}
	b = refill(b)
	if b.tokens < 1 {
		d.repeats[s.node] = b
		return errdefs.Unavailable("task %s: this node repeated task states more than %d times at once and once every %s: retry later", taskID, repeatBurst, repeatEvery)
	}
	b.tokens--
	d.repeats[s.node] = b
	return nil
}

// NodeID is the session's node.
func (s *Session) NodeID() string { return s.node }

// Next returns the node's next assignments message: the full set on the
// first call, then, blocking until something changes, increments. The
// caller owns (and wipes) the data in the message.
func (s *Session) Next(ctx context.Context) (model.Assignments, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		// Taken before the read, so a change during it is not missed.
		changed := s.d.c.Changes.TableChanged(model.TasksTable, model.ServicesTable)
		m, err := s.diff(ctx)
		if err != nil {
			return model.Assignments{}, err
		}
		if m.Full || len(m.Tasks)+len(m.RemovedTasks)+len(m.Data)+len(m.RemovedData) > 0 {
			return m, nil
		}
		select {
		case <-ctx.Done():
			return model.Assignments{}, ctx.Err()
		case <-changed:
		}
	}
}

// assigned reports whether the node is given t: tasks placed on it, not
// those that name it while they wait for room there (the orchestrator
// assigns them).
func (s *Session) assigned(t *model.Task) bool {
	return t.NodeID == s.node && !model.Unscheduled(t) && !model.Before(t.Status.State, swarm.TaskStatePending)
}

// needsData reports whether t should hold its data on the node: while it
// should run and has not ended.
func needsData(t *model.Task) bool {
	return model.Runs(t.DesiredState) && !model.Terminal(t.Status.State)
}

// refs lists the versions of the objects t mounts as files.
func refs(t *model.Task) []model.DataRef {
	cs := t.Spec.ContainerSpec
	if cs == nil {
		return nil
	}
	var out []model.DataRef
	for _, r := range cs.Secrets {
		if r != nil && r.File != nil {
			out = append(out, model.DataRef{Kind: "secret", ID: r.SecretID, Version: t.HeldVersion("secret", r.SecretID)})
		}
	}
	for _, r := range cs.Configs {
		if r != nil && r.File != nil {
			out = append(out, model.DataRef{Kind: "config", ID: r.ConfigID, Version: t.HeldVersion("config", r.ConfigID)})
		}
	}
	return out
}

func (s *Session) diff(ctx context.Context) (model.Assignments, error) {
	svcs, all, err := s.d.c.Tasks.Snapshot(ctx)
	if err != nil {
		return model.Assignments{}, err
	}
	labels := map[string]map[string]string{}
	for _, sv := range svcs {
		labels[sv.ID] = sv.Spec.Labels
	}
	var m model.Assignments
	full := !s.started
	if full {
		m.Full = true
		s.sentTasks, s.sentLabels, s.sentData = map[string]uint64{}, map[string]map[string]string{}, map[model.DataRef]bool{}
	}
	mine := map[string]bool{}
	want := map[model.DataRef]bool{}
	names := map[model.DataRef]string{}
	for _, t := range all {
		if !s.assigned(t) {
			continue
		}
		mine[t.ID] = true
		if needsData(t) {
			for _, r := range refs(t) {
				want[r] = true
				names[r] = refName(t, r)
			}
		}
		l := labels[t.ServiceID]
		if v, ok := s.sentTasks[t.ID]; ok && v == t.Version.Index && maps.Equal(s.sentLabels[t.ID], l) {
			continue
		}
		c, err := clone(t)
		if err != nil {
			return model.Assignments{}, err
		}
		m.Tasks = append(m.Tasks, model.AssignedTask{Task: c, ServiceLabels: maps.Clone(l)})
	}
	for id := range s.sentTasks {
		if !mine[id] {
			m.RemovedTasks = append(m.RemovedTasks, id)
		}
	}
	for r := range want {
		if s.sentData[r] {
			continue
		}
		src := s.d.c.Secrets
		if r.Kind == "config" {
			src = s.d.c.Configs
		}
		b, tmpl, err := src.ContentVersion(ctx, r.ID, r.Version)
		if err != nil {
			if ctx.Err() != nil {
				m.Wipe()
				return model.Assignments{}, ctx.Err()
			}
			// Not sent: the agent refuses to start the task without it,
			// and it is tried again at the next change.
			s.log.Warn("task data unavailable", "kind", r.Kind, "id", r.ID, "version", r.Version, "err", err)
			delete(want, r)
			continue
		}
		m.Data = append(m.Data, model.DataItem{DataRef: r, Name: names[r], Templating: tmpl, Data: b})
	}
	for r := range s.sentData {
		if !want[r] {
			m.RemovedData = append(m.RemovedData, r)
		}
	}
	// Committed only now: nothing above is half recorded on an error.
	s.started = true
	for _, id := range m.RemovedTasks {
		delete(s.sentTasks, id)
		delete(s.sentLabels, id)
	}
	for _, at := range m.Tasks {
		s.sentTasks[at.Task.ID] = at.Task.Version.Index
		s.sentLabels[at.Task.ID] = at.ServiceLabels
	}
	for _, r := range m.RemovedData {
		delete(s.sentData, r)
	}
	for _, it := range m.Data {
		s.sentData[it.DataRef] = true
	}
	if len(m.Data) > 0 {
		s.log.Info("task data released", "versions", len(m.Data))
	}
	return m, nil
}

func refName(t *model.Task, r model.DataRef) string {
	cs := t.Spec.ContainerSpec
	for _, x := range cs.Secrets {
		if r.Kind == "secret" && x != nil && x.SecretID == r.ID {
			return x.SecretName
		}
	}
	for _, x := range cs.Configs {
		if r.Kind == "config" && x != nil && x.ConfigID == r.ID {
			return x.ConfigName
		}
	}
	return ""
}

// clone copies a task as it would cross the wire, so the node never holds
// the mirror's own record.
func clone(t *model.Task) (*model.Task, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	c, err := model.Decode[model.Task](b)
	if err != nil {
		return nil, err
	}
	c.Version = t.Version
	return c, nil
}

// own reads task id afresh and checks that it is assigned to the node.
func (s *Session) own(ctx context.Context, id string) (*model.Task, error) {
	o, err := s.d.c.Table.Get(ctx, id)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, errdefs.NotFound("task %s not found", id)
		}
		return nil, err
	}
	t, err := model.Decode[model.Task](o.Value)
	if err != nil {
		return nil, err
	}
	t.Version.Index = uint64(o.ModRev)
	// The stream's rule, not just the node ID: a task that names the node
	// while it waits for room there is the orchestrator's until placed.
	if !s.assigned(t) {
		s.log.Warn("refused a node a task it is not assigned", "task", id)
		return nil, errdefs.Unauthorized("task %s is not assigned to node %s", id, s.node)
	}
	return t, nil
}

// Task reads one of the node's tasks afresh (the stream may lag).
func (s *Session) Task(ctx context.Context, id string) (*model.Task, error) {
	return s.own(ctx, id)
}

// reportable are the states a node reports; the others are the managers'.
// Ready is the orchestrator's, on a restarted task waiting out its delay.
var reportable = map[swarm.TaskState]bool{
	swarm.TaskStateAssigned: true, swarm.TaskStateAccepted: true, swarm.TaskStatePreparing: true,
	swarm.TaskStateStarting: true, swarm.TaskStateRunning: true,
	swarm.TaskStateComplete: true, swarm.TaskStateShutdown: true, swarm.TaskStateFailed: true,
	swarm.TaskStateRejected: true,
}

// checkTransition enforces Swarm's task state machine on a node's report:
// states only move forward (a report in the same state updates its
// message, or the versions a reload loaded), and a final state is final.
// It reports false for a repeat of the final state, which changes nothing.
func checkTransition(desired, cur, next swarm.TaskState) (bool, error) {
	if !reportable[next] {
		return false, errdefs.InvalidArgument("a node cannot report task state %q", next)
	}
	if desired == swarm.TaskStateReady && (next == swarm.TaskStateStarting || next == swarm.TaskStateRunning) {
		// A restart waiting out its delay may be prepared, not started:
		// the delay is the restart policy's, not the node's to skip.
		return false, errdefs.FailedPrecondition("task is waiting out its restart delay; %s refused", next)
	}
	if model.Terminal(cur) {
		if cur == next {
			return false, nil
		}
		return false, errdefs.FailedPrecondition("task state %s is final; %s refused", cur, next)
	}
	if cur == swarm.TaskStateReady {
		// Set by the orchestrator on a task no node has started (a
		// restart waiting out its delay): it stands where assigned does.
		cur = swarm.TaskStateAssigned
	}
	if model.Before(next, cur) {
		return false, errdefs.FailedPrecondition("task state cannot go back from %s to %s", cur, next)
	}
	return true, nil
}

// checkLoaded bounds the versions a node says a task loaded: only objects
// the task references, versions it was given (up to the one it holds, or
// the one it had loaded: a rollback pin can lower what it holds).
func checkLoaded(t *model.Task, loaded map[string]int) error {
	allowed := map[string]int{}
	if cs := t.Spec.ContainerSpec; cs != nil {
		for _, r := range cs.Secrets {
			if r != nil {
				k := model.DataKey("secret", r.SecretID)
				allowed[k] = max(t.HeldVersion("secret", r.SecretID), t.LoadedVersions[k])
			}
		}
		for _, r := range cs.Configs {
			if r != nil {
				k := model.DataKey("config", r.ConfigID)
				allowed[k] = max(t.HeldVersion("config", r.ConfigID), t.LoadedVersions[k])
			}
		}
	}
	for k, v := range loaded {
		top, ok := allowed[k]
		if !ok {
			return errdefs.InvalidArgument("task %s does not reference %s", t.ID, k)
		}
		if v < 1 || v > top {
			return errdefs.InvalidArgument("task %s was never given version %d of %s", t.ID, v, k)
		}
	}
	return nil
}

// maxStatusText bounds a report's message and error as stored: a node is a
// client, and its text lands in the task record (and every task listing).
const maxStatusText = 4096

// maxContainerID bounds the container ID a node reports (the engine's are
// 64 hex digits).
const maxContainerID = 128

// clip cuts s to at most maxStatusText bytes on a character boundary.
func clip(s string) string {
	if len(s) <= maxStatusText {
		return s
	}
	s = s[:maxStatusText]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// Bounds on the repeats of a task's state a session writes: repeatBurst
// at once, then one per repeatEvery.
const (
	repeatBurst = 256
	repeatEvery = 100 * time.Millisecond
)

// maxAttempts bounds the retries of a status write racing the
// orchestrator's writes to the same task.
const maxAttempts = 5

// ReportStatus records a node's report on one of its tasks and returns the
// task as stored.
func (s *Session) ReportStatus(ctx context.Context, r model.StatusReport) (*model.Task, error) {
	if c := r.Container; c != nil && len(c.ContainerID) > maxContainerID {
		return nil, errdefs.InvalidArgument("task %s: container ID of %d bytes", r.TaskID, len(c.ContainerID))
	}
	r.Message, r.Err = clip(r.Message), clip(r.Err)
	charged := false
	for range maxAttempts {
		t, err := s.own(ctx, r.TaskID)
		if err != nil {
			return nil, err
		}
		write, err := checkTransition(t.DesiredState, t.Status.State, r.State)
		if err != nil {
			return nil, fmt.Errorf("task %s: %w", t.ID, err)
		}
		if !write {
			return t, nil
		}
		if err := checkLoaded(t, r.Loaded); err != nil {
			return nil, err
		}
		if r.State == t.Status.State && !charged {
			// Charged once per report, not per retry of a stale write.
			if err := s.chargeRepeat(t.ID); err != nil {
				return nil, err
			}
			charged = true
		}
		now := s.d.c.Now()
		at := r.At
		if at.IsZero() || at.After(now) {
			at = now
		}
		if at.Before(t.Status.Timestamp) {
			// Never before the status it replaces (the orchestrator's
			// assignment, or an earlier report): the restart delay runs
			// from a failure's time and an update's monitor period from
			// a start's, so a backdated report would skip both.
			at = t.Status.Timestamp
		}
		next := *t
		next.Status = swarm.TaskStatus{Timestamp: at, State: r.State, Message: r.Message, Err: r.Err, ContainerStatus: r.Container}
		if r.Loaded != nil {
			next.LoadedVersions = maps.Clone(r.Loaded)
		}
		next.UpdatedAt = now
		val, err := json.Marshal(&next)
		if err != nil {
			return nil, err
		}
		rev, err := s.d.c.Table.Update(ctx, t.ID, int64(t.Version.Index), val)
		if err == nil {
			next.Version.Index = uint64(rev)
			return &next, nil
		}
		if !errors.Is(err, store.ErrStale) {
			return nil, err
		}
	}
	return nil, errdefs.Unavailable("task %s: status write kept conflicting", r.TaskID)
}

// RemoveTask deletes a task record once the node has removed what it ran
// (its container and mount): only a task of the node, desired removed,
// in a final state.
func (s *Session) RemoveTask(ctx context.Context, id string) error {
	t, err := s.own(ctx, id)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if t.DesiredState != swarm.TaskStateRemove || !model.Terminal(t.Status.State) {
		return errdefs.FailedPrecondition("task %s is not to be removed", id)
	}
	err = s.d.c.Table.Delete(ctx, id, "", int64(t.Version.Index), nil)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}

// Attachments resolves the network attachments of one of the node's tasks
// into the networks the node realises on its engine and DNS aliases.
func (s *Session) Attachments(ctx context.Context, taskID string) (nets []model.TaskNetwork, aliases []string, err error) {
	t, err := s.own(ctx, taskID)
	if err != nil {
		return nil, nil, err
	}
	if len(t.Spec.Networks) == 0 {
		return nil, nil, nil
	}
	if s.d.c.Networks == nil {
		return nil, nil, errdefs.Unavailable("networks are not available on this node")
	}
	return s.d.c.Networks.TaskNetworks(ctx, t.Spec.Networks, t.ServiceName)
}

// RegistryAuth returns the registry credentials for pulling the image of
// one of the node's tasks that should run (nil when the service has none);
// the caller wipes them.
func (s *Session) RegistryAuth(ctx context.Context, taskID string) ([]byte, error) {
	t, err := s.own(ctx, taskID)
	if err != nil {
		return nil, err
	}
	if !model.Runs(t.DesiredState) {
		return nil, errdefs.Unauthorized("task %s is not meant to run", taskID)
	}
	if s.d.c.PullAuth == nil {
		return nil, nil
	}
	return s.d.c.PullAuth.RegistryAuth(ctx, t.ServiceID)
}
