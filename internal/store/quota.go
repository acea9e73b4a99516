package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/hush-secrets/hush/internal/errdefs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultQuotaBytes is the embedded store's backend quota when none is
// configured: etcd's own default, set explicitly so hush's refusals and
// etcd's alarm agree on the number.
const DefaultQuotaBytes = 2 << 30

// The backend file grows in steps of several MiB, and etcd raises its
// NOSPACE alarm when the file reaches the quota; after that it refuses
// every write until the alarm is disarmed. So hush keeps the file a margin
// below the quota as well as the data in use below its soft limit.

// ErrNoSpace wraps every refusal for lack of space.
var ErrNoSpace = fmt.Errorf("store: quota reached: %w", errdefs.ErrNoSpace)

// quota refuses writes before etcd is full. Deletes are never refused:
// they are how space comes back, and etcd accepts them even under its
// NOSPACE alarm. After a delete under pressure the store compacts its
// history, defragments if the file is near the quota, and disarms the
// alarm once there is room again.
type quota struct {
	limit  int64 // etcd's backend quota
	soft   int64 // writes are refused when the data in use would pass this
	margin int64 // and when the file would come closer than this to limit
	// be is etcd's backend (fetched per use: etcd may replace it).
	be func() backend
	// guard runs a call on be's backend (nil: directly). An embedded
	// store's is its closing gate: a commit or defragment on the backend
	// of a stopped server ends the process (etcd's fatal log).
	guard func(func() error) error
	// alarmRaised reports etcd's NOSPACE alarm (a local read).
	alarmRaised func() bool
	memberID    uint64
	log         *slog.Logger

	// kick asks the background reclaimer for a pass (buffered: a burst of
	// deletes coalesces into one).
	kick chan struct{}

	// acct guards the accounting of admitted writes (see admit).
	acct                sync.Mutex
	seenFile, seenInUse int64
	pending             int64

	mu        sync.Mutex // serialises reclaim
	pressure  bool       // a write was refused or the alarm seen: reclaim after deletes
	compacted int64      // the revision the last reclaim compacted to
}

// backend is what the quota needs of etcd's backend. The in-process
// client's Defragment cannot be used: it needs an auth layer that the
// in-process server lacks.
type backend interface {
	Size() int64      // the file's size, which etcd's quota counts
	SizeInUse() int64 // the bytes of it in use
	Defrag() error
	ForceCommit()
}

func newQuota(limit int64, be func() backend, alarmRaised func() bool, memberID uint64, log *slog.Logger) *quota {
	headroom := max(limit/10, 1<<20)
	return &quota{limit: limit, soft: limit - headroom, margin: headroom / 2, be: be,
		alarmRaised: alarmRaised, memberID: memberID, log: log, kick: make(chan struct{}, 1)}
}

// sizes reports the backend file's size and the bytes in use in it.
func (q *quota) sizes() (file, inUse int64) {
	be := q.be()
	return be.Size(), be.SizeInUse()
}

// errFull is the refusal clients see; it names the limit and what frees
// space.
func (q *quota) errFull(inUse int64) error {
	return fmt.Errorf("%w: %w", ErrNoSpace, errdefs.NoSpace(
		"the cluster store is full: %d bytes in use, hush refuses writes beyond %d bytes of its %d-byte quota; remove unused secrets, configs, services or networks to free space",
		inUse, q.soft, q.limit))
}

// check refuses a write of about cost bytes that would take the store past
// its soft limit, or let the file grow past etcd's quota. Before refusing it
// tries once to reclaim space that old revisions or free pages hold.
func (q *quota) check(ctx context.Context, cli *clientv3.Client, cost int) error {
	if q == nil {
		return nil
	}
	q.mu.Lock()
	pressure := q.pressure
	q.mu.Unlock()
	if ok, _ := q.admit(cost); ok && !pressure && !q.alarmRaised() {
		return nil
	}
	q.reclaim(ctx, cli)
	ok, inUse := q.admit(cost)
	if !ok {
		q.mu.Lock()
		q.pressure = true
		q.mu.Unlock()
		return q.errFull(inUse)
	}
	return nil
}

// admit reports whether a write of cost bytes fits, and counts it if so.
// The backend's sizes change only when it commits a batch (every 100 ms),
// so the writes admitted since the sizes last changed are counted too: a
// burst must not run past the quota on stale numbers.
func (q *quota) admit(cost int) (bool, int64) {
	q.acct.Lock()
	defer q.acct.Unlock()
	file, inUse := q.sizes()
	if file != q.seenFile || inUse != q.seenInUse {
		q.seenFile, q.seenInUse, q.pending = file, inUse, 0
	}
	need := q.pending + int64(cost)
	if inUse+need > q.soft || file+need+q.margin >= q.limit {
		return false, inUse + q.pending
	}
	q.pending = need
	return true, inUse
}

// afterDelete asks for the space a delete freed to be reclaimed when the
// store is under pressure, so that writes work again without an operator.
// The pass runs in the background: deletes stay fast, and the next write
// reclaims for itself if it comes first.
func (q *quota) afterDelete() {
	if q == nil {
		return
	}
	q.mu.Lock()
	p := q.pressure
	q.mu.Unlock()
	if p {
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
}

// run serves afterDelete's requests until ctx ends.
func (q *quota) run(ctx context.Context, cli *clientv3.Client) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.kick:
			q.reclaim(ctx, cli)
		}
	}
}

// reclaim compacts the history up to now when anything was written since
// the last pass, defragments when the file is near the quota and holds
// enough free pages to matter, and disarms a NOSPACE alarm once the data
// fits again. Errors are not fatal: the next write checks again.
func (q *quota) reclaim(ctx context.Context, cli *clientv3.Client) {
	q.mu.Lock()
	defer q.mu.Unlock()
	resp, err := cli.Get(ctx, root+"\x00revision-probe", clientv3.WithCountOnly())
	if err != nil {
		return
	}
	if rev := resp.Header.Revision; rev != q.compacted {
		if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
			q.log.Warn("store quota: compaction failed", "err", err)
			return
		}
		q.compacted = rev
	}
	// Sizes are updated when the backend commits its batch, and pages a
	// commit frees count as free only after the next one: commit twice so
	// that what follows sees what the compaction or deletes freed.
	if err := q.forceCommit(); err != nil {
		return
	}
	alarmed := q.alarmRaised()
	if file, inUse := q.sizes(); (alarmed || file+2*q.margin >= q.limit) && file-inUse >= q.margin {
		if err := q.backendCall(func() error { return q.be().Defrag() }); err != nil {
			q.log.Warn("store quota: defragment failed", "err", err)
			return
		}
	}
	file, inUse := q.sizes()
	fits := inUse <= q.soft && file+q.margin < q.limit
	if fits && alarmed {
		if _, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: q.memberID, Alarm: pb.AlarmType_NOSPACE}); err != nil {
			q.log.Warn("store quota: disarming the NOSPACE alarm failed", "err", err)
			return
		}
		q.log.Info("store quota: space reclaimed, writes accepted again", "in_use", inUse, "file", file)
	}
	q.pressure = !fits
}

// isNoSpace reports whether etcd refused a write for its quota.
func isNoSpace(err error) bool {
	return errors.Is(err, rpctypes.ErrGRPCNoSpace) || errors.Is(err, rpctypes.ErrNoSpace) ||
		rpctypes.ErrorDesc(err) == rpctypes.ErrNoSpace.Error()
}

// forceCommit commits the backend's batch twice (through guard): sizes
// are updated when the backend commits, and pages a commit frees count
// as free only after the next one.
func (q *quota) forceCommit() error {
	return q.backendCall(func() error {
		q.be().ForceCommit()
		q.be().ForceCommit()
		return nil
	})
}

func (q *quota) backendCall(fn func() error) error {
	if q.guard == nil {
		return fn()
	}
	return q.guard(fn)
}
