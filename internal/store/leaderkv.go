package store

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// errNoLeaderHere is a request refused before reaching raft because this
// member knows no leader.
var errNoLeaderHere = errors.New("this member knows no leader")

// leaderKV fails a request while the member knows no leader: the
// in-process client skips etcd's gRPC interceptors, and raft would
// otherwise hold a proposal until etcd's request timeout (5 s plus two
// election timeouts). Only a serializable read, which the member answers
// from its own data, passes.
//
// A member also knows no leader for a moment during every election (a
// leader died, or handed over): a request then waits for the new leader,
// up to grace after the member was first seen leaderless, so a healthy
// cluster does not answer "no leader". Past grace the quorum is taken as
// lost, and requests fail at once until a leader is known again.
//
// A write in flight when a new leader is elected is given up at once
// (errLeaderChangedHere) rather than left to etcd's request timeout: a
// proposal this member forwarded to a leader that died is dropped with it,
// and etcd would answer it only after 5 s plus two election timeouts
// (10 s with hush's cluster timing). Such a write may still be applied (the
// dead leader may have replicated it first); it was not acknowledged, as
// with etcd's own timeout, and Table.Create retries it and tells which.
type leaderKV struct {
	clientv3.KV
	gate *leaderGate
}

// newLeaderKV gates kv on has; changed, when not nil, returns a channel
// that is closed when this member next learns of a new leader (etcd's
// LeaderChangedNotify).
func newLeaderKV(kv clientv3.KV, has func() bool, grace time.Duration, changed func() <-chan struct{}) leaderKV {
	return leaderKV{KV: kv, gate: &leaderGate{has: has, grace: grace, changed: changed}}
}

// leaderGate waits out elections (see leaderKV).
type leaderGate struct {
	has   func() bool
	grace time.Duration
	mu    sync.Mutex
	// lostAt is when the member was first seen without a leader (zero
	// while one is known).
	lostAt time.Time
	// changed: see newLeaderKV (nil: writes wait for etcd's answer).
	changed func() <-chan struct{}
}

// errLeaderChangedHere is a write given up because a new leader was elected
// while it was in flight (see leaderKV): it may or may not be applied.
var errLeaderChangedHere = errors.New("a new leader was elected while the write was in flight: it may or may not have been applied")

// write runs do, a write, with a context that ends when a new leader is
// elected; a write ended so fails with errLeaderChangedHere.
func (g *leaderGate) write(ctx context.Context, do func(context.Context) error) error {
	if !g.await(ctx) {
		return errNoLeaderHere
	}
	if g.changed == nil {
		return do(ctx)
	}
	changed := g.changed()
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-changed:
			cancel(errLeaderChangedHere)
		case <-stop:
		}
	}()
	err := do(wctx)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(wctx), errLeaderChangedHere) {
		return errLeaderChangedHere
	}
	return err
}

// leaderPoll is how often a waiting request looks for the new leader; an
// election takes at least an election timeout, so this costs little.
const leaderPoll = 10 * time.Millisecond

func (g *leaderGate) await(ctx context.Context) bool {
	if g.seen() {
		return true
	}
	g.mu.Lock()
	if g.lostAt.IsZero() {
		g.lostAt = time.Now()
	}
	left := time.Until(g.lostAt.Add(g.grace))
	g.mu.Unlock()
	if left <= 0 {
		return false
	}
	deadline := time.NewTimer(left)
	defer deadline.Stop()
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return g.seen()
		case <-tick.C:
			if g.seen() {
				return true
			}
		}
	}
}

func (g *leaderGate) seen() bool {
	if !g.has() {
		return false
	}
	g.mu.Lock()
	g.lostAt = time.Time{}
	g.mu.Unlock()
	return true
}

func (k leaderKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (resp *clientv3.PutResponse, err error) {
	err = k.gate.write(ctx, func(ctx context.Context) error {
		resp, err = k.KV.Put(ctx, key, val, opts...)
		return err
	})
	return resp, err
}

func (k leaderKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if !clientv3.OpGet(key, opts...).IsSerializable() && !k.gate.await(ctx) {
		return nil, errNoLeaderHere
	}
	return k.KV.Get(ctx, key, opts...)
}

func (k leaderKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (resp *clientv3.DeleteResponse, err error) {
	err = k.gate.write(ctx, func(ctx context.Context) error {
		resp, err = k.KV.Delete(ctx, key, opts...)
		return err
	})
	return resp, err
}

func (k leaderKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	if !k.gate.await(ctx) {
		return nil, errNoLeaderHere
	}
	return k.KV.Compact(ctx, rev, opts...)
}

func (k leaderKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	if !(op.IsGet() && op.IsSerializable()) && !k.gate.await(ctx) {
		return clientv3.OpResponse{}, errNoLeaderHere
	}
	return k.KV.Do(ctx, op)
}

// Txn waits for a leader on Commit, where the request is made. A
// clientv3.Txn holds the context it was made with, so the transaction is
// built on Commit, under the context that a leader change ends.
func (k leaderKV) Txn(ctx context.Context) clientv3.Txn {
	return &gatedTxn{kv: k.KV, ctx: ctx, gate: k.gate}
}

type gatedTxn struct {
	kv              clientv3.KV
	ctx             context.Context
	gate            *leaderGate
	cmps            []clientv3.Cmp
	then, otherwise []clientv3.Op
}

func (t *gatedTxn) If(c ...clientv3.Cmp) clientv3.Txn {
	t.cmps = append(t.cmps, c...)
	return t
}

func (t *gatedTxn) Then(o ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, o...)
	return t
}

func (t *gatedTxn) Else(o ...clientv3.Op) clientv3.Txn {
	t.otherwise = append(t.otherwise, o...)
	return t
}

func (t *gatedTxn) Commit() (resp *clientv3.TxnResponse, err error) {
	err = t.gate.write(t.ctx, func(ctx context.Context) error {
		resp, err = t.kv.Txn(ctx).If(t.cmps...).Then(t.then...).Else(t.otherwise...).Commit()
		return err
	})
	return resp, err
}

// noLeaderErrs are etcd's answers when a request was not acknowledged
// for want of a leader. The outcome is unknown, not "not applied": a
// timeout, or a write the gate ended at a leader change, may have been
// committed (or commit later). Only an acknowledgement is a promise, so
// callers that must know re-read (Table.Create recognises its own sealed
// value) or retry idempotently.
var noLeaderErrs = []error{
	errNoLeaderHere,
	errLeaderChangedHere,
	rpctypes.ErrNoLeader,
	rpctypes.ErrTimeout,
	rpctypes.ErrTimeoutDueToLeaderFail,
	rpctypes.ErrTimeoutDueToConnectionLost,
	rpctypes.ErrLeaderChanged,
	rpctypes.ErrNotCapable,
}

func isNoLeader(err error) bool {
	desc := rpctypes.ErrorDesc(err)
	for _, e := range noLeaderErrs {
		if errors.Is(err, e) || desc == rpctypes.ErrorDesc(e) {
			return true
		}
	}
	return false
}
