package agent

import (
	"context"
	"sync"

	"github.com/hush-secrets/hush/internal/model"
)

// Session is the agent's only channel to the managers: a dispatcher
// session opened for this node. The node's identity is the session's (the
// transport takes it from the node's certificate); no call names a node.
type Session interface {
	// Next returns the next assignments message: the full set first,
	// then increments, blocking until there is one. The agent owns and
	// wipes the data it carries.
	Next(ctx context.Context) (model.Assignments, error)
	// Task reads one of this node's tasks afresh (the stream may lag).
	Task(ctx context.Context, id string) (*model.Task, error)
	// ReportStatus reports a task's status; the dispatcher checks and
	// writes it and returns the task as stored.
	ReportStatus(ctx context.Context, r model.StatusReport) (*model.Task, error)
	// RemoveTask deletes the record of a task desired removed once its
	// container and mount are gone.
	RemoveTask(ctx context.Context, id string) error
	// Attachments gives the networks of a task's network attachments,
	// which the node realises on its own engine, and their DNS aliases.
	Attachments(ctx context.Context, taskID string) (nets []model.TaskNetwork, aliases []string, err error)
	// RegistryAuth gives the X-Registry-Auth value for pulling a task's
	// image (nil: none); the agent holds it only for the pull.
	RegistryAuth(ctx context.Context, taskID string) ([]byte, error)
}

// Connector opens sessions for this node (again after a session breaks).
type Connector interface {
	Open(ctx context.Context) (Session, error)
}

// view is what this node was assigned, as the session's messages built
// it, plus the agent's own reports (the stream may lag them). Tasks in it
// are never modified, only replaced. It holds the data versions of its
// tasks that should run, and wipes each when the dispatcher removes it.
type view struct {
	nodeID string

	mu      sync.Mutex
	synced  bool // a full set was received
	tasks   map[string]model.AssignedTask
	data    map[model.DataRef]model.DataItem
	changed chan struct{}
}

func newView(nodeID string) *view {
	return &view{nodeID: nodeID, tasks: map[string]model.AssignedTask{}, data: map[model.DataRef]model.DataItem{}, changed: make(chan struct{})}
}

// wake closes changed; the caller holds mu.
func (v *view) wakeLocked() {
	close(v.changed)
	v.changed = make(chan struct{})
}

// Changed returns a channel closed at the next change of the view.
func (v *view) Changed() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

// apply takes in a message. Tasks of other nodes are dropped (a node acts
// only on its own), and a task is never taken back to an older record
// than the view has (the agent's own report may be ahead of the stream).
func (v *view) apply(m model.Assignments) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if m.Full {
		keep := map[string]bool{}
		for _, at := range m.Tasks {
			keep[at.Task.ID] = true
		}
		for id := range v.tasks {
			if !keep[id] {
				delete(v.tasks, id)
			}
		}
		fresh := map[model.DataRef]bool{}
		for _, it := range m.Data {
			fresh[it.DataRef] = true
		}
		for r, it := range v.data {
			if !fresh[r] {
				clear(it.Data)
				delete(v.data, r)
			}
		}
		v.synced = true
	}
	for _, at := range m.Tasks {
		if at.Task == nil || at.Task.NodeID != v.nodeID {
			continue
		}
		if cur, ok := v.tasks[at.Task.ID]; ok && cur.Task.Version.Index > at.Task.Version.Index {
			continue
		}
		v.tasks[at.Task.ID] = at
	}
	for _, id := range m.RemovedTasks {
		delete(v.tasks, id)
	}
	for _, r := range m.RemovedData {
		if it, ok := v.data[r]; ok {
			clear(it.Data)
			delete(v.data, r)
		}
	}
	for _, it := range m.Data {
		if old, ok := v.data[it.DataRef]; ok {
			clear(old.Data)
		}
		v.data[it.DataRef] = it
	}
	v.wakeLocked()
}

// noted records a task as the dispatcher stored it after our report.
func (v *view) noted(t *model.Task) {
	v.mu.Lock()
	defer v.mu.Unlock()
	cur, ok := v.tasks[t.ID]
	if !ok || cur.Task.Version.Index > t.Version.Index {
		return
	}
	v.tasks[t.ID] = model.AssignedTask{Task: t, ServiceLabels: cur.ServiceLabels}
	v.wakeLocked()
}

// snapshot lists the tasks; ok is false until a full set arrived.
func (v *view) snapshot() (tasks []model.AssignedTask, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.synced {
		return nil, false
	}
	tasks = make([]model.AssignedTask, 0, len(v.tasks))
	for _, at := range v.tasks {
		tasks = append(tasks, at)
	}
	return tasks, true
}

// task returns one task of the view.
func (v *view) task(id string) (model.AssignedTask, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	at, ok := v.tasks[id]
	return at, ok
}

// copyData returns a copy of a data version the node was given (the copy
// is the caller's to wipe), with its name and templating driver.
func (v *view) copyData(r model.DataRef) (model.DataItem, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	it, ok := v.data[r]
	if !ok {
		return model.DataItem{}, false
	}
	it.Data = append([]byte(nil), it.Data...)
	return it, true
}

// wipe drops every data version (the agent stops).
func (v *view) wipe() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for r, it := range v.data {
		clear(it.Data)
		delete(v.data, r)
	}
}
