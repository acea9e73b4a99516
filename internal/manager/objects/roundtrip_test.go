package objects

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// requestCount counts every request the manager sends to etcd.
type requestCount struct {
	clientv3.KV
	n atomic.Int32
}

func (k *requestCount) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	k.n.Add(1)
	return k.KV.Get(ctx, key, opts...)
}

func (k *requestCount) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	k.n.Add(1)
	return k.KV.Put(ctx, key, val, opts...)
}

func (k *requestCount) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	k.n.Add(1)
	return k.KV.Delete(ctx, key, opts...)
}

func (k *requestCount) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	k.n.Add(1)
	return k.KV.Do(ctx, op)
}

func (k *requestCount) Txn(ctx context.Context) clientv3.Txn {
	k.n.Add(1)
	return k.KV.Txn(ctx)
}

// Creating a secret is one etcd request once the manager's keys are
// loaded: on a cluster, one raft round and no read-index round per create.
func TestCreateIsOneEtcdRequest(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := t.Context()
	if _, err := m.Create(ctx, Spec{Name: "warm", Data: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	cli := st.Client()
	kv := &requestCount{KV: cli.KV}
	cli.KV = kv
	const n = 5
	for i := range n {
		if _, err := m.Create(ctx, Spec{Name: fmt.Sprintf("s%d", i), Data: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	if got := kv.n.Load(); got != n {
		t.Fatalf("%d creates sent %d etcd requests, want %d", n, got, n)
	}
}
