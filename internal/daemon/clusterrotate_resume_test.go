package daemon

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/moby/moby/api/types/swarm"
)

// testResumeAfter is the managers' first wait before they resume a
// rotation left without a driver (or retry an owed one), in these cases:
// short, so that a case ends in seconds rather than after the default
// minute.
const testResumeAfter = time.Second

// quickResume makes each manager of ms resume on its own after
// testResumeAfter (a restarted manager is a new daemon: set it again).
func quickResume(ms ...*clusterNode) {
	for _, m := range ms {
		m.d.rot.resumeAfter.Store(int64(testResumeAfter))
	}
}

// Automatic resume of rotations across managers (docs/DESIGN.md,
// "Master-key rotation across managers", "Resuming"): the cases take
// turns on one cluster of three managers, each leaving it at rest; the
// last enables autolock.
func TestClusterRotateResume(t *testing.T) {
	ms := shareManagers(t, 3)
	secrets := clusterSecrets(t, ms[0].d, 20)
	quickResume(ms...)
	for _, step := range []string{stepClusterPrepared, stepClusterRewrapped, stepClusterInstall} {
		t.Run("driver-stopped-"+step, func(t *testing.T) { resumedOnItsOwnCase(t, ms, secrets, step) })
	}
	t.Run("driver-down", func(t *testing.T) { driverDownCase(t, ms, secrets) })
	t.Run("slow-driver-kept", func(t *testing.T) { slowDriverKeptCase(t, ms, secrets) })
	t.Run("owed-rotation-retried", func(t *testing.T) { owedRotationRetriedCase(t, ms, secrets) })
}

// A rotation whose driver stopped at step (it lets go of the record, as
// after a failed wait) and that no one runs `hush key rotate` for again
// ends on its own: a manager's follower loop takes the driverless record
// over and drives it to its end. The stopped driver is not restarted; it
// follows the rotation as any manager does. Every manager ends under the
// record's new key and opens every secret.
func resumedOnItsOwnCase(t *testing.T, ms []*clusterNode, secrets map[string]string, step string) {
	ctx := context.Background()
	atRest(t, ms)
	old := copyKey(t, ms[0].d)
	failOnce(ms[0].d, step, 0)
	if _, err := ms[0].d.RotateMaster(ctx); !errors.Is(err, errCrash) {
		t.Fatalf("rotation: %v, want the injected stop at %s", err, step)
	}
	rec, ok, err := getRotation(ctx, ms[1].d.store)
	if err != nil || !ok {
		t.Fatalf("the stopped rotation's record: %v %v", ok, err)
	}
	// From here the driver's manager runs on as a follower.
	ms[0].d.rot.setFail(nil)
	waitUntil(t, "the driverless rotation ends on its own", func() bool { return noRotation(ms[1].d) })
	checkRotatedManagers(t, ms, secrets, old, rec.New, "")
}

// A rotation whose driver went down still named in the record (as a
// kill -9 leaves it: a stopping driver lets go of it) is taken over by a
// present manager on its own; once the stopped manager is back (it must
// install too), the rotation ends.
func driverDownCase(t *testing.T, ms []*clusterNode, secrets map[string]string) {
	ctx := context.Background()
	atRest(t, ms)
	old := copyKey(t, ms[0].d)
	for _, m := range ms {
		m.d.rot.noAutoResume.Store(true)
	}
	failOnce(ms[0].d, stepClusterRewrapped, 0)
	if _, err := ms[0].d.RotateMaster(ctx); !errors.Is(err, errCrash) {
		t.Fatalf("rotation: %v, want the injected stop", err)
	}
	ms[0].d.rot.setFail(nil)
	down := ms[0].d.nodeID
	ms[0].d.Close()
	waitUntil(t, "the stopped driver is absent", func() bool {
		a, err := ms[1].d.absentManagers(ctx, []string{down})
		return err == nil && len(a) == 1
	})
	rec, ok, err := getRotation(ctx, ms[1].d.store)
	if err != nil || !ok {
		t.Fatalf("the stopped rotation's record: %v %v", ok, err)
	}
	rec.Driver = down
	if err := putRotation(ctx, ms[1].d.store, &rec); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[1:] {
		m.d.rot.noAutoResume.Store(false)
	}
	waitUntil(t, "a present manager takes the rotation over", func() bool {
		cur, ok, err := getRotation(ctx, ms[1].d.store)
		return err == nil && ok && (cur.Driver == ms[1].d.nodeID || cur.Driver == ms[2].d.nodeID)
	})
	ms[0].start(t)
	quickResume(ms[0])
	waitUntil(t, "the rotation ends", func() bool { return noRotation(ms[1].d) })
	checkRotatedManagers(t, ms, secrets, old, rec.New, "")
}

// A driver that is alive (present) but slow is not taken over, however
// long the others see the record unchanged: it ends the rotation itself.
func slowDriverKeptCase(t *testing.T, ms []*clusterNode, secrets map[string]string) {
	ctx := context.Background()
	atRest(t, ms)
	old := copyKey(t, ms[0].d)
	driver := ms[0].d
	// Held well past the others' resume wait, at a step where the record
	// names the driver and no manager has anything to do.
	driver.rot.setFail(func(step string, _ int) error {
		if step == stepClusterRewrapped {
			time.Sleep(5 * testResumeAfter)
		}
		return nil
	})
	defer driver.rot.setFail(nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var others []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			rec, ok, err := getRotation(ctx, ms[1].d.store)
			if err == nil && ok && rec.Driver != "" && rec.Driver != driver.nodeID {
				mu.Lock()
				others = append(others, rec.Driver)
				mu.Unlock()
			}
		}
	}()
	r, err := driver.RotateMaster(ctx)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("rotation by a slow driver: %v", err)
	}
	if len(others) > 0 {
		t.Fatalf("a live, slow driver's rotation was taken over by %v", others)
	}
	checkRotatedManagers(t, ms, secrets, old, r.KeyID, "")
}

// The rotation that enabling autolock owes, refused because a manager
// was absent (here locked), is retried by the managers that keep running
// once that manager is back: no other manager activates, and the one
// that comes back makes no attempt of its own (its rotation lock is held
// here, standing for an activation's attempt that failed).
func owedRotationRetriedCase(t *testing.T, ms []*clusterNode, secrets map[string]string) {
	ctx := context.Background()
	atRest(t, ms)
	key := enableAutolock(t, ms[0].d)
	atRestLocked(t, ms, key)
	waitUntil(t, "the enable's rotation is done", func() bool { return !getCluster(t, ms[1].d).RotationOwed })
	absent := ms[2]
	absent.restart(t)
	if st := absent.d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: %s, want locked", st)
	}
	waitUntil(t, "the locked manager is absent", func() bool {
		a, err := ms[0].d.absentManagers(ctx, []string{absent.d.nodeID})
		return err == nil && len(a) == 1
	})
	old := copyKey(t, ms[0].d)
	// Owed, as after an enable whose key was fetched while the manager
	// was locked; its rotation is refused, naming it.
	for attempt := 0; ; attempt++ {
		c, err := cluster.Get(ctx, ms[0].d.store)
		if err != nil {
			t.Fatal(err)
		}
		c.RotationOwed = true
		if err = cluster.PutInternal(ctx, ms[0].d.store, &c); err == nil {
			break
		}
		if !errors.Is(err, errdefs.ErrOutOfSequence) || attempt > 5 {
			t.Fatalf("marking the rotation owed: %v", err)
		}
	}
	if _, err := ms[0].d.RotateMaster(ctx); !errdefs.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), absent.d.nodeID) {
		t.Fatalf("rotation with a locked manager: %v, want unavailable naming it", err)
	}
	if !getCluster(t, ms[1].d).RotationOwed {
		t.Fatal("the refused rotation is no longer owed")
	}
	absent.d.rot.mu.Lock()
	held := true
	release := func() {
		if held {
			held = false
			absent.d.rot.mu.Unlock()
		}
	}
	defer release()
	quickResume(absent)
	if err := absent.d.Unlock(ctx, key); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	for _, m := range ms {
		waitUntil(t, "the manager runs under a new key", func() bool {
			m.d.mu.Lock()
			defer m.d.mu.Unlock()
			return m.d.mk.ID != old.ID
		})
	}
	release()
	atRestLocked(t, ms, key)
	waitUntil(t, "nothing is owed", func() bool { return !getCluster(t, ms[1].d).RotationOwed })
	for _, m := range ms {
		checkRotatedManager(t, m.d, secrets, old, ms[0].d.mk.ID, key)
	}
}
