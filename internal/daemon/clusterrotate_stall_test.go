package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// A rotation across managers that runs in the background (the one
// enabling autolock owes: rotateAfterEnable, on d.bg) must end when a
// leave (or a demotion) stops d.bg while holding d.mu: closeStoreLocked
// waits for d.bg's goroutines with d.mu held, so a background driver that
// waits for d.mu there would never end, and neither would the leave, nor
// Close after it. Here the background rotation is held after it wrote its
// record until `swarm leave --force` holds d.mu, then let go: its next
// step takes d.mu.
func TestLeaveEndsBackgroundRotation(t *testing.T) {
	cfg := Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t)}
	cfg.Socket = filepath.Join(cfg.DataDir, "s.sock")
	cfg.SecretsDir = filepath.Join(cfg.DataDir, "run")
	m, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Closed at the end only if the leave ended: a daemon deadlocked
	// here would hold Close (and the test binary) for good.
	if m.store.Members() == nil {
		m.Close()
		t.Fatal("a manager with a listen address runs no etcd member")
	}
	reached, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	m.rot.setFail(func(step string, _ int) error {
		if step == stepClusterStarted {
			once.Do(func() { close(reached) })
			<-proceed
		}
		return nil
	})
	m.rotateAfterEnable()
	select {
	case <-reached:
	case <-time.After(time.Minute):
		close(proceed)
		m.Close()
		t.Fatal("the background rotation never wrote its record")
	}
	m.mu.Lock()
	m.fail = failpoints{fpLeaveMark: func() error {
		// The leave holds d.mu from here to its end.
		close(proceed)
		return nil
	}}
	m.mu.Unlock()
	left := make(chan error, 1)
	go func() { left <- m.Leave(context.Background(), true) }()
	select {
	case err := <-left:
		if err != nil {
			m.Close()
			t.Fatalf("leave during a background rotation: %v", err)
		}
	case <-time.After(2 * time.Minute):
		// Not closed: Close would wait on d.mu for good.
		t.Fatal("the leave never ended: it waits (holding d.mu) for the background rotation, which waits for d.mu")
	}
	if st := m.State(); st != swarm.LocalNodeStateInactive {
		t.Errorf("after the leave: %s, want inactive", st)
	}
	m.Close()
}

// driverCtxKey marks the context of the rotation a test drives, so that
// followRotationHook holds the driver's step only, not the follower
// loop's.
type driverCtxKey struct{}

// Close ends the driver of a rotation across managers as it ends the
// follower loop (TestCloseEndsLoopsHoldingMu): the driver's own step holds
// d.mu over store calls, which cannot finish on a cluster without quorum,
// and its context (a request's, made uncancellable by RotateMaster, or
// d.bg, which Close ends only after it took d.mu) would otherwise keep
// Close waiting on d.mu behind it. The hook stands for such a call.
func TestCloseEndsRotationDriverHoldingMu(t *testing.T) {
	m := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t)})
	if m.store.Members() == nil {
		t.Fatal("a manager with a listen address runs no etcd member")
	}
	held, release := holdRotationSteps(m, func(ctx context.Context) bool { return ctx.Value(driverCtxKey{}) != nil })
	rotated := make(chan error, 1)
	go func() {
		_, err := m.RotateMaster(context.WithValue(context.Background(), driverCtxKey{}, true))
		rotated <- err
	}()
	select {
	case <-held:
	case err := <-rotated:
		t.Fatalf("the rotation ended (%v) without its driver's step", err)
	case <-time.After(time.Minute):
		close(release)
		t.Fatal("the rotation's driver never ran its own step")
	}
	closeDespiteHeldStep(t, m, release, "the rotation driver's")
	if err := <-rotated; err == nil {
		t.Fatal("a rotation whose driver's step was ended by Close succeeded")
	}
}

// A manager demoted while it was down in the middle of a rotation (the
// one role change a rotation allows) wipes every key file when it comes
// back as a worker: also its rotating file, which holds the rotation's
// new master key (the one the cluster keeps), sealed under the old key
// the rotation retires. Left on a worker's disk, it is a key file no one
// uses, and with any earlier copy of the old key (what rotating the
// master key after enabling autolock guards against) it opens the
// cluster's current key.
func TestDemotedMidRotationWipesRotatingFile(t *testing.T) {
	ctx := context.Background()
	ms := startManagers(t, 3)
	allPresent(t, ms)
	// Stopped once every manager holds the new key in its rotating file.
	failOnce(ms[0].d, stepClusterPrepared, 0)
	if _, err := ms[0].d.RotateMaster(ctx); !errors.Is(err, errCrash) {
		t.Fatalf("rotation: %v", err)
	}
	ms[0].d.rot.setFail(nil)
	rec, ok, err := getRotation(ctx, ms[0].d.store)
	if err != nil || !ok {
		t.Fatalf("the rotation record: %v %v", ok, err)
	}
	down := ms[2]
	if !exists(t, down.cfg.DataDir, "keys/master.key.rotating") {
		t.Fatal("the manager to demote holds no rotating file: the check proves nothing")
	}
	gone := down.d.nodeID
	down.d.Close()
	waitUntil(t, "the stopped manager is absent", func() bool {
		absent, err := ms[0].d.absentManagers(ctx, []string{gone})
		return err == nil && len(absent) == 1
	})
	if err := setRole(ctx, ms[1].d, gone, swarm.NodeRoleWorker); err != nil {
		t.Fatalf("demoting a manager that is down during a rotation: %v", err)
	}
	down.start(t)
	waitUntil(t, "the demoted manager runs as a worker", down.d.isWorker)
	files, _ := filepath.Glob(filepath.Join(down.cfg.DataDir, "keys", "*"))
	hidden, _ := filepath.Glob(filepath.Join(down.cfg.DataDir, "keys", ".*"))
	for _, p := range append(files, hidden...) {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(rec.New)) {
			t.Errorf("the demoted manager keeps %s, which holds the rotation's new key %s", p, rec.New)
		}
	}
	if exists(t, down.cfg.DataDir, "keys/master.key.rotating") {
		t.Error("the demoted manager keeps its rotating file")
	}
}

// A rotation dropped in prepare because its driver is stopping (Close,
// or a leave or demotion ending d.bg) tries to delete its record once,
// and does not go on retrying for dropRotationWait: the background
// driver (the rotation autolock's enable owes) holds Close, or a leave
// holding d.mu, until it returns, and on a cluster without quorum every
// retry fails. Here every delete fails, as it would without quorum.
func TestStoppingDriverDropsRotationOnce(t *testing.T) {
	ms := startManagers(t, 2)
	allPresent(t, ms)
	driver, follower := ms[0].d, ms[1].d
	// The follower is present but never takes the new key: the driver
	// waits for its ack (up to the default 60 s).
	follower.rot.setFail(func(step string, _ int) error {
		if step == stepFollowKey {
			return errors.New("injected: this manager does not take the new key")
		}
		return nil
	})
	var mu sync.Mutex
	attempts := 0
	driver.rot.setFail(func(step string, _ int) error {
		if step != stepDropRecord {
			return nil
		}
		mu.Lock()
		attempts++
		mu.Unlock()
		return errors.New("injected: the store has no quorum")
	})
	driver.rotateAfterEnable()
	// Past the driver's own step (its ack written): it waits for the
	// follower's. Stopped before that step, it leaves the record as a
	// crash would, for a takeover, and drops nothing.
	waitUntil(t, "the driver waits for the follower's ack", func() bool {
		ctx := context.Background()
		rec, ok, err := getRotation(ctx, driver.store)
		if err != nil || !ok || len(rec.Managers) != 2 {
			return false
		}
		acks, err := driver.rotationAcks(ctx, rec.New)
		return err == nil && acks[driver.nodeID] == ackPrepared
	})
	driver.Close()
	mu.Lock()
	defer mu.Unlock()
	if attempts != 1 {
		t.Fatalf("the stopping driver tried %d times to delete the dropped rotation's record, want once", attempts)
	}
}

// Enabling autolock on a cluster rotates the master key once its unlock
// key is fetched. A manager whose key files have not settled yet when the
// rotation installs may still hold its plaintext master.key beside only
// the pending locked file (master.key.locked.next: here its move to the
// locked file fails), not the locked file itself: the new key must not be
// written into master.key in the clear then either
// (newKeyNeverInPlainFileCase covers a plaintext file left beside the
// locked one).
func TestEnableRotationNeverWritesNewKeyBesidePendingFile(t *testing.T) {
	ctx := context.Background()
	ms := startManagers(t, 2)
	allPresent(t, ms)
	old := copyKey(t, ms[0].d)
	ms[0].d.rot.ackTimeout = 5 * time.Second
	f := ms[1]
	f.d.mu.Lock()
	f.d.fail = failpoints{fpSyncInstall: func() error { return errors.New("injected: the pending locked file is not moved into place") }}
	f.d.mu.Unlock()
	checkPlain := func() {
		t.Helper()
		if mk, err := f.d.plainKey.Load(); err == nil && mk.ID != old.ID {
			t.Fatalf("the new master key %s is in the clear in master.key under autolock", mk.ID)
		}
	}
	key := enableAutolock(t, ms[0].d)
	waitUntil(t, "the second manager holds the pending locked file", func() bool {
		checkPlain()
		return f.d.nextKey().Exists() && f.d.nextKey().Opens(key)
	})
	// The enable's rotation runs in the background on the first manager:
	// it ends, or stops at its install (5 s without the second manager's
	// ack): either way the record is then gone or stays in the install
	// phase with no one driving it.
	waitUntil(t, "the enable's rotation started", func() bool {
		checkPlain()
		_, ok, err := getRotation(ctx, ms[0].d.store)
		ms[0].d.mu.Lock()
		rotated := ms[0].d.mk.ID != old.ID
		ms[0].d.mu.Unlock()
		return err == nil && (ok || rotated)
	})
	waitUntil(t, "the enable's rotation ended or stopped", func() bool {
		checkPlain()
		rec, ok, err := getRotation(ctx, ms[0].d.store)
		return err == nil && (!ok || rec.Phase == phaseInstall && rec.Driver == "")
	})
	checkPlain()
	f.d.mu.Lock()
	f.d.fail = nil
	f.d.mu.Unlock()
	waitUntil(t, "the second manager's key files settle", func() bool {
		checkPlain()
		return lockedUnder(f.d, key)
	})
}
