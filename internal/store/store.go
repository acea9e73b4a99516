package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/hush-secrets/hush/internal/errdefs"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Store-level errors; each wraps an errdefs category so the edge can map it.
var (
	ErrNotFound  = fmt.Errorf("store: object not found: %w", errdefs.ErrNotFound)
	ErrNameTaken = fmt.Errorf("store: name taken: %w", errdefs.ErrAlreadyExists)
	// ErrStale means the caller's expected revision is no longer current.
	ErrStale = fmt.Errorf("store: revision mismatch: %w", errdefs.ErrConflict)
	// ErrGuard means an extra precondition given by the caller failed.
	ErrGuard = fmt.Errorf("store: precondition failed: %w", errdefs.ErrConflict)
	// ErrNoLeader means the cluster has no quorum (or this member has not
	// reached it yet): nothing was written; retry once managers are back.
	ErrNoLeader = fmt.Errorf("store: %w", errdefs.ErrNoLeader)
)

const root = "/hush/v1/"

// Object is one stored value and its etcd revisions.
type Object struct {
	ID        string
	Value     []byte
	CreateRev int64
	ModRev    int64
}

// Store wraps an etcd client with hush's key layout.
type Store struct {
	cli  *clientv3.Client
	log  *slog.Logger
	keys Keys
	idx  indexCache
	// opened are the observers of values the mirror opens (OnOpened).
	opened  openedHooks
	innerMu sync.Mutex
	inner   map[string]InnerFunc
	// gate is held for reading by each write from its seal to its commit,
	// and for writing by Exclusive.
	gate sync.RWMutex
	// defrag rewrites etcd's backend file without its free pages (nil for
	// an external cluster).
	defrag  func() error
	errc    <-chan error
	closeFn func() error
	once    sync.Once
	cerr    error
	// quota refuses writes before etcd is full (nil: no check).
	quota *quota
	// ready is closed once the member has joined a quorum (nil: ready).
	ready <-chan struct{}
	// hasLeader reports whether the member knows a leader (nil: always).
	hasLeader func() bool
	// awaitLeader waits out an election as writes do (nil: always led).
	awaitLeader func(context.Context) bool
	// members manages the cluster (nil for a lone member).
	members *Members
	// external is a cluster the user runs (external.go): its history and
	// snapshots are not hush's alone.
	external bool
	// detached is the refusal of a Detached store (nil: a real one).
	detached error
}

func newStore(cli *clientv3.Client, log *slog.Logger, keys Keys) *Store {
	return &Store{cli: cli, log: log, keys: keys, inner: map[string]InnerFunc{}}
}

// RawClient is the store's etcd client, for internal/store/storetest
// alone: its helpers let other packages' tests look at what etcd holds.
// Everything else goes through the store's own vocabulary (cond.go), so no
// caller depends on etcd's types; TestNoEtcdOutsideStore enforces both.
func RawClient(s *Store) *clientv3.Client { return s.cli }

// Ready is closed once the store can serve: at once for a lone member or
// an external cluster, when a quorum is reached for a cluster member. Until
// then, and whenever HasLeader is false later, requests fail with
// ErrNoLeader; the daemon serves Swarm's no-leader text meanwhile.
func (s *Store) Ready() <-chan struct{} {
	if s.ready == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return s.ready
}

// HasLeader reports whether this member currently knows a cluster leader
// (always true for a lone member).
func (s *Store) HasLeader() bool { return s.hasLeader == nil || s.hasLeader() }

// Members manages the cluster this member belongs to; nil unless the store
// was opened with EmbeddedConfig.Member.
func (s *Store) Members() *Members { return s.members }

// Err delivers fatal errors of an embedded member; nil for external clusters.
func (s *Store) Err() <-chan error { return s.errc }

// Close stops the client and, for an embedded member, the member itself.
func (s *Store) Close() error {
	s.once.Do(func() {
		if s.closeFn != nil {
			s.cerr = s.closeFn()
		}
	})
	return s.cerr
}

// Table is the collection of one kind of object ("secrets", "services"...).
type Table struct {
	s    *Store
	kind string
}

// Table returns the collection for kind.
func (s *Store) Table(kind string) *Table { return &Table{s: s, kind: kind} }

func (t *Table) objKey(id string) string { return root + t.kind + "/" + id }
func (t *Table) prefix() string          { return root + t.kind + "/" }

// NameKey is the index key for name (see seal.go), exposed so callers can
// guard on it.
func (t *Table) NameKey(ctx context.Context, name string) (string, error) {
	sum, err := t.s.nameEntry(ctx, t.kind, name)
	if err != nil {
		return "", err
	}
	return root + "names/" + t.kind + "/" + sum, nil
}

// RefKey is a reference marker key: "object id of kind K is used by owner".
// Writers of owners maintain them so a delete can refuse an in-use object in
// the same transaction that removes it.
func RefKey(kind, id, owner string) string {
	return root + "refs/" + kind + "/" + id + "/" + owner
}

// RefPrefix is the prefix of all reference markers of one object.
func RefPrefix(kind, id string) string { return root + "refs/" + kind + "/" + id + "/" }

// RefValues returns the opened values of the reference markers of one
// object (what their writers put there, e.g. the owner's name), in key
// order, at most limit of them (0: all).
func (s *Store) RefValues(ctx context.Context, kind, id string, limit int64) ([]string, error) {
	resp, err := s.cli.Get(ctx, RefPrefix(kind, id), clientv3.WithPrefix(), clientv3.WithLimit(limit))
	if err != nil {
		return nil, wrapEtcd(err)
	}
	out := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		v, err := s.open(string(kv.Key), kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, string(v))
	}
	return out, nil
}

// Create writes a new object and claims its name in one transaction. It
// returns the revision of the write.
func (t *Table) Create(ctx context.Context, id, name string, val []byte, extra ...Op) (int64, error) {
	ok := etcdOps([]clientv3.Op{
		clientv3.OpPut(t.objKey(id), string(val)),
	}, extra)
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(t.objKey(id)), "=", 0)}
	if name != "" {
		nk, err := t.NameKey(ctx, name)
		if err != nil {
			return 0, err
		}
		ok = append(ok, clientv3.OpPut(nk, id))
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(nk), "=", 0))
	}
	ok, release, err := t.s.sealOps(ok)
	if err != nil {
		return 0, err
	}
	defer release()
	if err := t.s.quota.check(ctx, t.s.cli, opsCost(ok)); err != nil {
		return 0, err
	}
	resp, err := t.s.cli.Txn(ctx).If(cmps...).Then(ok...).Commit()
	// A new leader was elected while the write was in flight (leaderkv.go):
	// it may have been applied or lost. The same transaction again tells
	// which: the object's key holds this very value (sealed under a fresh
	// nonce, so no other write's) only if the first one was applied.
	for try := 0; try < createRetries && errors.Is(err, errLeaderChangedHere); try++ {
		t.s.log.Debug("store: leader changed during a create: retrying", "kind", t.kind)
		resp, err = t.s.cli.Txn(ctx).If(cmps...).Then(ok...).Else(clientv3.OpGet(t.objKey(id))).Commit()
		if err == nil && !resp.Succeeded && len(resp.Responses) == 1 {
			if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) == 1 && bytes.Equal(r.Kvs[0].Value, ok[0].ValueBytes()) {
				return r.Kvs[0].ModRevision, nil
			}
		}
	}
	if err != nil {
		return 0, t.s.writeErr(err)
	}
	if !resp.Succeeded {
		return 0, ErrNameTaken
	}
	return resp.Header.Revision, nil
}

// createRetries bounds how often Create retries a write that a leader
// change interrupted (each retry waits for a leader first).
const createRetries = 3

// Get returns the object with id.
func (t *Table) Get(ctx context.Context, id string) (Object, error) {
	resp, err := t.s.cli.Get(ctx, t.objKey(id))
	if err != nil {
		return Object{}, wrapEtcd(err)
	}
	if len(resp.Kvs) == 0 {
		return Object{}, ErrNotFound
	}
	kv := resp.Kvs[0]
	v, err := t.s.open(t.objKey(id), kv.Value)
	if err != nil {
		return Object{}, err
	}
	return Object{ID: id, Value: v, CreateRev: kv.CreateRevision, ModRev: kv.ModRevision}, nil
}

// Exists reports whether the object id exists, without opening it: what
// can be told while the cluster is locked.
func (t *Table) Exists(ctx context.Context, id string) (bool, error) {
	resp, err := t.s.cli.Get(ctx, t.objKey(id), clientv3.WithCountOnly())
	if err != nil {
		return false, wrapEtcd(err)
	}
	return resp.Count > 0, nil
}

// LookupName returns the ID holding name (case-insensitive).
func (t *Table) LookupName(ctx context.Context, name string) (string, error) {
	nk, err := t.NameKey(ctx, name)
	if err != nil {
		return "", err
	}
	resp, err := t.s.cli.Get(ctx, nk)
	if err != nil {
		return "", wrapEtcd(err)
	}
	if len(resp.Kvs) == 0 {
		return "", ErrNotFound
	}
	id, err := t.s.open(nk, resp.Kvs[0].Value)
	if err != nil {
		return "", err
	}
	return string(id), nil
}

// List returns every object of the table, ordered by ID.
func (t *Table) List(ctx context.Context) ([]Object, error) {
	return t.ListPrefix(ctx, "")
}

// ListPrefix returns the objects whose ID starts with idPrefix.
func (t *Table) ListPrefix(ctx context.Context, idPrefix string) ([]Object, error) {
	p := t.prefix()
	resp, err := t.s.cli.Get(ctx, p+idPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, wrapEtcd(err)
	}
	out := make([]Object, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		v, err := t.s.open(string(kv.Key), kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, Object{ID: string(kv.Key[len(p):]), Value: v, CreateRev: kv.CreateRevision, ModRev: kv.ModRevision})
	}
	return out, nil
}

// Update replaces the object's value if its current revision is rev. The name
// is unchanged; renames are not supported by any object hush stores yet.
func (t *Table) Update(ctx context.Context, id string, rev int64, val []byte, extra ...Op) (int64, error) {
	return t.UpdateGuarded(ctx, id, rev, val, nil, extra...)
}

// UpdateGuarded is Update with extra preconditions; a failed guard yields
// ErrGuard so the caller can re-read and explain which one failed.
func (t *Table) UpdateGuarded(ctx context.Context, id string, rev int64, val []byte, guards []Cond, extra ...Op) (int64, error) {
	k := t.objKey(id)
	cmps := etcdCmps([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", rev)}, guards)
	ops, release, err := t.s.sealOps(etcdOps([]clientv3.Op{clientv3.OpPut(k, string(val))}, extra))
	if err != nil {
		return 0, err
	}
	defer release()
	if err := t.s.quota.check(ctx, t.s.cli, opsCost(ops)); err != nil {
		return 0, err
	}
	resp, err := t.s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(k, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return 0, t.s.writeErr(err)
	}
	if !resp.Succeeded {
		return 0, t.failure(resp, len(guards) > 0)
	}
	return resp.Header.Revision, nil
}

// Delete removes the object and its name claim if its revision is rev (0
// skips that check) and every guard holds.
func (t *Table) Delete(ctx context.Context, id, name string, rev int64, guards []Cond, extra ...Op) error {
	k := t.objKey(id)
	var cmps []clientv3.Cmp
	if rev != 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
	} else {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), ">", 0))
	}
	cmps = etcdCmps(cmps, guards)
	ops := etcdOps([]clientv3.Op{clientv3.OpDelete(k)}, extra)
	if name != "" {
		nk, err := t.NameKey(ctx, name)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpDelete(nk))
	}
	ops, release, err := t.s.sealOps(ops)
	if err != nil {
		return err
	}
	defer release()
	resp, err := t.s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(k, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return t.s.writeErr(err)
	}
	if !resp.Succeeded {
		return t.failure(resp, len(guards) > 0)
	}
	t.s.quota.afterDelete()
	return nil
}

// failure tells apart "gone", "changed" and "guard failed" from the Else get.
func (t *Table) failure(resp *clientv3.TxnResponse, guarded bool) error {
	if len(resp.Responses) == 0 {
		return ErrNotFound
	}
	r := resp.Responses[0].GetResponseRange()
	if r == nil || len(r.Kvs) == 0 {
		return ErrNotFound
	}
	if guarded {
		// The object exists; either its revision or a guard failed. Callers
		// that guard re-read to explain; they can retry on ErrStale too.
		return ErrGuard
	}
	return ErrStale
}

// Revision returns the store's current revision (a linearizable read).
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.cli.Get(ctx, root+"\x00revision-probe", clientv3.WithCountOnly())
	if err != nil {
		return 0, wrapEtcd(err)
	}
	return resp.Header.Revision, nil
}

// wrapEtcd maps transport and server failures to Unavailable: the caller
// cannot tell whether etcd lost quorum, is stopping, or timed out, and the
// right client action in each case is to retry later.
func wrapEtcd(err error) error {
	if isNoLeader(err) {
		return fmt.Errorf("store: etcd: %w: %w", errdefs.ErrNoLeader, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("store: %w: %w", errdefs.ErrUnavailable, err)
	}
	return fmt.Errorf("store: etcd: %w: %w", errdefs.ErrUnavailable, err)
}

// writeErr maps a failed write: etcd's NOSPACE is the store being full
// (the client can free space), not a transient failure to retry.
func (s *Store) writeErr(err error) error {
	if isTooLarge(err) {
		return errTooLarge
	}
	if !isNoSpace(err) {
		return wrapEtcd(err)
	}
	if s.quota == nil {
		return fmt.Errorf("%w: %w", ErrNoSpace, errdefs.NoSpace("the cluster store is full: remove unused secrets, configs, services or networks to free space"))
	}
	s.quota.mu.Lock()
	s.quota.pressure = true
	s.quota.mu.Unlock()
	_, inUse := s.quota.sizes()
	return s.quota.errFull(inUse)
}

// opsCost estimates what ops add to the store (keys and values put).
func opsCost(ops []clientv3.Op) int {
	n := 0
	for _, op := range ops {
		if op.IsPut() {
			n += len(op.KeyBytes()) + len(op.ValueBytes()) + 256
		}
	}
	return n
}

// Key is the etcd key of the object id, for guards in other tables' writes.
func (t *Table) Key(id string) string { return t.objKey(id) }

// Resolve finds the object ref names, in dockerd's order: full ID, name
// (case-insensitive), then unique ID prefix. noun names the kind in errors
// ("secret db is ambiguous (2 matches found)").
func (t *Table) Resolve(ctx context.Context, noun, ref string) (Object, error) {
	if ref == "" {
		return Object{}, errdefs.NotFound("%s %s not found", noun, ref)
	}
	if o, err := t.Get(ctx, ref); err == nil {
		return o, nil
	} else if !errors.Is(err, ErrNotFound) {
		return Object{}, err
	}
	if id, err := t.LookupName(ctx, ref); err == nil {
		o, err := t.Get(ctx, id)
		if err == nil {
			return o, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return Object{}, err
		}
	} else if !errors.Is(err, ErrNotFound) {
		return Object{}, err
	}
	objs, err := t.ListPrefix(ctx, ref)
	if err != nil {
		return Object{}, err
	}
	switch len(objs) {
	case 0:
		return Object{}, errdefs.NotFound("%s %s not found", noun, ref)
	case 1:
		return objs[0], nil
	}
	return Object{}, errdefs.BadRequest("%s %s is ambiguous (%d matches found)", noun, ref, len(objs))
}

// CreateGuarded is Create with extra preconditions (e.g. that referenced
// objects exist); a failed guard yields ErrGuard, a taken name ErrNameTaken.
func (t *Table) CreateGuarded(ctx context.Context, id, name string, val []byte, guards []Cond, extra ...Op) (int64, error) {
	if len(guards) == 0 {
		return t.Create(ctx, id, name, val, extra...)
	}
	puts := []clientv3.Op{clientv3.OpPut(t.objKey(id), string(val))}
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(t.objKey(id)), "=", 0)}
	if name != "" {
		// As in Create: an unnamed object (a task) claims no name.
		nk, err := t.NameKey(ctx, name)
		if err != nil {
			return 0, err
		}
		puts = append(puts, clientv3.OpPut(nk, id))
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(nk), "=", 0))
	}
	ops, release, err := t.s.sealOps(etcdOps(puts, extra))
	if err != nil {
		return 0, err
	}
	defer release()
	if err := t.s.quota.check(ctx, t.s.cli, opsCost(ops)); err != nil {
		return 0, err
	}
	resp, err := t.s.cli.Txn(ctx).If(etcdCmps(nil, guards)...).Then(clientv3.OpTxn(cmps, ops, nil)).Commit()
	if err != nil {
		return 0, t.s.writeErr(err)
	}
	if !resp.Succeeded {
		return 0, ErrGuard
	}
	if !resp.Responses[0].GetResponseTxn().Succeeded {
		return 0, ErrNameTaken
	}
	return resp.Header.Revision, nil
}
