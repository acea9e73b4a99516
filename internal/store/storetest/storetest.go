// Package storetest starts a real embedded store for tests.
package storetest

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// New starts an embedded single-member etcd in a temp dir, sealing under a
// fresh master key, and closes it when the test ends.
func New(t testing.TB) *store.Store {
	t.Helper()
	return NewIn(t, t.TempDir(), NewKeys(t))
}

// NewKeys returns a holder loaded with a fresh master key.
func NewKeys(t testing.TB) *keyring.Holder {
	t.Helper()
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	var h keyring.Holder
	h.Set(kr)
	return &h
}

// NewIn starts the store in dir, sealing with keys.
func NewIn(t testing.TB, dir string, keys store.Keys) *store.Store {
	t.Helper()
	s, err := store.OpenEmbedded(context.Background(), store.EmbeddedConfig{
		Dir:          dir,
		Name:         "test",
		EtcdLogLevel: "error",
		Keys:         keys,
	})
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// RunMirror runs mir until the test ends and waits for its first snapshot.
func RunMirror(t testing.TB, mir *store.Mirror) *store.Mirror {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { mir.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := mir.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return mir
}

// The helpers below let tests outside internal/store look at and change
// what etcd holds, bypassing the store (sealing, tables), without
// depending on etcd's types themselves.

// RawValues returns every key under prefix with its value as stored
// (sealed).
func RawValues(ctx context.Context, st *store.Store, prefix string) (map[string][]byte, error) {
	resp, err := store.RawClient(st).Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out, nil
}

// Count is the number of keys under prefix.
func Count(ctx context.Context, st *store.Store, prefix string) (int64, error) {
	resp, err := store.RawClient(st).Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}

// ReadAt reads key as of revision rev: an error once that revision is
// compacted.
func ReadAt(ctx context.Context, st *store.Store, key string, rev int64) error {
	_, err := store.RawClient(st).Get(ctx, key, clientv3.WithRev(rev))
	return err
}

// RawPut writes val under key as is (unsealed, any key).
func RawPut(ctx context.Context, st *store.Store, key, val string) error {
	_, err := store.RawClient(st).Put(ctx, key, val)
	return err
}

// RawGet reads key as stored (a linearizable read); ok false if absent.
func RawGet(ctx context.Context, st *store.Store, key string) (val string, ok bool, err error) {
	resp, err := store.RawClient(st).Get(ctx, key)
	if err != nil || len(resp.Kvs) == 0 {
		return "", false, err
	}
	return string(resp.Kvs[0].Value), true, nil
}

// DeletePrefix deletes every key under prefix.
func DeletePrefix(ctx context.Context, st *store.Store, prefix string) error {
	_, err := store.RawClient(st).Delete(ctx, prefix, clientv3.WithPrefix())
	return err
}

// CountRequests counts from now on every request the store sends to etcd
// through its key-value interface (reads, writes, transactions), for tests
// that hold an operation to a number of round trips.
func CountRequests(st *store.Store) *atomic.Int32 {
	cli := store.RawClient(st)
	kv := &requestCount{KV: cli.KV}
	cli.KV = kv
	return &kv.n
}

// requestCount counts every request passed to KV.
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
