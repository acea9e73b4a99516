package daemon

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
)

// lostLeaderAcks makes d's reads of the rotation acks fail as the store
// does when etcd has lost its leader: the first `first` reads, then every
// other one when alternate is set (so every wait of the rotation meets
// the error, not only the first), or every read when first < 0. It
// returns the counts of failed and answered reads.
func lostLeaderAcks(d *Daemon, first int, alternate bool) func() (failed, answered int) {
	var mu sync.Mutex
	var n, failed, answered int
	d.rot.setFail(func(step string, _ int) error {
		if step != stepAckRead {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		n++
		if first < 0 || n <= first || (alternate && n%2 == 0) {
			failed++
			return fmt.Errorf("reading the acks: %w", errdefs.ErrNoLeader)
		}
		answered++
		return nil
	})
	return func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return failed, answered
	}
}

// The driver's waits for the other managers outlast a store that lost
// its leader for a while (a manager's restart can make etcd elect
// another): the reads failing with "no leader" in each of the three waits
// (prepared, sealing, installed) do not end the rotation, which finishes
// as if nothing had happened.
func ackWaitOutlastsLostLeaderCase(t *testing.T, ms []*clusterNode, secrets map[string]string) {
	ctx := context.Background()
	atRest(t, ms)
	old := copyKey(t, ms[0].d)
	counts := lostLeaderAcks(ms[1].d, 10, true)
	defer ms[1].d.rot.setFail(nil)
	r, err := ms[1].d.RotateMaster(ctx)
	if err != nil {
		t.Fatalf("rotation while the acks' reads lose the leader: %v", err)
	}
	failed, answered := counts()
	t.Logf("the driver's ack reads: %d failed with no leader, %d answered", failed, answered)
	// Three waits, each reading at least once after the first ten
	// failures: every one of them met a failure.
	if failed < 10+2 || answered < 3 {
		t.Fatalf("the hook saw %d failed and %d answered reads: the case did not exercise every wait", failed, answered)
	}
	for _, m := range ms {
		waitUntil(t, "no rotation stands", func() bool { return noRotation(m.d) })
		checkRotatedManager(t, m.d, secrets, old, r.KeyID, "")
	}
}

// A leader that does not come back ends the wait at its deadline with the
// store's "no leader" error: at the prepare wait nothing is sealed under
// the new key yet, so the rotation is dropped and every manager keeps the
// key it had.
func ackWaitEndsWithoutLeaderCase(t *testing.T, ms []*clusterNode, secrets map[string]string) {
	ctx := context.Background()
	atRest(t, ms)
	before := ms[0].d.mk.ID
	ms[1].d.rot.ackTimeout = 3 * time.Second
	defer func() { ms[1].d.rot.ackTimeout = 0 }()
	counts := lostLeaderAcks(ms[1].d, -1, false)
	defer ms[1].d.rot.setFail(nil)
	began := time.Now()
	_, err := ms[1].d.RotateMaster(ctx)
	took := time.Since(began)
	failed, _ := counts()
	if !errdefs.Is(err, errdefs.ErrNoLeader) {
		t.Fatalf("rotation whose acks never read: %v, want the store's no-leader error", err)
	}
	// Liveness, not speed: the wait ends (its deadline is 3 s, each read
	// retried after 100 ms), rather than retrying while the error lasts.
	if took < 3*time.Second || took > 60*time.Second || failed < 10 {
		t.Fatalf("the wait ended after %v and %d failed reads, want it to retry until its 3 s deadline and then end", took, failed)
	}
	for _, m := range ms {
		waitUntil(t, "no rotation stands", func() bool { return noRotation(m.d) })
		waitUntil(t, "no rotating file", func() bool { return !exists(t, m.cfg.DataDir, "keys/master.key.rotating") })
		if ok, err := m.d.store.Holds(ctx, store.Absent(m.d.rotationKey())); err != nil || !ok {
			t.Fatalf("a dropped rotation left its record (%v)", err)
		}
		m.d.mu.Lock()
		id := m.d.mk.ID
		m.d.mu.Unlock()
		if id != before {
			t.Fatalf("manager %s: a dropped rotation changed the key", m.d.nodeID)
		}
	}
	for id, want := range secrets {
		if got, err := ms[2].d.secrets.Data(ctx, id); err != nil || string(got) != want {
			t.Fatalf("secret after a dropped rotation: %v", err)
		}
	}
}
