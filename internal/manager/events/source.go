package events

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/events"
)

// Config wires a Source.
type Config struct {
	Store *store.Store
	// Hostname names a node whose spec has no name (Swarm uses the node's
	// hostname); nil leaves such a node's name empty. It may be called from
	// the store mirror's goroutine too (see Source.opened).
	Hostname func(nodeID string) string
	// History is how many events are kept for --since/--until
	// (DefaultHistory when 0); Buffer how far a subscriber may fall
	// behind before it is dropped (DefaultBuffer when 0).
	History, Buffer int
	Logger          *slog.Logger
	// Now stamps events (time.Now when nil).
	Now func() time.Time
}

// Source derives events from the store's watch and serves them.
type Source struct {
	st       *store.Store
	root     string
	hostname func(string) string
	log      *slog.Logger
	now      func() time.Time
	hub      *hub

	mu sync.Mutex
	// known is the last view of every object of the watched tables, by
	// table and ID: what an update is compared with and what a remove
	// names. Its size is the number of stored objects.
	known map[string]map[string]view
	// rev is the store revision applied; advanced is closed and replaced
	// each time it moves. loaded is set after the first snapshot.
	rev      int64
	advanced chan struct{}
	loaded   bool

	// pre holds the views of values the store's mirror opened ahead of
	// this source's watch (store.OnOpened), by table/ID, so putLocked
	// decodes them instead of opening each value a second time. A view
	// holds names and attributes only, never data. Entries at or below
	// preRev (what the source has applied) are dropped: the source got
	// there first and opened the value itself.
	pmu    sync.Mutex
	pre    map[string]preView
	preRev int64
	// reused counts the values taken from pre (under mu), for tests.
	reused int
}

type preView struct {
	modRev int64
	v      view
	err    error
}

// New returns a Source over c.Store; Run it.
func New(c Config) *Source {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	st := c.Store
	// The key root is the part of a table key before the table's name.
	root := strings.TrimSuffix(st.Table(objects.Secret.Table).Key(""), objects.Secret.Table+"/")
	s := &Source{
		st: st, root: root, hostname: c.Hostname, log: c.Logger.With("component", "events"),
		now: c.Now, hub: newHub(c.History, c.Buffer), known: map[string]map[string]view{},
		advanced: make(chan struct{}),
	}
	s.hub.onDrop = func() { s.log.Warn("events: a subscriber fell behind and was dropped") }
	return s
}

// Run loads the watched tables and then follows the store until ctx ends.
// After a broken watch (compaction, a lost leader) it loads again and
// reports what changed meanwhile as events, so a restart of the watch loses
// no create or remove (updates in between fold into one).
func (s *Source) Run(ctx context.Context) {
	defer s.CloseSubscriptions()
	defer s.st.OnOpened(s.opened)()
	for ctx.Err() == nil {
		rev, err := s.load(ctx)
		if err == nil {
			err = s.watch(ctx, rev)
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("events: store watch restarting", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// CloseSubscriptions ends every live subscription, so the streams that
// read them end (at shutdown: they would otherwise hold it up). Later
// subscriptions work as before.
func (s *Source) CloseSubscriptions() { s.hub.closeAll() }

// load reads every watched table in one transaction (one revision) and
// compares it with what is known.
func (s *Source) load(ctx context.Context) (int64, error) {
	kinds := make([]string, 0, len(tables))
	prefixes := make([]string, 0, len(tables))
	for t := range tables {
		kinds = append(kinds, t)
		prefixes = append(prefixes, s.root+t+"/")
	}
	got, rev, err := s.st.ReadPrefixes(ctx, prefixes...)
	if err != nil {
		return 0, fmt.Errorf("events: load: %w: %w", errdefs.ErrUnavailable, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, kvs := range got {
		table := kinds[i]
		seen := map[string]bool{}
		for _, kv := range kvs {
			id := strings.TrimPrefix(kv.Key, s.root+table+"/")
			if strings.Contains(id, "/") {
				continue
			}
			seen[id] = true
			s.putLocked(table, id, kv.Key, kv.Value, kv.ModRev)
		}
		for id := range s.known[table] {
			if !seen[id] {
				s.deleteLocked(table, id)
			}
		}
	}
	s.loaded = true
	s.advanceLocked(rev)
	return rev, nil
}

func (s *Source) watch(ctx context.Context, rev int64) error {
	// The whole key space, not only the watched tables: every write then
	// advances rev, which is what lets Wait end.
	return s.st.Watch(ctx, s.root, rev+1, func(events []store.Event, rev int64) {
		// A revision that deletes the cluster object is `swarm leave`
		// erasing all state: Swarm reports no removal then (the cluster
		// is gone, not its objects one by one), so neither does hush.
		erased := map[int64]bool{}
		for _, ev := range events {
			if ev.Deleted && strings.HasPrefix(ev.Key, s.root+clusterTable+"/") {
				erased[ev.ModRev] = true
			}
		}
		s.mu.Lock()
		for _, ev := range events {
			table, id, ok := s.split(ev.Key)
			if !ok {
				continue
			}
			if ev.Deleted {
				if erased[ev.ModRev] {
					delete(s.known[table], id)
					continue
				}
				s.deleteLocked(table, id)
			} else {
				s.putLocked(table, id, ev.Key, ev.Value, ev.ModRev)
			}
		}
		s.advanceLocked(rev)
		s.mu.Unlock()
	})
}

// split returns the watched table and object ID of key.
func (s *Source) split(key string) (table, id string, ok bool) {
	rest, ok := strings.CutPrefix(key, s.root)
	if !ok {
		return "", "", false
	}
	table, id, ok = strings.Cut(rest, "/")
	if _, watched := tables[table]; !ok || !watched || id == "" || strings.Contains(id, "/") {
		return "", "", false
	}
	return table, id, true
}

// opened is the store.OnOpened hook: the view of a value the mirror has
// just opened, kept until the watch reaches it.
func (s *Source) opened(table, id string, modRev int64, value []byte) {
	if _, watched := tables[table]; !watched || id == "" || strings.Contains(id, "/") {
		return
	}
	s.pmu.Lock()
	behind := modRev <= s.preRev
	s.pmu.Unlock()
	if behind {
		return // the common case at a reload: the source is there already
	}
	v, err := decode(table, id, value, s.hostname)
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if modRev <= s.preRev {
		return // applied already: the source opened it itself
	}
	if s.pre == nil {
		s.pre = map[string]preView{}
	}
	s.pre[table+"/"+id] = preView{modRev: modRev, v: v, err: err}
}

// takePre returns the mirror's view of table/id at modRev, if it has one.
func (s *Source) takePre(table, id string, modRev int64) (preView, bool) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	k := table + "/" + id
	p, ok := s.pre[k]
	if !ok || p.modRev > modRev {
		return preView{}, false
	}
	delete(s.pre, k)
	return p, p.modRev == modRev
}

// putLocked records the stored (sealed) value of key. The opened bytes
// live only for the decode: a view keeps names and attributes, never a
// secret's or config's data. A value the mirror opened already is not
// opened again.
func (s *Source) putLocked(table, id, key string, sealed []byte, modRev int64) {
	var cur view
	var err error
	if p, ok := s.takePre(table, id, modRev); ok {
		cur, err = p.v, p.err
		s.reused++
	} else {
		val, oerr := s.st.OpenValue(key, sealed)
		if oerr != nil {
			s.log.Error("events: unreadable object", "table", table, "id", id, "err", oerr)
			return
		}
		cur, err = decode(table, id, val, s.hostname)
		clear(val)
	}
	if err != nil {
		// What cannot be read cannot be named; the next readable write of
		// the object is compared with its last readable form.
		s.log.Error("events: undecodable object", "table", table, "id", id, "err", err)
		return
	}
	var old *view
	if v, ok := s.known[table][id]; ok {
		old = &v
	}
	if s.known[table] == nil {
		s.known[table] = map[string]view{}
	}
	s.known[table][id] = cur
	if s.loaded {
		s.emit(table, id, old, &cur)
	}
}

func (s *Source) deleteLocked(table, id string) {
	v, ok := s.known[table][id]
	if !ok {
		return
	}
	delete(s.known[table], id)
	s.emit(table, id, &v, nil)
}

func (s *Source) emit(table, id string, old, cur *view) {
	for _, m := range derive(table, id, old, cur) {
		t := s.now().UTC()
		m.Time, m.TimeNano = t.Unix(), t.UnixNano()
		s.hub.publish(m)
	}
}

func (s *Source) advanceLocked(rev int64) {
	if rev > s.rev {
		s.rev = rev
		close(s.advanced)
		s.advanced = make(chan struct{})
	}
	s.pmu.Lock()
	s.preRev = s.rev
	for k, p := range s.pre {
		if p.modRev <= s.rev {
			delete(s.pre, k)
		}
	}
	s.pmu.Unlock()
}

// clusterTable is the store table of internal/manager/cluster (unexported
// there).
const clusterTable = "cluster"

// waitTimeout bounds how long a history request waits for the watch: it
// is in-process, so catching up takes microseconds unless it is restarting.
const waitTimeout = 5 * time.Second

// Wait returns once every write acknowledged before it was called has
// become an event, so a history read right after a write includes it.
func (s *Source) Wait(ctx context.Context) error {
	want, err := s.st.Revision(ctx)
	if err != nil {
		return fmt.Errorf("events: store revision: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	// The watch sees only hush's keys, etcd's revision counts everyone's:
	// progress notifications carry it past others' writes (external etcd).
	var progress <-chan time.Time
	for {
		s.mu.Lock()
		ok, ch := s.loaded && s.rev >= want, s.advanced
		s.mu.Unlock()
		if ok {
			return nil
		}
		if progress == nil {
			t := s.st.AskProgress(ctx)
			defer t.Stop()
			progress = t.C
		}
		select {
		case <-ch:
		case <-progress:
			s.st.RequestProgress(ctx)
		case <-ctx.Done():
			return errdefs.Unavailable("hush: the event history is resynchronising with the store, try again")
		}
	}
}

// Subscribe returns the recorded events f includes whose time lies in
// [since, until] (when either is given, as dockerd serves history only
// then), oldest first, and when live is true a subscription to every later
// event f includes. The caller closes the subscription.
func (s *Source) Subscribe(ctx context.Context, f Filter, since, until time.Time, live bool) ([]events.Message, *Subscription, error) {
	history := !since.IsZero() || !until.IsZero()
	if history {
		if err := s.Wait(ctx); err != nil {
			return nil, nil, err
		}
	}
	past, sub := s.hub.subscribe(f, since, until, history, live)
	return past, sub, nil
}
