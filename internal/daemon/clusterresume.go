package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
)

// Automatic resume of rotations across managers (docs/DESIGN.md,
// "Master-key rotation across managers", "Resuming"). A rotation whose
// driver let go of it (a wait timed out or a step failed:
// releaseRotation; or it restarted and cleared its name at its first
// look) or whose driver holds no presence of its own (down, locked, cut
// off from the quorum) has no driver: every manager's follower loop
// notices it and, after a back-off, takes it over (takeOverRotation: a
// compare-and-swap of the record's driver field at the revision it
// judged, so exactly one manager wins) and drives it to its end. A
// driver that is present is never taken over, however slow: its
// presence claim lives under an etcd lease it renews only while it is
// up and reaches the quorum, and a present manager named as driver that
// no longer drives clears its own name at its follower's next look. So
// the record needs no lease or heartbeat of its own.
//
// The rotation autolock's enable owes (RotationOwed), refused because a
// manager was absent, is retried the same way by the key follower of
// every manager once every manager is present again; the record's
// create-if-absent makes one of them start it.

// maxResumeBackoff caps the doubling wait between a manager's automatic
// attempts: a manager down for good is not waited for every minute.
const maxResumeBackoff = 10 * time.Minute

func (d *Daemon) resumeAfter() time.Duration {
	if v := d.rot.resumeAfter.Load(); v > 0 {
		return time.Duration(v)
	}
	// Not rotationAckTimeout: tests set that field while no loop reads it.
	return defaultRotationAckTimeout
}

// resumeBackoff paces one manager's automatic attempts at one rotation
// (or at the owed one): the first comes base after the need was first
// seen (the operator's `hush key rotate`, or the path that failed, gets
// its turn first), each one after that twice as long after the last,
// up to maxResumeBackoff; it starts over once the need is gone.
type resumeBackoff struct {
	key   string        // the rotation's new key ID ("owed": the owed one)
	since time.Time     // since when the need is seen (zero: not now)
	wait  time.Duration // the current wait
	next  time.Time     // no attempt before
	look  time.Time     // the last look (looks are at most once a second)
}

// due notes that key needs a driver now and reports whether an attempt
// may be made.
func (b *resumeBackoff) due(key string, now time.Time, base time.Duration) bool {
	if b.key != key {
		*b = resumeBackoff{key: key, wait: base, look: b.look}
	}
	if b.since.IsZero() {
		b.since = now
		if b.next.Before(now.Add(b.wait)) {
			b.next = now.Add(b.wait)
		}
	}
	return !now.Before(b.next)
}

// driven notes that key has a live driver: a later need waits again.
func (b *resumeBackoff) driven(key string) {
	if b.key == key {
		b.since = time.Time{}
	}
}

// tried notes an attempt that did not end the need.
func (b *resumeBackoff) tried(now time.Time) {
	b.wait = min(2*b.wait, maxResumeBackoff)
	b.next = now.Add(b.wait)
}

func (b *resumeBackoff) reset() { *b = resumeBackoff{look: b.look} }

// lookDue throttles the looks to once per rotationPollIdle (the follower
// loop runs every 100 ms while a record stands).
func (b *resumeBackoff) lookDue(now time.Time) bool {
	if now.Sub(b.look) < rotationPollIdle {
		return false
	}
	b.look = now
	return true
}

// driverless says why rec has no live driver ("": it has one).
func (d *Daemon) driverless(ctx context.Context, rec rotationRecord) (string, error) {
	switch rec.Driver {
	case "":
		return "its driver let go of it (a wait for the managers timed out, a step failed, or the driver restarted)", nil
	case d.nodeID:
		// Not driving here: this manager's follower clears its name.
		return "", nil
	}
	absent, err := d.absentManagers(ctx, []string{rec.Driver})
	if err != nil || len(absent) == 0 {
		return "", err
	}
	return fmt.Sprintf("its driver, manager %s, is down, locked or cut off from the quorum", rec.Driver), nil
}

// resumeDriverless is the follower loop's look for a rotation without a
// driver (without d.mu): once b allows, this manager takes it over and
// drives it to its end, in this goroutine (the runtime's: it ends with
// d.life, and stopRuntime waits for it after ending its context).
func (d *Daemon) resumeDriverless(ctx context.Context, b *resumeBackoff) {
	now := time.Now()
	// Not CheckServing: the loop never blocks on d.mu (resumeRotation
	// checks under lockMu).
	if d.rot.noAutoResume.Load() || !b.lookDue(now) {
		return
	}
	rec, ok, err := getRotation(ctx, d.store)
	if err != nil {
		return
	}
	if !ok {
		b.reset()
		return
	}
	why, err := d.driverless(ctx, rec)
	if err != nil {
		return
	}
	if why == "" {
		b.driven(rec.New)
		return
	}
	if !b.due(rec.New, now, d.resumeAfter()) {
		return
	}
	if !d.rot.mu.TryLock() {
		// `hush key rotate` runs here: it takes the record over itself.
		return
	}
	defer d.rot.mu.Unlock()
	d.log.Warn("master key rotation: resuming a rotation across managers that has no driver", "old", rec.Old, "new", rec.New, "phase", rec.Phase, "why", why, "driverlessFor", now.Sub(b.since).Round(time.Second))
	r, err := d.resumeRotation(ctx, rec)
	switch {
	case err == nil:
		d.log.Info("master key rotation: the resumed rotation ended", "keyID", r.KeyID, "rewrapped", r.Rewrapped)
		b.reset()
	case errdefs.Is(err, errdefs.ErrConflict):
		// Another manager won the record (or drives it): it ends it.
		b.driven(rec.New)
	default:
		b.tried(time.Now())
		d.log.Warn("master key rotation: the resumed rotation did not end; retrying later", "err", err, "retryIn", b.wait)
	}
}

// resumeRotation takes rec over, as judged at its revision (the
// compare-and-swap fails if any manager wrote it since), and drives it,
// as rotateCluster does for a rotation it finds standing.
func (d *Daemon) resumeRotation(ctx context.Context, rec rotationRecord) (Rotation, error) {
	return d.driveClusterRotation(ctx, func(ctx context.Context, _ *keyring.Keyring) (rotationRecord, error) {
		return d.takeOverRotation(ctx, rec)
	})
}

// retryOwedRotation is the key follower's look at the rotation autolock
// owes (c: the cluster record just read): once b allows, no rotation
// stands and every manager is present, this manager starts it in the
// background. The first wait leaves the manager that recorded the key's
// fetch, or one activating, its own attempt.
func (d *Daemon) retryOwedRotation(ctx context.Context, c *cluster.Cluster, b *resumeBackoff) {
	now := time.Now()
	if d.rot.noAutoResume.Load() {
		return
	}
	if !c.RotationOwed || !c.Spec.EncryptionConfig.AutoLockManagers || !c.UnlockKeyFetched {
		b.reset()
		return
	}
	if !b.lookDue(now) {
		return
	}
	if _, ok, err := getRotation(ctx, d.store); err != nil || ok {
		b.driven("owed")
		return // one stands: its driver, or the resume of a driverless one, ends it
	}
	if !b.due("owed", now, d.resumeAfter()) {
		return
	}
	ids, _, err := d.clusterManagers(ctx)
	if err != nil {
		return
	}
	if absent, err := d.absentManagers(ctx, ids); err != nil || len(absent) > 0 {
		// Refused until they are back: no attempt, and no longer wait
		// once they are.
		return
	}
	b.tried(now)
	retryIn := b.wait
	d.log.Info("master key rotation: autolock was enabled but the master key has not been rotated across the managers since; every manager is present: rotating it")
	d.runBG(func(ctx context.Context) {
		if !d.rot.mu.TryLock() {
			return // a rotation is running here: it retires the key as well
		}
		defer d.rot.mu.Unlock()
		r, err := d.rotateCluster(ctx)
		switch {
		case err == nil:
			d.log.Info("master key rotated across the managers as autolock was enabled", "key", r.KeyID, "rewrapped", r.Rewrapped)
		case errdefs.Is(err, errdefs.ErrConflict):
			// Another manager started it (or drives one) meanwhile.
			d.log.Debug("master key rotation: the owed rotation is another manager's", "err", err)
		default:
			d.log.Warn("master key rotation: the rotation autolock owes did not end; retrying later", "err", err, "retryIn", retryIn)
		}
	}, d.bg)
}
