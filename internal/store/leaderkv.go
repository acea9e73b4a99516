package store

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// errNoLeaderHere is a request refused before reaching raft because this
// member knows no leader.
var errNoLeaderHere = errors.New("this member knows no leader")

// leaderKV fails a request at once while the member knows no leader: the
// in-process client skips etcd's gRPC interceptors (which refuse such
// requests for remote clients), and raft would otherwise hold a proposal
// until etcd's request timeout (5 s plus two election timeouts). Only a
// serializable read, which the member answers from its own data, passes.
type leaderKV struct {
	clientv3.KV
	hasLeader func() bool
}

func (k leaderKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if !k.hasLeader() {
		return nil, errNoLeaderHere
	}
	return k.KV.Put(ctx, key, val, opts...)
}

func (k leaderKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if !clientv3.OpGet(key, opts...).IsSerializable() && !k.hasLeader() {
		return nil, errNoLeaderHere
	}
	return k.KV.Get(ctx, key, opts...)
}

func (k leaderKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	if !k.hasLeader() {
		return nil, errNoLeaderHere
	}
	return k.KV.Delete(ctx, key, opts...)
}

func (k leaderKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	if !k.hasLeader() {
		return nil, errNoLeaderHere
	}
	return k.KV.Compact(ctx, rev, opts...)
}

func (k leaderKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	if !(op.IsGet() && op.IsSerializable()) && !k.hasLeader() {
		return clientv3.OpResponse{}, errNoLeaderHere
	}
	return k.KV.Do(ctx, op)
}

func (k leaderKV) Txn(ctx context.Context) clientv3.Txn {
	if !k.hasLeader() {
		return failedTxn{}
	}
	return k.KV.Txn(ctx)
}

// failedTxn is a transaction that fails on Commit with errNoLeaderHere.
type failedTxn struct{}

func (t failedTxn) If(...clientv3.Cmp) clientv3.Txn      { return t }
func (t failedTxn) Then(...clientv3.Op) clientv3.Txn     { return t }
func (t failedTxn) Else(...clientv3.Op) clientv3.Txn     { return t }
func (failedTxn) Commit() (*clientv3.TxnResponse, error) { return nil, errNoLeaderHere }

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
