package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// countKV counts the requests that reach etcd: on a cluster each write is
// a raft round, and each linearizable read a read-index round to the
// leader.
type countKV struct {
	clientv3.KV
	gets, puts, deletes, txns, dos atomic.Int32
}

func (k *countKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	k.gets.Add(1)
	return k.KV.Get(ctx, key, opts...)
}

func (k *countKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	k.puts.Add(1)
	return k.KV.Put(ctx, key, val, opts...)
}

func (k *countKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	k.deletes.Add(1)
	return k.KV.Delete(ctx, key, opts...)
}

func (k *countKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	k.dos.Add(1)
	return k.KV.Do(ctx, op)
}

func (k *countKV) Txn(ctx context.Context) clientv3.Txn {
	k.txns.Add(1)
	return k.KV.Txn(ctx)
}

func (k *countKV) String() string {
	return fmt.Sprintf("%d gets, %d puts, %d deletes, %d txns, %d dos", k.gets.Load(), k.puts.Load(), k.deletes.Load(), k.txns.Load(), k.dos.Load())
}

// A create is one etcd request: one transaction holding the record and
// its name claim, with no read before it (the index key is cached after
// first use). On a cluster that is one raft round per create, the least a
// quorum-durable write can cost (docs/PERFORMANCE.md, "Cluster").
func TestCreateIsOneRequest(t *testing.T) {
	s := openLeaderChangeStore(t)
	ctx := t.Context()
	tbl := s.Table("secrets")
	if _, err := tbl.Create(ctx, "warm", "warm", []byte("v")); err != nil {
		t.Fatal(err)
	}
	kv := &countKV{KV: s.cli.KV}
	s.cli.KV = kv
	const n = 5
	for i := range n {
		if _, err := tbl.Create(ctx, fmt.Sprintf("id%d", i), fmt.Sprintf("name%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if kv.txns.Load() != n || kv.gets.Load()+kv.puts.Load()+kv.deletes.Load()+kv.dos.Load() != 0 {
		t.Fatalf("%d creates made %s; want %d txns and nothing else", n, kv, n)
	}
}
