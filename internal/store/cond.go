package store

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The store's own vocabulary for what a caller adds to a write: a Cond is a
// precondition the write's transaction checks, an Op an extra put or
// delete it commits with the object. They wrap etcd's so that no package
// outside this one depends on etcd's types (docs: "The store wrapper
// should not leak etcd's types to its callers"); each becomes exactly the
// etcd comparison or operation it names, in the same one transaction.

// Cond is a precondition of a write; a failed one yields ErrGuard.
type Cond struct{ cmp clientv3.Cmp }

// Exists holds while key exists.
func Exists(key string) Cond {
	return Cond{clientv3.Compare(clientv3.CreateRevision(key), ">", 0)}
}

// Absent holds while key does not exist.
func Absent(key string) Cond {
	return Cond{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}
}

// NoneUnder holds while no key starts with prefix (e.g. an object has no
// reference markers left: RefPrefix).
func NoneUnder(prefix string) Cond {
	return Cond{clientv3.Compare(clientv3.CreateRevision(prefix), "=", 0).WithPrefix()}
}

// AtRevision holds while key was last written at revision rev (an
// Object's ModRev): nobody changed it since it was read.
func AtRevision(key string, rev int64) Cond {
	return Cond{clientv3.Compare(clientv3.ModRevision(key), "=", rev)}
}

// Op is an extra write committed with a Table's write. A put's value is
// sealed as the object's is.
type Op struct{ op clientv3.Op }

// PutOp writes val under key.
func PutOp(key, val string) Op { return Op{clientv3.OpPut(key, val)} }

// DeleteOp removes key.
func DeleteOp(key string) Op { return Op{clientv3.OpDelete(key)} }

// IsPut reports whether op is a put (else a delete).
func (o Op) IsPut() bool { return o.op.IsPut() }

// Key is the key op writes: a transaction may name each key only once.
func (o Op) Key() string { return string(o.op.KeyBytes()) }

// etcdCmps appends the comparisons of conds to dst.
func etcdCmps(dst []clientv3.Cmp, conds []Cond) []clientv3.Cmp {
	for _, c := range conds {
		dst = append(dst, c.cmp)
	}
	return dst
}

// etcdOps appends the operations of ops to dst.
func etcdOps(dst []clientv3.Op, ops []Op) []clientv3.Op {
	for _, o := range ops {
		dst = append(dst, o.op)
	}
	return dst
}

// Apply commits ops in one transaction, unconditionally, each put's value
// sealed: for reference markers that belong to no object's write, and for
// tests.
func (s *Store) Apply(ctx context.Context, ops ...Op) error {
	eops, release, err := s.sealOps(etcdOps(nil, ops))
	if err != nil {
		return err
	}
	defer release()
	if _, err := s.cli.Txn(ctx).Then(eops...).Commit(); err != nil {
		return s.writeErr(err)
	}
	return nil
}

// Holds reports, with one linearizable transaction, whether every cond
// holds now (no write).
func (s *Store) Holds(ctx context.Context, conds ...Cond) (bool, error) {
	resp, err := s.cli.Txn(ctx).If(etcdCmps(nil, conds)...).Then(linearizable()).Commit()
	if err != nil {
		return false, wrapEtcd(err)
	}
	return resp.Succeeded, nil
}

// linearizable is the read that makes a transaction of compares alone a
// linearizable one. etcd serves a transaction without writes from the
// member's own state, without the quorum's read index, when every read in
// it is serializable, and one with no read counts as such
// (etcdserver/txn.IsTxnSerializable): reached through an external etcd's
// lagging member, a leadership's Check would then report a held
// leadership as lost, or a lost one as held. Counting one key that never
// exists returns nothing and costs no extra request.
func linearizable() clientv3.Op {
	return clientv3.OpGet(root+"\x00linearizable-probe", clientv3.WithCountOnly())
}

// KV is one stored key as etcd holds it: Value is still sealed (open it
// with OpenValue).
type KV struct {
	Key       string
	Value     []byte
	CreateRev int64
	ModRev    int64
}

// Event is one change a Watch reports: a put, or a delete (Deleted; its
// Value is empty and ModRev is the delete's revision).
type Event struct {
	KV
	Deleted bool
}

// ReadPrefixes reads every key under each prefix in one transaction (one
// revision, one etcd request) and returns them per prefix, with that
// revision. Values stay sealed. Errors are etcd's as they came, for the
// caller to categorise.
func (s *Store) ReadPrefixes(ctx context.Context, prefixes ...string) ([][]KV, int64, error) {
	ops := make([]clientv3.Op, 0, len(prefixes))
	for _, p := range prefixes {
		ops = append(ops, clientv3.OpGet(p, clientv3.WithPrefix()))
	}
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, 0, err
	}
	out := make([][]KV, len(resp.Responses))
	for i, r := range resp.Responses {
		kvs := r.GetResponseRange().GetKvs()
		out[i] = make([]KV, 0, len(kvs))
		for _, kv := range kvs {
			out[i] = append(out[i], KV{Key: string(kv.Key), Value: kv.Value, CreateRev: kv.CreateRevision, ModRev: kv.ModRevision})
		}
	}
	return out, resp.Header.Revision, nil
}

// Watch follows every key under prefix from revision from on, calling fn
// with each batch of events and the revision it brings the watcher to
// (progress notifications carry none); fn must not keep events, whose
// slice is reused. It requires a cluster leader, and
// returns when ctx ends or the watch breaks (compaction, a lost leader):
// the caller reloads and watches again.
func (s *Store) Watch(ctx context.Context, prefix string, from int64, fn func(events []Event, rev int64)) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from))
	var evs []Event
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return err
		}
		evs = evs[:0]
		for _, ev := range resp.Events {
			evs = append(evs, Event{
				KV:      KV{Key: string(ev.Kv.Key), Value: ev.Kv.Value, CreateRev: ev.Kv.CreateRevision, ModRev: ev.Kv.ModRevision},
				Deleted: ev.Type == clientv3.EventTypeDelete,
			})
		}
		fn(evs, resp.Header.Revision)
	}
	return errors.New("store: watch channel closed")
}

// Keys returns the keys under prefix in key order, at most limit of them
// (0: all), without their values. Errors are etcd's as they came.
func (s *Store) Keys(ctx context.Context, prefix string, limit int64) ([]string, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithKeysOnly()}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(limit), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	}
	resp, err := s.cli.Get(ctx, prefix, opts...)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key))
	}
	return out, nil
}

// EraseAll deletes every key of hush's (the store's root): the last
// manager leaving erases the cluster this way.
func (s *Store) EraseAll(ctx context.Context) error {
	if _, err := s.cli.Delete(ctx, root, clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("store: erase: %w", wrapEtcd(err))
	}
	return nil
}
