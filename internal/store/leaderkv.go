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
type leaderKV struct {
	clientv3.KV
	gate *leaderGate
}

func newLeaderKV(kv clientv3.KV, has func() bool, grace time.Duration) leaderKV {
	return leaderKV{KV: kv, gate: &leaderGate{has: has, grace: grace}}
}

// leaderGate waits out elections (see leaderKV).
type leaderGate struct {
	has   func() bool
	grace time.Duration
	mu    sync.Mutex
	// lostAt is when the member was first seen without a leader (zero
	// while one is known).
	lostAt time.Time
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

func (k leaderKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if !k.gate.await(ctx) {
		return nil, errNoLeaderHere
	}
	return k.KV.Put(ctx, key, val, opts...)
}

func (k leaderKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if !clientv3.OpGet(key, opts...).IsSerializable() && !k.gate.await(ctx) {
		return nil, errNoLeaderHere
	}
	return k.KV.Get(ctx, key, opts...)
}

func (k leaderKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	if !k.gate.await(ctx) {
		return nil, errNoLeaderHere
	}
	return k.KV.Delete(ctx, key, opts...)
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

// Txn waits for a leader on Commit, where the request is made.
func (k leaderKV) Txn(ctx context.Context) clientv3.Txn {
	return gatedTxn{Txn: k.KV.Txn(ctx), ctx: ctx, gate: k.gate}
}

type gatedTxn struct {
	clientv3.Txn
	ctx  context.Context
	gate *leaderGate
}

func (t gatedTxn) If(c ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(c...)
	return t
}

func (t gatedTxn) Then(o ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Then(o...)
	return t
}

func (t gatedTxn) Else(o ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(o...)
	return t
}

func (t gatedTxn) Commit() (*clientv3.TxnResponse, error) {
	if !t.gate.await(t.ctx) {
		return nil, errNoLeaderHere
	}
	return t.Txn.Commit()
}

// noLeaderErrs are etcd's answers when a request could not get through
// raft for want of a leader: the request was not applied (a timeout may
// still commit later, but was not acknowledged, which is all a client was
// promised).
var noLeaderErrs = []error{
	errNoLeaderHere,
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
