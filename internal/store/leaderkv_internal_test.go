package store

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// okKV answers every write as applied.
type okKV struct{ clientv3.KV }

func (okKV) Put(context.Context, string, string, ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	return &clientv3.PutResponse{}, nil
}

func (okKV) Txn(context.Context) clientv3.Txn { return okTxn{} }

type okTxn struct{}

func (t okTxn) If(...clientv3.Cmp) clientv3.Txn  { return t }
func (t okTxn) Then(...clientv3.Op) clientv3.Txn { return t }
func (t okTxn) Else(...clientv3.Op) clientv3.Txn { return t }
func (okTxn) Commit() (*clientv3.TxnResponse, error) {
	return &clientv3.TxnResponse{Succeeded: true}, nil
}

// A write that arrives while the cluster elects a leader (a follower
// knows none for a moment: the old leader died, or handed over) waits for
// the new one instead of failing with "the swarm does not have a leader"
// on a healthy cluster. Once no leader has been known for the grace
// period (a quorum is lost), writes fail at once again.
func TestLeaderKVWaitsOutAnElection(t *testing.T) {
	const grace = 30 * time.Second // never reached: the leader comes first
	for _, tc := range []struct {
		name  string
		write func(kv clientv3.KV) error
	}{
		{"put", func(kv clientv3.KV) error { _, err := kv.Put(context.Background(), "k", "v"); return err }},
		{"txn", func(kv clientv3.KV) error { _, err := kv.Txn(context.Background()).Then().Commit(); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var polls atomic.Int32
			// The new leader is known from the third look on.
			kv := newLeaderKV(okKV{}, func() bool { return polls.Add(1) > 2 }, grace, nil)
			if err := tc.write(kv); err != nil {
				t.Fatalf("write during an election: %v", err)
			}
		})
	}

	t.Run("quorum lost", func(t *testing.T) {
		var polls atomic.Int32
		kv := newLeaderKV(okKV{}, func() bool { polls.Add(1); return false }, 50*time.Millisecond, nil)
		if _, err := kv.Put(context.Background(), "k", "v"); !errors.Is(err, errNoLeaderHere) {
			t.Fatalf("first write without a leader: %v", err)
		}
		before := polls.Load()
		if _, err := kv.Put(context.Background(), "k", "v"); !errors.Is(err, errNoLeaderHere) {
			t.Fatalf("second write without a leader: %v", err)
		}
		if n := polls.Load() - before; n != 1 {
			t.Fatalf("write after the grace period looked for a leader %d times, want once (fail at once)", n)
		}
	})

	t.Run("context ends the wait", func(t *testing.T) {
		kv := newLeaderKV(okKV{}, func() bool { return false }, grace, nil)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := kv.Put(ctx, "k", "v"); !errors.Is(err, errNoLeaderHere) {
			t.Fatalf("write with an ended context: %v", err)
		}
	})
}
