package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Decoder turns a stored value (opened) into the form a Mirror keeps in
// memory. It must not keep o.Value, which is wiped after the call.
type Decoder func(o Object) (any, error)

// Entry is one mirrored object.
type Entry struct {
	ID     string
	Value  any
	ModRev int64
}

// Mirror keeps decoded in-memory copies of some tables, fed by one watch on
// the whole key space, so reads of many objects (lists) cost no store round
// trip and no decoding.
//
// Reads are linearizable: Read first asks etcd for its current revision and
// waits until the mirror has applied it. Watching the whole key space (not
// just the mirrored tables) is what makes that wait finite: every write
// anywhere advances the mirror's revision; writes outside hush's keys (an
// external etcd) reach it as watch progress notifications (AskProgress).
type Mirror struct {
	st     *Store
	mu     sync.RWMutex
	rev    int64
	tables map[string]*mirrorTable
	// advanced is closed and replaced each time rev moves, waking waiters.
	advanced chan struct{}
	// stale is set while the watch is being re-established; reads then go
	// to etcd through the caller's fallback.
	stale bool
	// tableChanged holds, per table (mirrored or not), a channel closed at
	// the next write to it, so loops wake only for what they watch.
	tableChanged map[string][]*waiter
}

type mirrorTable struct {
	decode Decoder
	// sealed tables' decoders get values as stored, unopened.
	sealed bool
	items  map[string]Entry
}

// NewMirror returns a mirror over st; Register tables, then Run it.
func NewMirror(st *Store) *Mirror {
	return &Mirror{st: st, tables: map[string]*mirrorTable{}, advanced: make(chan struct{}), stale: true, tableChanged: map[string][]*waiter{}}
}

// Register mirrors the table kind, decoding values with dec.
func (m *Mirror) Register(kind string, dec Decoder) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tables[kind] = &mirrorTable{decode: dec, items: map[string]Entry{}}
}

// RegisterSealed mirrors the table kind without opening its values: dec
// gets each value as stored (sealed; it may keep o.Value) and returns what
// Entry.Value holds, typically a holder that opens and decodes the value
// when it is first read (OpenValue). For tables written far more often than
// they are read in full (secrets and configs: each create is one write, and
// nothing reads a secret's record until a task or a list needs it), every
// manager then no longer opens and decodes every write as it arrives. Values
// of such a table reach no OnOpened observer: the events source opens them
// itself.
func (m *Mirror) RegisterSealed(kind string, dec Decoder) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tables[kind] = &mirrorTable{decode: dec, sealed: true, items: map[string]Entry{}}
}

// Run lists and then watches until ctx ends, re-listing after errors such as
// a watch that fell behind compaction.
func (m *Mirror) Run(ctx context.Context) {
	for ctx.Err() == nil {
		rev, err := m.load(ctx)
		if err == nil {
			err = m.watch(ctx, rev)
		}
		m.setStale()
		if ctx.Err() != nil {
			return
		}
		m.st.log.Warn("store mirror restarting", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (m *Mirror) setStale() {
	m.mu.Lock()
	m.stale = true
	m.mu.Unlock()
}

// load replaces the mirror's content with a consistent snapshot.
func (m *Mirror) load(ctx context.Context) (int64, error) {
	resp, err := m.st.cli.Get(ctx, root, clientv3.WithPrefix())
	if err != nil {
		return 0, wrapEtcd(err)
	}
	changes := make([]change, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if c, ok := m.decodeKV(string(kv.Key), kv.Value, kv.CreateRevision, kv.ModRevision, false); ok && c.t != nil {
			changes = append(changes, c)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.tables {
		t.items = map[string]Entry{}
	}
	m.wakeLocked("")
	for _, c := range changes {
		m.applyLocked(c)
	}
	m.stale = false
	m.advanceLocked(resp.Header.Revision)
	return resp.Header.Revision, nil
}

func (m *Mirror) watch(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := m.st.cli.Watch(wctx, root, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	for resp := range wch {
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return fmt.Errorf("watch compacted at %d: %w", resp.CompactRevision, err)
			}
			return err
		}
		changes := make([]change, 0, len(resp.Events))
		for _, ev := range resp.Events {
			if c, ok := m.decodeKV(string(ev.Kv.Key), ev.Kv.Value, ev.Kv.CreateRevision, ev.Kv.ModRevision, ev.Type == clientv3.EventTypeDelete); ok {
				changes = append(changes, c)
			}
		}
		m.mu.Lock()
		for _, c := range changes {
			m.applyLocked(c)
		}
		m.advanceLocked(resp.Header.Revision)
		m.mu.Unlock()
	}
	return errors.New("watch channel closed")
}

// change is one stored key's new state, opened and decoded before the
// mirror's lock is taken, so that reads never wait for cryptography or JSON.
type change struct {
	kind, id string
	t        *mirrorTable // nil: not mirrored
	deleted  bool
	entry    Entry
	err      error // the value could not be opened or decoded
}

func (m *Mirror) decodeKV(key string, val []byte, createRev, modRev int64, deleted bool) (change, bool) {
	rest, ok := strings.CutPrefix(key, root)
	if !ok {
		return change{}, false
	}
	kind, id, ok := strings.Cut(rest, "/")
	if !ok {
		return change{}, false
	}
	m.mu.RLock()
	t := m.tables[kind]
	m.mu.RUnlock()
	c := change{kind: kind, id: id, t: t, deleted: deleted}
	if t == nil || deleted {
		return c, true
	}
	if t.sealed {
		v, err := t.decode(Object{ID: id, Value: val, CreateRev: createRev, ModRev: modRev})
		c.entry, c.err = Entry{ID: id, Value: v, ModRev: modRev}, err
		return c, true
	}
	pt, err := m.st.open(key, val)
	if err == nil {
		var v any
		v, err = t.decode(Object{ID: id, Value: pt, CreateRev: createRev, ModRev: modRev})
		m.st.opened.notify(kind, id, modRev, pt)
		// Decoders copy what they keep: the opened bytes (a service's
		// environment, say) do not outlive the call.
		clear(pt)
		c.entry = Entry{ID: id, Value: v, ModRev: modRev}
	}
	c.err = err
	return c, true
}

func (m *Mirror) applyLocked(c change) {
	m.wakeLocked(c.kind)
	if c.t == nil {
		return
	}
	switch {
	case c.deleted:
		delete(c.t.items, c.id)
	case c.err != nil:
		// A value this version cannot open or decode stays out of the
		// mirror; reads of it by ID still go to etcd and report the error.
		m.st.log.Error("store mirror: undecodable object", "kind", c.kind, "id", c.id, "err", c.err)
		delete(c.t.items, c.id)
	default:
		c.t.items[c.id] = c.entry
	}
}

func (m *Mirror) advanceLocked(rev int64) {
	if rev > m.rev {
		m.rev = rev
		close(m.advanced)
		m.advanced = make(chan struct{})
	}
}

// ErrMirrorStale means the mirror cannot serve a consistent read right now.
var ErrMirrorStale = fmt.Errorf("store: mirror is resynchronising: %w", errdefs.ErrUnavailable)

// Read calls fn with the mirrored items of kind once the mirror has caught
// up with every write acknowledged before Read was called. fn must not keep
// or modify the map.
func (m *Mirror) Read(ctx context.Context, kind string, fn func(items map[string]Entry)) error {
	want, err := m.st.Revision(ctx)
	if err != nil {
		return err
	}
	// Bounded: the watch is in-process, so catching up takes microseconds
	// unless the mirror is restarting. Under a prefix of an external etcd
	// that others write to, the watch sees no event for their writes, which
	// still move etcd's (global) revision: progress notifications (asked
	// for once the mirror is behind) carry it there.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var progress <-chan time.Time
	for {
		m.mu.RLock()
		if m.stale {
			m.mu.RUnlock()
			return ErrMirrorStale
		}
		if m.rev >= want {
			fn(m.tables[kind].items)
			m.mu.RUnlock()
			return nil
		}
		ch := m.advanced
		m.mu.RUnlock()
		if progress == nil {
			t := m.st.AskProgress(ctx)
			defer t.Stop()
			progress = t.C
		}
		select {
		case <-ch:
		case <-progress:
			m.st.RequestProgress(ctx)
		case <-ctx.Done():
			return fmt.Errorf("store: mirror did not reach revision %d: %w", want, errdefs.ErrUnavailable)
		}
	}
}

// Entry returns the item id of kind as the mirror last applied it, without
// waiting for the store: it may be behind, or gone from the store already.
// A caller acts on it only through a write guarded by its ModRev, which
// etcd refuses when the item has changed since; that guard, not the
// mirror, makes the write linearizable, and saves the read a Read would
// cost (a read-index round).
func (m *Mirror) Entry(kind, id string) (Entry, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	t := m.tables[kind]
	if t == nil {
		return Entry{}, false
	}
	e, ok := t.items[id]
	return e, ok
}

// WaitReady blocks until the first snapshot is loaded.
func (m *Mirror) WaitReady(ctx context.Context) error {
	for {
		m.mu.RLock()
		ready := !m.stale
		ch := m.advanced
		m.mu.RUnlock()
		if ready {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// TableChanged returns a channel closed at the next write to any of kinds
// (after a resynchronisation too, since writes may have been missed).
func (m *Mirror) TableChanged(kinds ...string) <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := &waiter{ch: make(chan struct{})}
	for _, k := range kinds {
		// Drop waiters already woken through another table, so a table
		// that is never written does not collect them.
		live := m.tableChanged[k][:0]
		for _, o := range m.tableChanged[k] {
			if !o.fired {
				live = append(live, o)
			}
		}
		m.tableChanged[k] = append(live, w)
	}
	return w.ch
}

type waiter struct {
	ch    chan struct{}
	fired bool
}

// wakeLocked fires the waiters of kind ("" fires all).
func (m *Mirror) wakeLocked(kind string) {
	for k, ws := range m.tableChanged {
		if kind != "" && k != kind {
			continue
		}
		for _, w := range ws {
			if !w.fired {
				w.fired = true
				close(w.ch)
			}
		}
		delete(m.tableChanged, k)
	}
}

// Changed returns a channel closed at the mirror's next advance: loops wait
// on it (with a timer) instead of polling the store.
func (m *Mirror) Changed() <-chan struct{} {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.advanced
}

// OpenedFunc observes a value the mirror has opened: the object id of
// table kind at revision modRev. It must not keep value, which is wiped
// after the call, and must be quick: it runs on the mirror's watch.
type OpenedFunc func(kind, id string, modRev int64, value []byte)

// openedHooks are the observers of opened values, so that another
// follower of the store's watch (the events source) reuses what the mirror
// opened instead of opening every written value a second time.
type openedHooks struct {
	mu    sync.RWMutex
	next  int
	hooks map[int]OpenedFunc
}

// OnOpened calls fn with every value of a mirrored table that a mirror of
// s opens (after each write, and at each (re)load) until remove is called.
// Values no mirror opens (tables not mirrored or mirrored sealed, values
// that do not open) are not seen.
func (s *Store) OnOpened(fn OpenedFunc) (remove func()) {
	h := &s.opened
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hooks == nil {
		h.hooks = map[int]OpenedFunc{}
	}
	id := h.next
	h.next++
	h.hooks[id] = fn
	return func() {
		h.mu.Lock()
		delete(h.hooks, id)
		h.mu.Unlock()
	}
}

func (h *openedHooks) notify(kind, id string, modRev int64, value []byte) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, fn := range h.hooks {
		fn(kind, id, modRev, value)
	}
}
