package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Leadership is won by Campaign: while it lasts, this process is the one
// that may act for name (e.g. the orchestrator). It ends when its lease
// expires (the process stalled or lost the quorum for longer than the
// TTL), when Resign is called, or when the store closes.
//
// Done closing is advice, not a guarantee: a process paused past its TTL
// still believes it leads until it looks. Every write that must only come
// from the leader carries Guard, so a deposed leader's write fails with
// ErrGuard instead of racing its successor.
type Leadership struct {
	s        *Store
	session  *concurrency.Session
	election *concurrency.Election
	key      string
	rev      int64
}

// ErrDeposed means the leadership a write was guarded by is over: the
// write changed nothing, and the former leader must stop acting (not
// retry). It wraps ErrGuard.
var ErrDeposed = fmt.Errorf("store: leadership lost: %w", ErrGuard)

// electionRoot holds the election keys, outside every table.
const electionRoot = root + "elections/"

// Campaign blocks until this process leads name, or ctx ends. ttl is how
// long a leader that stops renewing (crashed, partitioned) keeps the
// leadership before another campaigner takes over (etcd rounds it to whole
// seconds, at least 1). value is published for the others (e.g. the node
// ID) and returned by Leader.
func (s *Store) Campaign(ctx context.Context, name, value string, ttl time.Duration) (*Leadership, error) {
	if err := checkElectionName(name); err != nil {
		return nil, err
	}
	secs := max(int((ttl+time.Second-1)/time.Second), 1)
	// The lease is granted under ctx, and refused without a leader as
	// every write is: the session's own grant would run under its
	// long-lived context and wait out etcd's request timeout.
	if s.awaitLeader != nil && !s.awaitLeader(ctx) {
		return nil, fmt.Errorf("store: election session: %w: %w", ErrNoLeader, errNoLeaderHere)
	}
	lease, err := s.cli.Grant(ctx, int64(secs))
	if err != nil {
		return nil, fmt.Errorf("store: election session: %w", wrapEtcd(err))
	}
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(secs), concurrency.WithLease(lease.ID), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		s.revokeQuietly(ctx, lease.ID)
		return nil, fmt.Errorf("store: election session: %w", wrapEtcd(err))
	}
	el := concurrency.NewElection(sess, electionRoot+name)
	if err := el.Campaign(ctx, value); err != nil {
		// Not sess.Close: it revokes under a timeout of the whole TTL, and
		// a campaign ends this way when hushd stops, often because the
		// cluster lost its quorum (the other managers stopped first): the
		// stop then waited out the TTL.
		sess.Orphan()
		s.revokeQuietly(ctx, lease.ID)
		return nil, fmt.Errorf("store: campaign %s: %w", name, wrapEtcd(err))
	}
	return &Leadership{s: s, session: sess, election: el, key: el.Key(), rev: el.Rev()}, nil
}

// revokeTimeout bounds the revocation of a lease nobody will use: a
// tidiness, since the lease expires after its TTL anyway.
const revokeTimeout = 2 * time.Second

// revokeQuietly revokes a lease that would otherwise live out its TTL,
// within revokeTimeout and only while this member knows a leader (without
// one etcd would hold the request until the timeout for nothing). Its own
// failure is not reported: the lease expires regardless.
func (s *Store) revokeQuietly(ctx context.Context, id clientv3.LeaseID) {
	if !s.HasLeader() {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
	defer cancel()
	_, _ = s.cli.Revoke(rctx, id)
}

// Leader returns the value published by the current leader of name.
func (s *Store) Leader(ctx context.Context, name string) (string, error) {
	if err := checkElectionName(name); err != nil {
		return "", err
	}
	resp, err := s.cli.Get(ctx, electionRoot+name+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", wrapEtcd(err)
	}
	if len(resp.Kvs) == 0 {
		return "", errdefs.NotFound("no leader for %s", name)
	}
	return string(resp.Kvs[0].Value), nil
}

// Fence is the revision at which this leadership began: strictly greater
// than every earlier leader's, so it orders leaders.
func (l *Leadership) Fence() int64 { return l.rev }

// Done is closed when the leadership's lease is gone (expired, revoked or
// the store closed).
func (l *Leadership) Done() <-chan struct{} { return l.session.Done() }

// Guard is the precondition that makes a write a leader's write: the
// leader key still exists with the revision it was created at. Pass it in
// a Table method's guards; it fails once the leadership ended, even if
// this process has not noticed yet.
func (l *Leadership) Guard() Cond {
	return Cond{clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)}
}

// Check confirms, with a linearizable read, that the leadership still
// holds: for a leader about to act on something it read.
func (l *Leadership) Check(ctx context.Context) error {
	resp, err := l.s.cli.Txn(ctx).If(l.Guard().cmp).Then(linearizable()).Commit()
	if err != nil {
		return wrapEtcd(err)
	}
	if !resp.Succeeded {
		return ErrDeposed
	}
	return nil
}

// Explain tells why a write whose only guard was l's (with the object's
// revision) failed with ErrGuard: the table cannot say which precondition
// failed, and a lost race for the object (the agent wrote the task first)
// is no reason to stop leading. One linearizable read decides: ErrDeposed
// if the leadership is over, else ErrStale. Other errors are returned as
// they are.
func (l *Leadership) Explain(ctx context.Context, err error) error {
	if !errors.Is(err, ErrGuard) || errors.Is(err, ErrDeposed) {
		return err
	}
	if cerr := l.Check(ctx); cerr != nil {
		return cerr
	}
	return fmt.Errorf("%w (the leadership holds)", ErrStale)
}

// Resign gives the leadership up at once (the next campaigner need not
// wait for the TTL) and ends the session.
//
// Both steps are bounded by ctx: etcd's Session.Close would revoke the
// lease under a timeout of the session's TTL whatever ctx says, which held
// a stopping manager that had lost its quorum for that long.
func (l *Leadership) Resign(ctx context.Context) error {
	err := l.election.Resign(ctx)
	// Stop renewing, then revoke the lease under ctx.
	l.session.Orphan()
	_, cerr := l.s.cli.Revoke(ctx, l.session.Lease())
	if err != nil {
		return wrapEtcd(err)
	}
	if cerr != nil && !errors.Is(cerr, context.Canceled) && !errors.Is(cerr, rpctypes.ErrLeaseNotFound) && rpctypes.ErrorDesc(cerr) != rpctypes.ErrorDesc(rpctypes.ErrLeaseNotFound) {
		return wrapEtcd(cerr)
	}
	return nil
}

// checkElectionName refuses names an election's key prefix cannot keep
// apart: "a" would also find the candidates of "a/b".
func checkElectionName(name string) error {
	if name == "" || strings.Contains(name, "/") {
		return errdefs.InvalidArgument("election name %q: must be non-empty and without '/'", name)
	}
	return nil
}
