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
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	m.mu.Lock()
	m.followRotationHook = func(ctx context.Context) {
		if ctx.Value(driverCtxKey{}) == nil {
			return
		}
		once.Do(func() { close(held) })
		select {
		case <-ctx.Done():
		case <-release: // the test failed: let the cleanup's Close end
		}
	}
	m.mu.Unlock()
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
	closed := make(chan struct{})
	go func() {
		m.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(time.Minute):
		close(release)
		<-closed
		t.Fatal("Close waited on mu behind the rotation driver's store call that ends only with its context")
	}
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
	waitUntil(t, "the rotation started", func() bool {
		rec, ok, err := getRotation(context.Background(), driver.store)
		return err == nil && ok && len(rec.Managers) == 2
	})
	driver.Close()
	mu.Lock()
	defer mu.Unlock()
	if attempts != 1 {
		t.Fatalf("the stopping driver tried %d times to delete the dropped rotation's record, want once", attempts)
	}
}
