package store

import (
	"context"
	"io"
	"log/slog"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Detached is the store of a node that holds none: a worker (issue 9).
// Nothing runs behind it (no embedded etcd, no connection, no file) and
// every request fails with refusal, an errdefs category the caller picks
// (a worker's is Swarm's not-a-manager 503). It exists so that the parts
// built on a store, and any caller that reads one, get an error instead of
// a nil store, which would crash the daemon.
func Detached(refusal error, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cli := clientv3.NewCtxClient(context.Background())
	r := refused{err: refusal}
	cli.KV, cli.Watcher, cli.Lease, cli.Cluster, cli.Maintenance = r, r, r, r, r
	s := newStore(cli, log, nil)
	s.detached = refusal
	s.closeFn = func() error {
		// Its error is the cancelled context it always ends with.
		_ = cli.Close()
		return nil
	}
	return s
}

// IsDetached reports whether s is a Detached store.
func IsDetached(s *Store) bool { return s != nil && s.detached != nil }

// refused answers every etcd request of a Detached store with its error.
type refused struct{ err error }

var (
	_ clientv3.KV          = refused{}
	_ clientv3.Watcher     = refused{}
	_ clientv3.Lease       = refused{}
	_ clientv3.Cluster     = refused{}
	_ clientv3.Maintenance = refused{}
)

func (r refused) Put(context.Context, string, string, ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	return nil, r.err
}
func (r refused) Get(context.Context, string, ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return nil, r.err
}
func (r refused) Delete(context.Context, string, ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	return nil, r.err
}
func (r refused) Compact(context.Context, int64, ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	return nil, r.err
}
func (r refused) Do(context.Context, clientv3.Op) (clientv3.OpResponse, error) {
	return clientv3.OpResponse{}, r.err
}
func (r refused) Txn(context.Context) clientv3.Txn { return refusedTxn(r) }

type refusedTxn refused

func (t refusedTxn) If(...clientv3.Cmp) clientv3.Txn  { return t }
func (t refusedTxn) Then(...clientv3.Op) clientv3.Txn { return t }
func (t refusedTxn) Else(...clientv3.Op) clientv3.Txn { return t }
func (t refusedTxn) Commit() (*clientv3.TxnResponse, error) {
	return nil, t.err
}

// Watch delivers nothing and ends with its context: a watcher that
// retried an ended watch at once would spin.
func (r refused) Watch(ctx context.Context, _ string, _ ...clientv3.OpOption) clientv3.WatchChan {
	ch := make(chan clientv3.WatchResponse)
	context.AfterFunc(ctx, func() { close(ch) })
	return ch
}
func (r refused) RequestProgress(context.Context) error { return r.err }
func (r refused) Close() error                          { return nil }

func (r refused) Grant(context.Context, int64) (*clientv3.LeaseGrantResponse, error) {
	return nil, r.err
}
func (r refused) Revoke(context.Context, clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	return nil, r.err
}
func (r refused) TimeToLive(context.Context, clientv3.LeaseID, ...clientv3.LeaseOption) (*clientv3.LeaseTimeToLiveResponse, error) {
	return nil, r.err
}
func (r refused) Leases(context.Context) (*clientv3.LeaseLeasesResponse, error) {
	return nil, r.err
}
func (r refused) KeepAlive(context.Context, clientv3.LeaseID) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	return nil, r.err
}
func (r refused) KeepAliveOnce(context.Context, clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	return nil, r.err
}

func (r refused) MemberList(context.Context, ...clientv3.OpOption) (*clientv3.MemberListResponse, error) {
	return nil, r.err
}
func (r refused) MemberAdd(context.Context, []string) (*clientv3.MemberAddResponse, error) {
	return nil, r.err
}
func (r refused) MemberAddAsLearner(context.Context, []string) (*clientv3.MemberAddResponse, error) {
	return nil, r.err
}
func (r refused) MemberRemove(context.Context, uint64) (*clientv3.MemberRemoveResponse, error) {
	return nil, r.err
}
func (r refused) MemberUpdate(context.Context, uint64, []string) (*clientv3.MemberUpdateResponse, error) {
	return nil, r.err
}
func (r refused) MemberPromote(context.Context, uint64) (*clientv3.MemberPromoteResponse, error) {
	return nil, r.err
}

func (r refused) AlarmList(context.Context) (*clientv3.AlarmResponse, error) { return nil, r.err }
func (r refused) AlarmDisarm(context.Context, *clientv3.AlarmMember) (*clientv3.AlarmResponse, error) {
	return nil, r.err
}
func (r refused) Defragment(context.Context, string) (*clientv3.DefragmentResponse, error) {
	return nil, r.err
}
func (r refused) Status(context.Context, string) (*clientv3.StatusResponse, error) {
	return nil, r.err
}
func (r refused) HashKV(context.Context, string, int64) (*clientv3.HashKVResponse, error) {
	return nil, r.err
}
func (r refused) SnapshotWithVersion(context.Context) (*clientv3.SnapshotResponse, error) {
	return nil, r.err
}
func (r refused) Snapshot(context.Context) (io.ReadCloser, error) { return nil, r.err }
func (r refused) MoveLeader(context.Context, uint64) (*clientv3.MoveLeaderResponse, error) {
	return nil, r.err
}
func (r refused) Downgrade(context.Context, clientv3.DowngradeAction, string) (*clientv3.DowngradeResponse, error) {
	return nil, r.err
}
