package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

// noRotation reports that no master-key rotation record stands.
func noRotation(d *Daemon) bool {
	ok, err := d.store.Holds(context.Background(), store.Absent(d.rotationKey()))
	return err == nil && ok
}

// clusterSecrets creates n secrets through m and returns them (ID → data).
func clusterSecrets(t *testing.T, m *Daemon, n int) map[string]string {
	t.Helper()
	out := map[string]string{}
	for i := range n {
		data := fmt.Sprintf("cluster-rot-data-%d", i)
		id, err := m.secrets.Create(context.Background(), objects.Spec{Name: fmt.Sprintf("crot-%d", i), Data: []byte(data)})
		if err != nil {
			t.Fatal(err)
		}
		out[id] = data
	}
	return out
}

// allPresent waits until every manager vouches for itself (a rotation
// refuses to start otherwise).
func allPresent(t *testing.T, ms []*clusterNode) {
	t.Helper()
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.d.nodeID)
	}
	waitUntil(t, "every manager is present", func() bool {
		absent, err := ms[0].d.absentManagers(context.Background(), ids)
		return err == nil && len(absent) == 0
	})
}

// checkRotatedManager proves that manager d runs under newID, opens every
// secret, that old opens nothing in its store, and that its key files hold
// only the installed key (unlock: the unlock key the locked file must
// open with, "" for a plain key).
func checkRotatedManager(t *testing.T, d *Daemon, secrets map[string]string, old keyring.MasterKey, newID, unlock string) {
	t.Helper()
	ctx := context.Background()
	if d.mk.ID != newID {
		t.Fatalf("manager %s runs under key %s, want %s", d.nodeID, d.mk.ID, newID)
	}
	for id, want := range secrets {
		got, err := d.secrets.Data(ctx, id)
		if err != nil || string(got) != want {
			t.Fatalf("manager %s: secret %s: %q %v", d.nodeID, id, got, err)
		}
	}
	oldOnly, err := keyring.New(old)
	if err != nil {
		t.Fatal(err)
	}
	// Its copy of the old key is in key memory: wiped, so that a later
	// check that no key memory holds the old key is not fooled by it.
	defer oldOnly.Destroy()
	kvs, err := storetest.RawValues(ctx, d.store, "/hush/")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range kvs {
		if bytes.Contains(v, []byte(old.ID)) {
			t.Errorf("manager %s: %s names the old key", d.nodeID, k)
		}
		if strings.HasPrefix(k, "/hush/v1/presence/") || strings.HasPrefix(k, "/hush/v1/elections/") {
			continue
		}
		if _, err := store.OpenWith(oldOnly, k, v); !errors.Is(err, keyring.ErrUnknownKey) {
			t.Errorf("manager %s: the old key opens %s: %v", d.nodeID, k, err)
		}
	}
	// The node key in member.json is sealed under the master key too.
	if b, err := os.ReadFile(d.memberPath()); err != nil || bytes.Contains(b, []byte(old.ID)) || !bytes.Contains(b, []byte(newID)) {
		t.Errorf("manager %s: member.json is not sealed under the new key (%v)", d.nodeID, err)
	}
	files, _ := filepath.Glob(filepath.Join(d.cfg.DataDir, "keys", "*"))
	hidden, _ := filepath.Glob(filepath.Join(d.cfg.DataDir, "keys", ".*"))
	for _, p := range append(files, hidden...) {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(old.ID)) {
			t.Errorf("manager %s: key file %s names the old key", d.nodeID, p)
		}
		switch filepath.Base(p) {
		case "master.key":
			if unlock != "" {
				t.Errorf("manager %s: a plain master key under autolock", d.nodeID)
			}
		case "master.key.locked":
		default:
			t.Errorf("manager %s: key file %s left after the rotation", d.nodeID, p)
		}
	}
	if unlock == "" {
		if mk, err := d.plainKey.Load(); err != nil || mk.ID != newID {
			t.Errorf("manager %s: master.key holds %s (%v)", d.nodeID, mk.ID, err)
		}
	} else if mk, err := d.lockedKey.Load(unlock); err != nil || mk.ID != newID {
		t.Errorf("manager %s: master.key.locked holds %s (%v)", d.nodeID, mk.ID, err)
	}
	if ok, err := d.store.Holds(ctx, store.Absent(d.rotationKey())); err != nil || !ok {
		t.Errorf("manager %s: the rotation record is left (%v)", d.nodeID, err)
	}
}

// The rotation's tests that need no autolock take turns on one cluster of
// three managers (forming one under -race takes many seconds, and the
// crash points alone are eighteen): each case starts from a cluster at
// rest (every manager present, no rotation record) and leaves it so, but
// for the role changes, which change its managers and so run last.
// (A case that fails may leave the cluster unfit for the next ones: read
// the first failure.)
func TestClusterRotate(t *testing.T) {
	ms := shareManagers(t, 3)
	secrets := clusterSecrets(t, ms[0].d, 40)
	t.Run("master", func(t *testing.T) { rotateMasterCase(t, ms, secrets) })
	t.Run("ack-wait-outlasts-lost-leader", func(t *testing.T) { ackWaitOutlastsLostLeaderCase(t, ms, secrets) })
	t.Run("ack-wait-ends-without-leader", func(t *testing.T) { ackWaitEndsWithoutLeaderCase(t, ms, secrets) })
	for _, tc := range crashPoints {
		t.Run("crash-"+tc.name(), func(t *testing.T) { crashPointCase(t, ms, secrets, tc) })
	}
	t.Run("driver-stopped-before-naming", func(t *testing.T) { driverStoppedBeforeNamingCase(t, ms, secrets) })
	t.Run("refuses-down-manager", func(t *testing.T) { refusesDownManagerCase(t, ms, secrets) })
	t.Run("driver-stopped-in-install", func(t *testing.T) { driverStoppedInInstallCase(t, ms, secrets) })
	t.Run("role-changes", func(t *testing.T) { roleChangesCase(t, ms, secrets) })
}

// atRest waits until the shared cluster is as a case expects to find it:
// every manager serving and present, no rotation record.
func atRest(t *testing.T, ms []*clusterNode) {
	t.Helper()
	for _, m := range ms {
		waitUntil(t, "the manager serves", func() bool { return m.d.CheckServing() == nil })
		waitUntil(t, "no rotation stands", func() bool { return noRotation(m.d) })
	}
	allPresent(t, ms)
}

// A master-key rotation through one manager of three reaches every
// manager; each, restarted, opens every secret under the new key, and the
// old key is in no key file, no stored value and no member's database.
// Once it has ended, no keyring of any manager holds the old master key's
// bytes any more: also not the ones a manager built before its activation
// (at its join, or a start's pre-opening of the store), which the
// activation's keyring replaced (so this is the cluster's first rotation).
func rotateMasterCase(t *testing.T, ms []*clusterNode, secrets map[string]string) {
	ctx := context.Background()
	atRest(t, ms)
	old := copyKey(t, ms[0].d) // on the heap, not in key memory
	if !keyring.LockedHolds(old.Key) {
		t.Fatal("the master key is in no key memory before the rotation: the check proves nothing")
	}
	// Through the second manager: any manager drives.
	began := time.Now()
	r, err := ms[1].d.RotateMaster(ctx)
	if err != nil {
		t.Fatalf("rotation: %v", err)
	}
	t.Logf("rotated %d secrets on 3 managers in %v (%d wrapped keys)", len(secrets), time.Since(began), r.Rewrapped)
	if r.KeyID == old.ID || r.Rewrapped < 3*len(secrets) {
		t.Fatalf("rotation: %+v (old %s)", r, old.ID)
	}
	for _, m := range ms {
		waitUntil(t, "every member compacted its store", func() bool {
			m.d.mu.Lock()
			defer m.d.mu.Unlock()
			return m.d.rot.compactAfter == ""
		})
		checkRotatedManager(t, m.d, secrets, old, r.KeyID, "")
	}
	if keyring.LockedHolds(old.Key) {
		t.Fatal("the old master key's bytes are still in key memory after the rotation")
	}
	for _, m := range ms {
		m.d.Close()
		db, err := os.ReadFile(filepath.Join(m.cfg.DataDir, "etcd", "member", "snap", "db"))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(db, []byte(old.ID)) {
			t.Errorf("manager %s: the database file still names the old key", m.d.nodeID)
		}
		m.start(t)
		waitUntil(t, "the restarted manager serves", func() bool { return m.d.CheckServing() == nil })
		checkRotatedManager(t, m.d, secrets, old, r.KeyID, "")
	}
}

// failOnce makes d's rotation stop at step (batch) as a crash would: the
// first time it is reached and every time after, until d is restarted.
func failOnce(d *Daemon, step string, batch int) <-chan struct{} {
	hit := make(chan struct{})
	var once sync.Once
	d.rot.setFail(func(s string, b int) error {
		if s == step && b == batch {
			once.Do(func() { close(hit) })
			return errCrash
		}
		select {
		case <-hit:
			return errCrash // dead since
		default:
			return nil
		}
	})
	return hit
}

// crashPoint is a step of a rotation across managers where the driver
// (or a follower) stops as a crash would.
type crashPoint struct {
	step     string
	batch    int
	follower bool
}

func (tc crashPoint) name() string {
	if tc.follower {
		return "follower-" + tc.step
	}
	return fmt.Sprintf("driver-%s-%d", tc.step, tc.batch)
}

// Every step of the rotation, on the driver and on a follower. The driver
// runs the follower's steps for itself too (followRotationSelf): its own
// key file and ack in prepare (follow-key), its switch to sealing under
// the new key (follow-sealing) and, last, its own install (member-resealed,
// installed, old-destroyed); follow-installed is a follower's only (the
// driver acks its install in driveRotation).
var crashPoints = []crashPoint{
	{step: stepClusterStarted},
	{step: stepFollowKey},
	{step: stepClusterPrepared},
	{step: stepClusterSealing},
	{step: stepFollowSealing},
	{step: stepBatch, batch: 1},
	{step: stepClusterRewrapped},
	{step: stepClusterInstall},
	{step: stepMemberResealed},
	{step: stepInstalled},
	{step: stepOldDestroyed},
	{step: stepClusterFinal},
	{step: stepFollowKey, follower: true},
	{step: stepFollowSealing, follower: true},
	{step: stepMemberResealed, follower: true},
	{step: stepInstalled, follower: true},
	{step: stepOldDestroyed, follower: true},
	{step: stepFollowInstalled, follower: true},
}

// checkRotatedManagers waits until each of ms runs under newID (a
// follower installs at its next look), then checks it as
// checkRotatedManager does.
func checkRotatedManagers(t *testing.T, ms []*clusterNode, secrets map[string]string, old keyring.MasterKey, newID, unlock string) {
	t.Helper()
	for _, m := range ms {
		waitUntil(t, "the manager runs under the new key", func() bool {
			m.d.mu.Lock()
			defer m.d.mu.Unlock()
			return m.d.mk.ID == newID
		})
		checkRotatedManager(t, m.d, secrets, old, newID, unlock)
	}
}

// rotationResult is what a rotation run in the background answered.
type rotationResult struct {
	r   Rotation
	err error
}

// rotateUntilCrash runs a rotation through driver in the background until
// crashed stops at tc's step as a crash would, and returns what the
// rotation answers (the driver's crash, or its end once a crashed
// follower is restarted).
func rotateUntilCrash(t *testing.T, driver, crashed *Daemon, tc crashPoint) <-chan rotationResult {
	t.Helper()
	driver.rot.ackTimeout = 45 * time.Second
	hit := failOnce(crashed, tc.step, tc.batch)
	done := make(chan rotationResult, 1)
	go func() {
		r, err := driver.RotateMaster(context.Background())
		done <- rotationResult{r, err}
	}()
	select {
	case <-hit:
	case res := <-done:
		t.Fatalf("the rotation ended without reaching %s: %+v %v", tc.step, res.r, res.err)
	case <-time.After(90 * time.Second):
		t.Fatalf("the rotation did not reach %s", tc.step)
	}
	return done
}

// A rotation across managers stopped at a crash point, on the driver or
// on a follower, that manager then restarted: the rotation finishes
// (resumed by another manager when the driver stopped), every secret
// opens on every manager and no old key is left.
func crashPointCase(t *testing.T, ms []*clusterNode, secrets map[string]string, tc crashPoint) {
	ctx := context.Background()
	atRest(t, ms)
	old := copyKey(t, ms[0].d)
	driver, crashed := ms[0], ms[0]
	if tc.follower {
		crashed = ms[1]
	}
	done := rotateUntilCrash(t, driver.d, crashed.d, tc)
	if tc.step == stepMemberResealed {
		checkMemberAheadOfKeyFiles(t, crashed.d, old, "")
	}
	var r Rotation
	if !tc.follower {
		res := <-done
		if !errors.Is(res.err, errCrash) {
			t.Fatalf("the driver stopped with %v, want the crash", res.err)
		}
		crashed.restart(t)
		waitUntil(t, "the restarted driver serves", func() bool { return crashed.d.CheckServing() == nil })
		allPresent(t, ms)
		// Another manager takes the rotation over once the
		// restarted one has let go of it.
		waitUntil(t, "the rotation has no driver", func() bool {
			rec, ok, err := getRotation(ctx, ms[2].d.store)
			return err == nil && (!ok || rec.Driver == "")
		})
		var err error
		if r, err = ms[2].d.RotateMaster(ctx); err != nil {
			t.Fatalf("resumed rotation: %v", err)
		}
	} else {
		if tc.step == stepFollowKey {
			// The driver's first delete of the dropped rotation's
			// record fails (a loaded store times requests out): it
			// retries, or the record stays and the wait below fails.
			driver.d.rot.setFail(func(s string, b int) error {
				if s == stepDropRecord && b == 0 {
					return errdefs.Unavailable("injected: the store timed the delete out")
				}
				return nil
			})
			defer driver.d.rot.setFail(nil)
		}
		crashed.restart(t)
		res := <-done
		if tc.step == stepFollowKey && res.err != nil {
			// Before every manager holds the new key, a manager
			// going down drops the rotation: nothing changed. The
			// answer names it, unless the store lost its leader
			// meanwhile (the crashed manager's member led etcd):
			// then the drop says that instead. (A follower back
			// before the driver saw it gone acks, and the rotation
			// simply goes on: res.err is nil.)
			if !errdefs.Is(res.err, errdefs.ErrUnavailable) || !strings.Contains(res.err.Error(), "the rotation was dropped") ||
				!strings.Contains(res.err.Error(), crashed.d.nodeID) && !errdefs.Is(res.err, errdefs.ErrNoLeader) && !errors.Is(res.err, store.ErrNoLeader) {
				t.Fatalf("rotation with a follower down in prepare: %v, want unavailable naming it (or the store's lost leader), and dropped", res.err)
			}
			waitUntil(t, "the restarted follower serves", func() bool { return crashed.d.CheckServing() == nil })
			for _, m := range ms {
				waitUntil(t, "the dropped rotation's files are gone", func() bool {
					return noRotation(m.d) && !exists(t, m.cfg.DataDir, "keys/master.key.rotating")
				})
				if m.d.mk.ID != old.ID {
					t.Fatalf("a dropped rotation changed the key of %s", m.d.nodeID)
				}
				for id, want := range secrets {
					if got, err := m.d.secrets.Data(ctx, id); err != nil || string(got) != want {
						t.Fatalf("secret %s after a dropped rotation: %v", id, err)
					}
				}
			}
			allPresent(t, ms)
			res.r, res.err = driver.d.RotateMaster(ctx)
		}
		if res.err != nil {
			t.Fatalf("rotation with a follower restarted: %v", res.err)
		}
		r = res.r
	}
	if r.KeyID == old.ID {
		t.Fatalf("still the old key: %+v", r)
	}
	checkRotatedManagers(t, ms, secrets, old, r.KeyID, "")
	// Restarted once more, the crashed one still opens everything.
	crashed.restart(t)
	waitUntil(t, "the restarted manager serves", func() bool { return crashed.d.CheckServing() == nil })
	checkRotatedManager(t, crashed.d, secrets, old, r.KeyID, "")
}

// checkMemberAheadOfKeyFiles checks that d stopped inside its install
// between the re-seal of its node key and the install of its key files:
// member.json is sealed under a key other than old, which its key files
// still hold (unlock: the unlock key of its locked file, "" for a plain
// key), and its rotating file holds the new key, sealed under old, which
// is all a restart has to open member.json with.
func checkMemberAheadOfKeyFiles(t *testing.T, d *Daemon, old keyring.MasterKey, unlock string) {
	t.Helper()
	var ms memberState
	if b, err := os.ReadFile(d.memberPath()); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &ms); err != nil {
		t.Fatal(err)
	}
	var installed keyring.MasterKey
	var err error
	if unlock == "" {
		installed, err = d.plainKey.Load()
	} else {
		installed, err = d.lockedKey.Load(unlock)
	}
	defer installed.Destroy()
	if err != nil || installed.ID != old.ID {
		t.Fatalf("stopped after the re-seal of member.json: the key files hold %s (%v), want the old key %s still", installed.ID, err, old.ID)
	}
	rotating, err := d.rotatingKey().ID()
	if err != nil || ms.Key.KeyID == old.ID || ms.Key.KeyID != rotating {
		t.Fatalf("stopped after the re-seal of member.json: it is sealed under %s, the rotating file holds %s (%v); want the new key in both", ms.Key.KeyID, rotating, err)
	}
}

// checkRefused checks that a rotation through ms[0] is refused at once
// because absent (down, or locked) is, naming it, and leaves nothing
// behind.
func checkRefused(t *testing.T, ms []*clusterNode, secrets map[string]string, what string, absent *clusterNode) {
	t.Helper()
	ctx := context.Background()
	before := ms[0].d.mk.ID
	_, err := ms[0].d.RotateMaster(ctx)
	if !errdefs.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), absent.d.nodeID) {
		t.Fatalf("rotation with a %s manager: %v, want unavailable naming %s", what, err, absent.d.nodeID)
	}
	for _, other := range ms[:2] {
		if ok, err := other.d.store.Holds(ctx, store.Absent(other.d.rotationKey())); err != nil || !ok {
			t.Fatalf("a refused rotation left its record (%v)", err)
		}
		waitUntil(t, "no rotating file", func() bool { return !exists(t, other.cfg.DataDir, "keys/master.key.rotating") })
		if other.d.mk.ID != before {
			t.Fatal("a refused rotation changed the key")
		}
	}
	for id, want := range secrets {
		if got, err := ms[0].d.secrets.Data(ctx, id); err != nil || string(got) != want {
			t.Fatalf("secret after a refused rotation: %v", err)
		}
	}
}

// A manager that is down makes a rotation refuse at once, naming it, and
// leave nothing behind (a locked one: refusesLockedManagerCase).
func refusesDownManagerCase(t *testing.T, ms []*clusterNode, secrets map[string]string) {
	atRest(t, ms)
	ms[2].d.Close()
	checkRefused(t, ms, secrets, "down", ms[2])
	ms[2].start(t)
	atRest(t, ms)
}

// While a rotation stands, promotions and demotions are refused with a
// clear text, but for the demotion of a manager that is down: a manager
// that went down for good in the middle of a rotation (it crashed and
// will not come back, or left with --force) would otherwise hold the
// rotation forever, as the driver waits for every manager it counted.
// Once demoted, the rotation no longer waits for it and ends, the others
// open everything, and a promotion goes through: the new manager holds
// the new key. (Last of the shared cluster's cases: it changes its
// managers.)
func roleChangesCase(t *testing.T, ms []*clusterNode, secrets map[string]string) {
	ctx := context.Background()
	atRest(t, ms)
	old := copyKey(t, ms[0].d)
	c := getCluster(t, ms[0].d)
	w := startWith(t, Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync})
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{ms[0].cfg.ListenAddr}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	ms[0].d.rot.wait = time.Second
	ms[1].d.rot.wait = time.Second
	// The record stands, driverless, until the test resumes it: no
	// manager resumes it on its own meanwhile (the last case: left so).
	for _, m := range ms {
		m.d.rot.noAutoResume.Store(true)
	}
	// Stopped after every manager holds the new key: the record stands.
	failOnce(ms[0].d, stepClusterPrepared, 0)
	if _, err := ms[0].d.RotateMaster(ctx); !errors.Is(err, errCrash) {
		t.Fatalf("rotation: %v", err)
	}
	ms[0].d.rot.setFail(nil)
	for _, tc := range []struct {
		name string
		by   *Daemon
		id   string
		role swarm.NodeRole
	}{
		{"promotion", ms[1].d, w.nodeID, swarm.NodeRoleManager},
		{"demotion", ms[1].d, ms[2].d.nodeID, swarm.NodeRoleWorker},
		{"demotion through the driver", ms[0].d, ms[1].d.nodeID, swarm.NodeRoleWorker},
	} {
		err := setRole(ctx, tc.by, tc.id, tc.role)
		if !errdefs.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "master-key rotation is in progress") {
			t.Fatalf("%s during a rotation: %v", tc.name, err)
		}
	}
	// A manager that is down may be demoted: the rotation then stops
	// waiting for it.
	gone := ms[2].d.nodeID
	ms[2].d.Close()
	waitUntil(t, "the stopped manager is absent", func() bool {
		absent, err := ms[0].d.absentManagers(ctx, []string{gone})
		return err == nil && len(absent) == 1
	})
	if err := setRole(ctx, ms[1].d, gone, swarm.NodeRoleWorker); err != nil {
		t.Fatalf("demoting a manager that is down during a rotation: %v", err)
	}
	// The rotation ends without it; the promotion then goes through.
	ms[0].d.rot.ackTimeout = 20 * time.Second
	r, err := ms[0].d.RotateMaster(ctx)
	if err != nil {
		t.Fatalf("resumed rotation: %v", err)
	}
	checkRotatedManagers(t, ms[:2], secrets, old, r.KeyID, "")
	if err := setRole(ctx, ms[1].d, w.nodeID, swarm.NodeRoleManager); err != nil {
		t.Fatalf("promotion after the rotation: %v", err)
	}
	waitUntil(t, "the promoted worker serves as a manager", func() bool { return w.CheckServing() == nil && w.isVoter(ctx) })
	if w.mk.ID != ms[0].d.mk.ID {
		t.Fatalf("the promoted manager holds key %s, the others %s", w.mk.ID, ms[0].d.mk.ID)
	}
}

// The tests under autolock take turns on one cluster of three managers
// too: autolock is enabled once (which rotates the master key across the
// managers when its key is fetched).
func TestClusterRotateUnderAutolock(t *testing.T) {
	ms := shareManagers(t, 3)
	secrets := clusterSecrets(t, ms[0].d, 10)
	var key string
	t.Run("enable-new-key-never-in-plain-file", func(t *testing.T) { key = newKeyNeverInPlainFileCase(t, ms, secrets) })
	if key == "" {
		t.Fatal("autolock was not enabled")
	}
	t.Run("rotate", func(t *testing.T) { rotateUnderAutolockCase(t, ms, secrets, key) })
	t.Run("manager-restarted-locked-mid-rotation", func(t *testing.T) { restartedLockedMidRotationCase(t, ms, secrets, key) })
	t.Run("refuses-locked-manager", func(t *testing.T) { refusesLockedManagerCase(t, ms, secrets, key) })
	for _, tc := range autolockCrashPoints {
		t.Run("crash-"+tc.name(), func(t *testing.T) { crashUnderAutolockCase(t, ms, secrets, key, tc) })
	}
	t.Run("owed-rotation-resumed", func(t *testing.T) { owedRotationResumedCase(t, ms, secrets, key) })
}

// Enabling autolock owes a rotation across the managers once its key is
// fetched. If the manager that recorded the fetch stops before starting
// it, the record still says it is owed, and the next manager to activate
// starts it: every manager ends under a new key, locked under the unlock
// key, and nothing is owed any more.
func owedRotationResumedCase(t *testing.T, ms []*clusterNode, secrets map[string]string, key string) {
	ctx := context.Background()
	atRestLocked(t, ms, key)
	c := getCluster(t, ms[0].d)
	spec := c.Spec
	spec.EncryptionConfig.AutoLockManagers = false
	if err := ms[0].d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatalf("disabling autolock: %v", err)
	}
	for _, m := range ms {
		waitUntil(t, "the manager's key file is plain", func() bool { return plainOnly(m.d) })
	}
	atRest(t, ms)
	old := copyKey(t, ms[0].d)
	ms[0].d.mu.Lock()
	ms[0].d.fail = failpoints{fpClusterEnableRotate: func() error { return errCrash }}
	ms[0].d.mu.Unlock()
	c = getCluster(t, ms[0].d)
	spec = c.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	if err := ms[0].d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatalf("enabling autolock: %v", err)
	}
	key2, err := ms[0].d.UnlockKey(ctx)
	if err != nil || key2 == "" {
		t.Fatalf("unlock key: %v", err)
	}
	if err := ms[0].d.UnlockKeyDelivered(ctx, key2); !errors.Is(err, errCrash) {
		t.Fatalf("recording the key's delivery: %v, want the crash", err)
	}
	if c := getCluster(t, ms[0].d); !c.UnlockKeyFetched || !c.RotationOwed {
		t.Fatalf("after the fetch: fetched %v, rotation owed %v", c.UnlockKeyFetched, c.RotationOwed)
	}
	for _, m := range ms {
		waitUntil(t, "the manager locks under the new unlock key", func() bool { return lockedUnder(m.d, key2) })
	}
	if !noRotation(ms[1].d) {
		t.Fatal("a rotation started although its start was stopped")
	}
	ms[0].restart(t)
	if st := ms[0].d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: %s, want locked", st)
	}
	if err := ms[0].d.Unlock(ctx, key2); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	for _, m := range ms {
		waitUntil(t, "the manager runs under a new key", func() bool {
			m.d.mu.Lock()
			defer m.d.mu.Unlock()
			return m.d.mk.ID != old.ID
		})
	}
	atRestLocked(t, ms, key2)
	for _, m := range ms {
		checkRotatedManager(t, m.d, secrets, old, ms[0].d.mk.ID, key2)
	}
	waitUntil(t, "nothing is owed", func() bool { return !getCluster(t, ms[1].d).RotationOwed })
}

// atRestLocked is atRest under autolock: every manager's key files locked
// under key as well.
func atRestLocked(t *testing.T, ms []*clusterNode, key string) {
	t.Helper()
	for _, m := range ms {
		waitUntil(t, "the manager locks under the key", func() bool { return lockedUnder(m.d, key) })
	}
	atRest(t, ms)
}

// Under autolock, `hush key rotate` rewrites every manager's locked key
// file under the unlock key; a manager restarted afterwards unlocks with
// that key and opens everything. An unlock-key rotation is refused while
// a master-key rotation stands.
func rotateUnderAutolockCase(t *testing.T, ms []*clusterNode, secrets map[string]string, key string) {
	ctx := context.Background()
	atRestLocked(t, ms, key)
	old := copyKey(t, ms[1].d)
	r, err := ms[1].d.RotateMaster(ctx)
	if err != nil {
		t.Fatalf("rotation under autolock: %v", err)
	}
	for _, m := range ms {
		checkRotatedManager(t, m.d, secrets, old, r.KeyID, key)
	}
	ms[2].restart(t)
	if st := ms[2].d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: %s, want locked", st)
	}
	if err := ms[2].d.Unlock(ctx, key); err != nil {
		t.Fatalf("unlock after the rotation: %v", err)
	}
	waitUntil(t, "the unlocked manager serves", func() bool { return ms[2].d.CheckServing() == nil })
	checkRotatedManager(t, ms[2].d, secrets, old, r.KeyID, key)
	// An autolock change is refused while a rotation stands (held
	// standing: no manager resumes it on its own meanwhile).
	allPresent(t, ms)
	for _, m := range ms {
		m.d.rot.noAutoResume.Store(true)
		defer m.d.rot.noAutoResume.Store(false)
	}
	failOnce(ms[0].d, stepClusterPrepared, 0)
	if _, err := ms[0].d.RotateMaster(ctx); !errors.Is(err, errCrash) {
		t.Fatalf("rotation: %v", err)
	}
	ms[0].d.rot.setFail(nil)
	ms[1].d.rot.wait = time.Second
	c := getCluster(t, ms[1].d)
	if err := ms[1].d.Update(ctx, c.Version, c.Spec, api.SwarmUpdateFlags{RotateManagerUnlockKey: true}); !errdefs.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("unlock-key rotation during a master-key rotation: %v", err)
	}
	if _, err := ms[1].d.RotateMaster(ctx); err != nil {
		t.Fatalf("resumed rotation: %v", err)
	}
}

// A manager that is locked makes a rotation refuse at once, naming it,
// and leave nothing behind.
func refusesLockedManagerCase(t *testing.T, ms []*clusterNode, secrets map[string]string, key string) {
	ctx := context.Background()
	atRestLocked(t, ms, key)
	ms[2].restart(t)
	if st := ms[2].d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: %s, want locked", st)
	}
	checkRefused(t, ms, secrets, "locked", ms[2])
	if err := ms[2].d.Unlock(ctx, key); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	atRestLocked(t, ms, key)
}
