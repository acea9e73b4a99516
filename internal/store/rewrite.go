package store

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Whole-store rewrites (migration, master-key rotation) go through every
// key in pages, and write what changed in batches: each batch is one
// transaction that only applies if none of its records changed since the
// page was read, so a rewrite never loses a concurrent write, and a crash
// leaves every record either as it was or rewritten. Rerunning a rewrite
// skips what is done.
const (
	pageSize = 256
	// batchRecords bounds a batch's records (a migrated index entry is
	// two operations; etcd allows 128 per transaction).
	batchRecords = 48
	// batchBytes bounds a batch (a record past it is a batch of its own;
	// one record is at most about 2 MiB), so a batch stays under
	// MaxRequestBytes.
	batchBytes = 1 << 20
	maxRetries = 20
)

// rewriteFn returns the operations that rewrite kv (none if it is done),
// and how many wrapped keys they re-wrap or seal.
type rewriteFn func(kv *mvccpb.KeyValue) ([]clientv3.Op, int, error)

// rewriteAll applies fn to every key under the root but the lease-bound
// ones (see leaseBound). hook, if set, runs after each committed batch
// with the batch's number (from 1); an error from it stops the rewrite
// there, which is how tests simulate a crash.
func (s *Store) rewriteAll(ctx context.Context, fn rewriteFn, hook func(batch int) error) (int, error) {
	end := clientv3.GetPrefixRangeEnd(root)
	from := root
	total, batches := 0, 0
	for {
		var resp *clientv3.GetResponse
		var n int
		var err error
		for try := 0; ; try++ {
			resp, err = s.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(pageSize))
			if err != nil {
				return total, wrapEtcd(err)
			}
			var retry bool
			n, retry, err = s.rewritePage(ctx, resp.Kvs, fn, func() error {
				batches++
				if hook != nil {
					return hook(batches)
				}
				return nil
			})
			total += n
			if err != nil {
				return total, err
			}
			if !retry {
				break
			}
			if try >= maxRetries {
				return total, fmt.Errorf("store: records keep changing during a rewrite: %w", errdefs.ErrUnavailable)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return total, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// rewritePage writes one page in batches; retry reports a batch that lost
// a race with another writer (the page is then read again).
func (s *Store) rewritePage(ctx context.Context, kvs []*mvccpb.KeyValue, fn rewriteFn, committed func() error) (n int, retry bool, err error) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	records, size, pending := 0, 0, 0
	flush := func() error {
		if records == 0 {
			return nil
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return wrapEtcd(err)
		}
		if !resp.Succeeded {
			retry = true
			return nil
		}
		n += pending
		cmps, ops, records, size, pending = nil, nil, 0, 0, 0
		return committed()
	}
	for _, kv := range kvs {
		if leaseBound(string(kv.Key)) {
			continue
		}
		o, k, err := fn(kv)
		if err != nil {
			return n, false, err
		}
		if len(o) == 0 {
			continue
		}
		rsize := 0
		for _, op := range o {
			rsize += len(op.KeyBytes()) + len(op.ValueBytes())
		}
		// A record that would take the batch past batchBytes goes into
		// the next one: a batch is then no larger than one record or
		// batchBytes, which an external etcd run with its default request
		// limit (below MaxRequestBytes) accepts too.
		if records > 0 && size+rsize > batchBytes {
			if err := flush(); err != nil || retry {
				return n, retry, err
			}
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision))
		ops = append(ops, o...)
		records++
		pending += k
		size += rsize
		if records >= batchRecords || size >= batchBytes {
			if err := flush(); err != nil || retry {
				return n, retry, err
			}
		}
	}
	err = flush()
	return n, retry, err
}

// InnerFunc re-wraps the keys sealed inside one decoded record of a table
// (a secret's data, sealed by its manager under the master key too). It
// calls rewrap on each such sealed value and returns the record with the
// results and how many it re-wrapped (0: out is ignored). It must not keep
// plain, which is wiped afterwards.
type InnerFunc func(id string, plain []byte, rewrap func(s keyring.Sealed, aad []byte) (keyring.Sealed, error)) (out []byte, n int, err error)

// RegisterInner declares that records of kind hold values sealed by the
// keyring inside them, and how to re-wrap them. Call before Rewrap runs.
func (s *Store) RegisterInner(kind string, fn InnerFunc) {
	s.innerMu.Lock()
	defer s.innerMu.Unlock()
	s.inner[kind] = fn
}

func (s *Store) innerOf(key string) (InnerFunc, string) {
	rest, ok := strings.CutPrefix(key, root)
	if !ok {
		return nil, ""
	}
	kind, id, ok := strings.Cut(rest, "/")
	if !ok || strings.Contains(id, "/") {
		return nil, ""
	}
	s.innerMu.Lock()
	defer s.innerMu.Unlock()
	return s.inner[kind], id
}

// Rewrap re-wraps, under the keyring's current master key, every data key
// in the store that another master key wraps: each value's own, and those
// sealed inside records (see RegisterInner), the index key's too (so the
// index is never re-keyed). Values are not re-encrypted. It returns how
// many wrapped keys it re-wrapped. The store keeps serving meanwhile.
func (s *Store) Rewrap(ctx context.Context, hook func(batch int) error) (int, error) {
	kr, err := s.keyring()
	if err != nil {
		return 0, err
	}
	cur, err := kr.CurrentID()
	if err != nil {
		return 0, err
	}
	return s.rewriteAll(ctx, func(kv *mvccpb.KeyValue) ([]clientv3.Op, int, error) {
		key := string(kv.Key)
		sv, err := envelope(kv.Value)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", key, err)
		}
		aad := valueAAD(key)
		if fn, id := s.innerOf(key); fn != nil {
			pt, err := kr.Open(sv, aad)
			if err != nil {
				return nil, 0, fmt.Errorf("store: open %s: %w: %w", key, errdefs.ErrInternal, err)
			}
			out, k, err := fn(id, pt, kr.Rewrap)
			clear(pt)
			if err != nil {
				return nil, 0, fmt.Errorf("store: re-wrap inside %s: %w", key, err)
			}
			if k > 0 {
				// The record changed: seal it afresh (under the current key).
				sealed, err := kr.Seal(out, aad)
				clear(out)
				if err != nil {
					return nil, 0, err
				}
				v, err := encodeSealed(sealed)
				if err != nil {
					return nil, 0, err
				}
				return []clientv3.Op{clientv3.OpPut(key, v)}, k + 1, nil
			}
		}
		if sv.KeyID == cur {
			return nil, 0, nil
		}
		re, err := kr.Rewrap(sv, aad)
		if err != nil {
			return nil, 0, fmt.Errorf("store: re-wrap %s: %w", key, err)
		}
		v, err := encodeSealed(re)
		if err != nil {
			return nil, 0, err
		}
		return []clientv3.Op{clientv3.OpPut(key, v)}, 1, nil
	}, hook)
}

// Referencing counts the values that still need the master key keyID to
// open: sealed under it, or holding a value sealed under it (the keyring's
// sealed values name their key as "kid" in JSON, so a record whose inner
// seals no InnerFunc re-wraps is found too). A rotation destroys the old
// key only when this is 0.
func (s *Store) Referencing(ctx context.Context, keyID string) (int, error) {
	kr, err := s.keyring()
	if err != nil {
		return 0, err
	}
	needle := []byte(`"kid":"` + keyID + `"`)
	count := 0
	_, err = s.rewriteAll(ctx, func(kv *mvccpb.KeyValue) ([]clientv3.Op, int, error) {
		key := string(kv.Key)
		sv, err := envelope(kv.Value)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", key, err)
		}
		if sv.KeyID == keyID {
			count++
			return nil, 0, nil
		}
		pt, err := kr.Open(sv, valueAAD(key))
		if err != nil {
			return nil, 0, fmt.Errorf("store: open %s: %w: %w", key, errdefs.ErrInternal, err)
		}
		if bytes.Contains(pt, needle) {
			count++
		}
		clear(pt)
		return nil, 0, nil
	}, nil)
	return count, err
}

// CompactAll drops every old revision and, for an embedded member,
// rewrites the backend file without its free pages, so that values that
// were overwritten (sealed under a retired key, or in the clear before a
// migration) leave the database file. etcd's WAL still holds them until it
// moves to a new segment (see docs/DESIGN.md).
//
// On an external cluster it does nothing: compaction there is cluster-wide
// and would cut the history other clients of that etcd watch; the values
// it would drop are sealed under keys hush has retired (hush never wrote
// clear values there, so there is nothing to migrate away).
func (s *Store) CompactAll(ctx context.Context) error {
	if s.external {
		return nil
	}
	rev, err := s.Revision(ctx)
	if err != nil {
		return err
	}
	if _, err := s.cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil && !isCompacted(err) {
		return wrapEtcd(err)
	}
	if s.defrag != nil {
		if err := s.defrag(); err != nil {
			return fmt.Errorf("store: defragment: %w: %w", errdefs.ErrUnavailable, err)
		}
	}
	return nil
}

// leaseBound reports whether key lives under a lease and is stored
// unsealed (an election's keys, presence claims): a rewrite leaves such
// keys alone, since their readers (etcd's election, Present) read them raw
// and they hold no secret; they vanish with their leases anyway.
func leaseBound(key string) bool {
	return strings.HasPrefix(key, electionRoot) || strings.HasPrefix(key, presenceRoot)
}
