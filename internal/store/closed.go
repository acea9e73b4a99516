package store

import (
	"context"
	"fmt"
	"sync"

	"github.com/hush-secrets/hush/internal/errdefs"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrClosed answers a request made through a store after its Close began,
// or after its embedded member stopped (removed from its cluster): a
// caller that took the store before the daemon replaced it (a leave, a
// role change, an unlock) and used it after.
var ErrClosed = fmt.Errorf("store: this store was closed (the node left, changed role or was unlocked meanwhile): retry: %w", errdefs.ErrUnavailable)

// closingKV keeps the in-process client's requests off a stopped etcd
// server. That client calls the server directly, without gRPC's server
// that etcd stops first, and a read that runs while the server stops
// reads its closed backend: a nil pointer, a panic of the whole daemon.
// So Close ends the requests in flight (their contexts are cancelled) and
// waits for them before it stops the server, and refuses any request
// after; a request that the member's own stop (its removal from the
// cluster) catches in flight fails with ErrClosed instead of panicking.
type closingKV struct {
	clientv3.KV
	gate *closeGate
}

type closeGate struct {
	// mu is held for reading by each request, for writing by close.
	mu     sync.RWMutex
	closed bool
	life   context.Context
	end    context.CancelFunc
	// stopping is closed once the server begins to stop.
	stopping <-chan struct{}
}

func newClosingKV(kv clientv3.KV, stopping <-chan struct{}) closingKV {
	life, end := context.WithCancel(context.Background())
	return closingKV{KV: kv, gate: &closeGate{life: life, end: end, stopping: stopping}}
}

func (g *closeGate) stopped() bool {
	select {
	case <-g.stopping:
		return true
	default:
		return g.closed
	}
}

// run runs do, a request, unless the store is closed, with a context that
// close ends.
func (g *closeGate) run(ctx context.Context, do func(context.Context) error) (err error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.stopped() {
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(g.life, cancel)()
	defer func() {
		if r := recover(); r != nil {
			if !g.stopped() {
				panic(r)
			}
			err = ErrClosed
		}
	}()
	err = do(ctx)
	if err != nil && g.life.Err() != nil {
		err = ErrClosed
	}
	return err
}

// call runs fn, a direct call on the server's backend (a defragment, a
// commit), as run runs a request.
func (g *closeGate) call(fn func() error) error {
	return g.run(context.Background(), func(context.Context) error { return fn() })
}

// close ends the requests in flight, waits for them and refuses any
// after.
func (g *closeGate) close() {
	g.end()
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

func (k closingKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (resp *clientv3.PutResponse, err error) {
	err = k.gate.run(ctx, func(ctx context.Context) error {
		resp, err = k.KV.Put(ctx, key, val, opts...)
		return err
	})
	return resp, err
}

func (k closingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (resp *clientv3.GetResponse, err error) {
	err = k.gate.run(ctx, func(ctx context.Context) error {
		resp, err = k.KV.Get(ctx, key, opts...)
		return err
	})
	return resp, err
}

func (k closingKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (resp *clientv3.DeleteResponse, err error) {
	err = k.gate.run(ctx, func(ctx context.Context) error {
		resp, err = k.KV.Delete(ctx, key, opts...)
		return err
	})
	return resp, err
}

func (k closingKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (resp *clientv3.CompactResponse, err error) {
	err = k.gate.run(ctx, func(ctx context.Context) error {
		resp, err = k.KV.Compact(ctx, rev, opts...)
		return err
	})
	return resp, err
}

func (k closingKV) Do(ctx context.Context, op clientv3.Op) (resp clientv3.OpResponse, err error) {
	err = k.gate.run(ctx, func(ctx context.Context) error {
		resp, err = k.KV.Do(ctx, op)
		return err
	})
	return resp, err
}

// Txn is gated on Commit, where the request is made (a clientv3.Txn holds
// the context it was made with: it is built on Commit).
func (k closingKV) Txn(ctx context.Context) clientv3.Txn {
	return &closingTxn{kv: k.KV, ctx: ctx, gate: k.gate}
}

type closingTxn struct {
	kv              clientv3.KV
	ctx             context.Context
	gate            *closeGate
	cmps            []clientv3.Cmp
	then, otherwise []clientv3.Op
}

func (t *closingTxn) If(c ...clientv3.Cmp) clientv3.Txn {
	t.cmps = append(t.cmps, c...)
	return t
}

func (t *closingTxn) Then(o ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, o...)
	return t
}

func (t *closingTxn) Else(o ...clientv3.Op) clientv3.Txn {
	t.otherwise = append(t.otherwise, o...)
	return t
}

func (t *closingTxn) Commit() (resp *clientv3.TxnResponse, err error) {
	err = t.gate.run(t.ctx, func(ctx context.Context) error {
		resp, err = t.kv.Txn(ctx).If(t.cmps...).Then(t.then...).Else(t.otherwise...).Commit()
		return err
	})
	return resp, err
}
