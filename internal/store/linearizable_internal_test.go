package store

import (
	"context"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// txnRecordKV records the operations of every transaction committed
// through it.
type txnRecordKV struct {
	clientv3.KV
	mu   sync.Mutex
	txns [][]clientv3.Op
}

func (k *txnRecordKV) Txn(ctx context.Context) clientv3.Txn {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.txns = append(k.txns, nil)
	return &recordTxn{Txn: k.KV.Txn(ctx), k: k, i: len(k.txns) - 1}
}

type recordTxn struct {
	clientv3.Txn
	k *txnRecordKV
	i int
}

func (t *recordTxn) If(c ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(c...); return t }

func (t *recordTxn) Then(o ...clientv3.Op) clientv3.Txn {
	t.record(o)
	t.Txn = t.Txn.Then(o...)
	return t
}

func (t *recordTxn) Else(o ...clientv3.Op) clientv3.Txn {
	t.record(o)
	t.Txn = t.Txn.Else(o...)
	return t
}

func (t *recordTxn) record(o []clientv3.Op) {
	t.k.mu.Lock()
	defer t.k.mu.Unlock()
	t.k.txns[t.i] = append(t.k.txns[t.i], o...)
}

// linearizableTxn is etcd's own rule (etcdserver/txn.IsTxnSerializable,
// v3_server.go Txn): a transaction with no write is served from the
// member's own state, without asking the quorum for its read index,
// unless one of its reads is a linearizable one; with no read at all it
// counts as serializable.
func linearizableTxn(ops []clientv3.Op) bool {
	for _, op := range ops {
		if op.IsGet() && !op.IsSerializable() {
			return true
		}
		if !op.IsGet() {
			return true // a write goes through raft
		}
	}
	return false
}

// Leadership.Check and Store.Holds are the linearizable reads their
// callers rely on: Explain tells a deposed leader (stop) from a lost race
// (go on) with Check, and the daemon acts only on a leadership Check
// confirmed. A transaction of compares alone is one etcd answers from
// whichever member the client reached, as that member last applied: with
// an external etcd of several endpoints, a lagging member would report a
// held leadership as lost (a leader stepping down for nothing, its
// liveness loop stopped) or a lost one as held.
func TestLeadershipReadsAreLinearizable(t *testing.T) {
	s := openLeaderChangeStore(t)
	ctx := t.Context()
	l, err := s.Campaign(ctx, "orchestrator", "me", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rec := &txnRecordKV{KV: s.cli.KV}
	s.cli.KV = rec
	for _, tc := range []struct {
		name string
		read func() error
	}{
		{"Check", func() error { return l.Check(ctx) }},
		{"Holds", func() error { _, err := s.Holds(ctx, l.Guard()); return err }},
		{"Explain", func() error { _ = l.Explain(ctx, ErrGuard); return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec.mu.Lock()
			rec.txns = nil
			rec.mu.Unlock()
			if err := tc.read(); err != nil {
				t.Fatal(err)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.txns) != 1 {
				t.Fatalf("%d transactions, want one", len(rec.txns))
			}
			if !linearizableTxn(rec.txns[0]) {
				t.Fatalf("%s's transaction %v is served from one member's state: not linearizable", tc.name, rec.txns[0])
			}
		})
	}
}
