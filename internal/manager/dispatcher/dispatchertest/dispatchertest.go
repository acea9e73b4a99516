// Package dispatchertest holds the in-memory store and data source the
// dispatcher's tests and its transport's tests run a real dispatcher on.
package dispatchertest

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
)

// MemStore is the tasks table, its snapshot and change notifications in
// memory, with the store's revision checks.
type MemStore struct {
	mu      sync.Mutex
	rev     int64
	tasks   map[string]store.Object
	Svcs    []*model.Service
	waiters []chan struct{}
	// BeforeUpdate runs before each Update (to race a write in).
	BeforeUpdate func()
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore { return &MemStore{tasks: map[string]store.Object{}} }

// Put writes a task as the store would (a new revision).
func (m *MemStore) Put(t testing.TB, tk *model.Task) {
	t.Helper()
	b, err := json.Marshal(tk)
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.rev++
	m.tasks[tk.ID] = store.Object{ID: tk.ID, Value: b, ModRev: m.rev}
	m.wakeLocked()
	m.mu.Unlock()
}

// Task reads a task back.
func (m *MemStore) Task(t testing.TB, id string) *model.Task {
	t.Helper()
	o, err := m.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := model.Decode[model.Task](o.Value)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// SetServices replaces the services (a services table write).
func (m *MemStore) SetServices(svcs ...*model.Service) {
	m.mu.Lock()
	m.rev++
	m.Svcs = svcs
	m.wakeLocked()
	m.mu.Unlock()
}

// Del deletes a task.
func (m *MemStore) Del(id string) {
	m.mu.Lock()
	m.rev++
	delete(m.tasks, id)
	m.wakeLocked()
	m.mu.Unlock()
}

func (m *MemStore) wakeLocked() {
	for _, w := range m.waiters {
		close(w)
	}
	m.waiters = nil
}

// TableChanged wakes at the next write.
func (m *MemStore) TableChanged(...string) <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := make(chan struct{})
	m.waiters = append(m.waiters, w)
	return w
}

// Snapshot lists services and tasks.
func (m *MemStore) Snapshot(context.Context) ([]*model.Service, []*model.Task, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*model.Task
	for _, o := range m.tasks {
		t, err := model.Decode[model.Task](o.Value)
		if err != nil {
			return nil, nil, err
		}
		t.Version.Index = uint64(o.ModRev)
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return m.Svcs, out, nil
}

// Get reads a task record.
func (m *MemStore) Get(_ context.Context, id string) (store.Object, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.tasks[id]
	if !ok {
		return store.Object{}, store.ErrNotFound
	}
	return o, nil
}

// Update writes a task record if it is at rev.
func (m *MemStore) Update(_ context.Context, id string, rev int64, val []byte, _ ...store.Op) (int64, error) {
	if f := m.BeforeUpdate; f != nil {
		f()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.tasks[id]
	if !ok {
		return 0, store.ErrNotFound
	}
	if o.ModRev != rev {
		return 0, store.ErrStale
	}
	m.rev++
	m.tasks[id] = store.Object{ID: id, Value: val, ModRev: m.rev}
	m.wakeLocked()
	return m.rev, nil
}

// Delete deletes a task record if it is at rev.
func (m *MemStore) Delete(_ context.Context, id, _ string, rev int64, _ []store.Cond, _ ...store.Op) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.tasks[id]
	if !ok {
		return store.ErrNotFound
	}
	if o.ModRev != rev {
		return store.ErrStale
	}
	m.rev++
	delete(m.tasks, id)
	m.wakeLocked()
	return nil
}

// Data serves "value-of-<id>-v<n>" and records what was opened.
type Data struct {
	mu        sync.Mutex
	Opened    []string
	Templated map[string]bool
}

// ContentVersion serves a version.
func (d *Data) ContentVersion(_ context.Context, id string, n int) ([]byte, string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.Opened = append(d.Opened, fmt.Sprintf("%s@%d", id, n))
	drv := ""
	if d.Templated[id] {
		drv = "golang"
	}
	return fmt.Appendf(nil, "value-of-%s-v%d", id, n), drv, nil
}
