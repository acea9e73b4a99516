package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/moby/moby/api/types/swarm"
)

// clusterNode is one manager of an in-process cluster test.
type clusterNode struct {
	cfg Config
	d   *Daemon
	// owner, if set, is the test that formed the cluster: a daemon
	// (re)started in one of its subtests is closed when the owner ends,
	// so the next subtest finds it running (shareManagers).
	owner *testing.T
}

func (n *clusterNode) restart(t *testing.T) {
	t.Helper()
	n.d.Close()
	n.start(t)
}

// start starts the node's daemon again (after a Close).
func (n *clusterNode) start(t *testing.T) {
	t.Helper()
	if n.owner == nil {
		n.d = startWith(t, n.cfg)
		return
	}
	cfg := n.cfg
	cfg.Socket = filepath.Join(cfg.DataDir, "s.sock")
	cfg.SecretsDir = filepath.Join(cfg.DataDir, "run")
	d, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.owner.Cleanup(d.Close)
	n.d = d
}

// shareManagers is startManagers for a test whose subtests take turns on
// one cluster (forming a cluster of managers under -race takes seconds).
func shareManagers(t *testing.T, n int) []*clusterNode {
	t.Helper()
	ms := startManagers(t, n)
	for _, m := range ms {
		m.owner = t
	}
	return ms
}

// startManagers starts a first manager and joins n-1 more to it.
func startManagers(t *testing.T, n int) []*clusterNode {
	t.Helper()
	ctx := context.Background()
	l1 := loopbackListen(t)
	first := &clusterNode{cfg: Config{DataDir: t.TempDir(), ListenAddr: l1, RoleSyncPeriod: fastSync}}
	first.d = startWith(t, first.cfg)
	ms := []*clusterNode{first}
	for range n - 1 {
		ms = append(ms, joinManager(t, ctx, first))
	}
	return ms
}

func joinManager(t *testing.T, ctx context.Context, to *clusterNode) *clusterNode {
	t.Helper()
	c := getCluster(t, to.d)
	m := &clusterNode{cfg: Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync}}
	m.d = startWith(t, m.cfg)
	if err := m.d.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{to.cfg.ListenAddr}, JoinToken: c.JoinTokens.Manager}); err != nil {
		t.Fatalf("manager join: %v", err)
	}
	return m
}

// lockedUnder reports whether d's key files are those of autolock under
// key: only the locked key, opening with it.
func lockedUnder(d *Daemon, key string) bool {
	return !d.plainKey.Exists() && !d.nextKey().Exists() && d.lockedKey.Exists() && d.lockedKey.Opens(key)
}

func plainOnly(d *Daemon) bool {
	return d.plainKey.Exists() && !d.nextKey().Exists() && !d.lockedKey.Exists()
}

// Autolock on a cluster of managers: enabled through one manager, every
// manager keeps its plaintext key until the key is fetched, then locks
// under it (a manager joining later too); a restarted manager comes back
// locked, takes no part until unlocked, refuses a wrong key and serves
// once unlocked; a key rotated through another manager reaches every
// manager, after a restart only the new key unlocks; a manager demoted
// while down and locked becomes a worker at its unlock; turned off, every
// manager holds its plaintext key again.
func TestClusterAutolock(t *testing.T) {
	ctx := context.Background()
	ms := startManagers(t, 2)
	m1, m2 := ms[0], ms[1]
	id, err := m1.d.secrets.Create(ctx, objects.Spec{Name: "cluster-autolock", Data: []byte(secretValue)})
	if err != nil {
		t.Fatal(err)
	}

	// Enabled, not fetched: every manager owes the key and keeps its
	// plaintext key.
	c := getCluster(t, m1.d)
	spec := c.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	if err := m1.d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the second manager owes the new key", func() bool {
		return m2.d.nextKey().Exists() && m2.d.pendingKey.Load() == pendingEnable
	})
	if !m2.d.plainKey.Exists() || m2.d.lockedKey.Exists() {
		t.Fatal("a manager dropped its plaintext key before the unlock key was fetched")
	}
	k1 := fetchUnlockKey(t, m1.d)
	for i, m := range ms {
		waitUntil(t, fmt.Sprintf("manager %d locks under the fetched key", i+1), func() bool { return lockedUnder(m.d, k1) })
		// The files lock before followOnce notes that nothing is owed.
		waitUntil(t, fmt.Sprintf("manager %d stops warning with nothing owed", i+1), func() bool { return len(m.d.Warnings()) == 0 })
	}
	// A manager joining the autolocked cluster locks its files too.
	m3 := joinManager(t, ctx, m1)
	ms = append(ms, m3)
	waitUntil(t, "the joined manager locks under the key", func() bool { return lockedUnder(m3.d, k1) })

	// Restarted, a manager is locked and runs no member.
	m2.restart(t)
	if st := m2.d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: state %q, want locked", st)
	}
	if err := m2.d.CheckServing(); err == nil || err.Error() != msgLocked {
		t.Fatalf("locked manager serves: %v", err)
	}
	if code, _, body := socketCall(t, m2.d, "GET", "/v1.41/secrets"); code != http.StatusServiceUnavailable || !strings.Contains(body, "needs to be unlocked") {
		t.Errorf("secret ls on the locked manager: %d %q", code, body)
	}
	if code, _, body := socketCall(t, m2.d, "GET", "/v1.41/info"); code != http.StatusOK || !strings.Contains(body, `"LocalNodeState":"locked"`) {
		t.Errorf("info on the locked manager: %d %q", code, body)
	}
	if err := m2.d.Leave(ctx, false); err == nil || err.Error() != msgLeaveLocked {
		t.Errorf("leave on the locked manager: %v, want %q", err, msgLeaveLocked)
	}
	if !m2.d.lockedKey.Exists() || !exists(t, m2.cfg.DataDir, "member.json") {
		t.Fatal("a refused leave touched the locked manager's files")
	}
	// The other two keep the quorum: writes go on.
	if _, err := m1.d.secrets.Create(ctx, objects.Spec{Name: "while-locked", Data: []byte(secretValue)}); err != nil {
		t.Fatalf("a write with one manager locked: %v", err)
	}
	if err := m2.d.Unlock(ctx, "SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("unlock with a wrong key: %v", err)
	}
	m2.d.unlock.reset()
	if err := m2.d.Unlock(ctx, k1); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	waitUntil(t, "the unlocked manager serves", func() bool { return m2.d.CheckServing() == nil })
	checkSecret(t, m2.d, id)
	if !m2.d.isVoter(ctx) {
		t.Error("the unlocked manager is not a voter")
	}

	// Rotated through the third manager, fetched there.
	c = getCluster(t, m3.d)
	if err := m3.d.Update(ctx, c.Version, c.Spec, api.SwarmUpdateFlags{RotateManagerUnlockKey: true}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the first manager owes the rotated key", func() bool { return m1.d.pendingKey.Load() == pendingRotation })
	if !m1.d.lockedKey.Opens(k1) {
		t.Fatal("an unfetched rotation stopped the old key from unlocking")
	}
	k2 := fetchUnlockKey(t, m3.d)
	if k2 == k1 {
		t.Fatal("the rotation kept the key")
	}
	for i, m := range ms {
		waitUntil(t, fmt.Sprintf("manager %d locks under the rotated key", i+1), func() bool { return lockedUnder(m.d, k2) })
	}
	m1.restart(t)
	if st := m1.d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted first manager: state %q, want locked", st)
	}
	if err := m1.d.Unlock(ctx, k1); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("unlock with the key rotated away: %v", err)
	}
	m1.d.unlock.reset()
	if err := m1.d.Unlock(ctx, k2); err != nil {
		t.Fatalf("unlock with the rotated key: %v", err)
	}
	waitUntil(t, "the first manager serves again", func() bool { return m1.d.CheckServing() == nil && m1.d.joinSvc != nil })
	checkSecret(t, m1.d, id)

	// Demoted while it was down, the second manager learns it at its
	// unlock and becomes a worker, holding no master key file at all.
	m2.d.Close()
	if err := setRole(ctx, m1.d, m2.d.nodeID, swarm.NodeRoleWorker); err != nil {
		t.Fatalf("demoting the stopped manager: %v", err)
	}
	m2.d = startWith(t, m2.cfg)
	if st := m2.d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted demoted manager: state %q, want locked", st)
	}
	if err := m2.d.Unlock(ctx, k2); err != nil {
		t.Fatalf("unlocking the demoted manager: %v", err)
	}
	waitUntil(t, "the demoted manager runs as a worker", m2.d.isWorker)
	for _, f := range []string{"keys/master.key", "keys/master.key.locked", "keys/master.key.locked.next", "member.json"} {
		if exists(t, m2.cfg.DataDir, f) {
			t.Errorf("the demoted manager keeps %s", f)
		}
	}
	ms = []*clusterNode{m1, m3}

	// Turned off through the third manager.
	c = getCluster(t, m3.d)
	spec = c.Spec
	spec.EncryptionConfig.AutoLockManagers = false
	if err := m3.d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	for i, m := range ms {
		waitUntil(t, fmt.Sprintf("manager %d holds its plaintext key again", i+1), func() bool { return plainOnly(m.d) })
	}
	m1.restart(t)
	waitUntil(t, "the first manager serves after a restart without autolock", func() bool { return m1.d.CheckServing() == nil })
}

// A manager's key files follow the record through a crash at each of
// their writes: stopped dead at the point (as kill -9), restarted (and
// unlocked with the key the operator has, if locked), every manager's
// files are those of a state autolock.go allows, the secret opens, and
// once the key is fetched again the manager ends locked under it (or
// holding only its plaintext key, autolock off).
func TestClusterKeyFilesSurviveCrashAtEveryStep(t *testing.T) {
	type seq struct {
		name   string
		setup  []step // through the first manager
		call   []step // through the first manager
		points []string
		// acker: the point is on the manager that hands the key out.
		acker  bool
		wantOn bool
	}
	seqs := []seq{
		{"enable", nil, []step{setAutolock(true), fetchKey},
			[]string{fpSyncWriteNext, fpSyncInstall, fpEnableRemovePlain}, false, true},
		{"enable/acker", nil, []step{setAutolock(true), fetchKey},
			[]string{fpAckRecord, fpSyncInstall, fpEnableRemovePlain}, true, true},
		{"rotate", []step{setAutolock(true), fetchKey}, []step{rotateUnlockKey, fetchKey},
			[]string{fpSyncWriteNext, fpSyncInstall}, false, true},
		{"disable", []step{setAutolock(true), fetchKey}, []step{setAutolock(false)},
			[]string{fpSyncWritePlain, fpSyncRemoveLocked}, false, false},
	}
	for _, sq := range seqs {
		for _, point := range sq.points {
			t.Run(sq.name+"/"+point, func(t *testing.T) {
				ctx := context.Background()
				ms := startManagers(t, 2)
				m1, m2 := ms[0], ms[1]
				op := &operator{}
				if _, err := runSteps(ctx, m1.d, op, sq.setup); err != nil {
					t.Fatal(err)
				}
				for _, m := range ms {
					// Enabling autolock also rotates the master key
					// across the managers: its re-wrap moves the
					// record's version, which the call reads.
					waitUntil(t, "the setup reached every manager", func() bool {
						_, ok := m.d.followOnce(ctx)
						return ok && m.d.pendingKey.Load() == pendingNone && noRotation(m.d)
					})
				}
				id, err := m1.d.secrets.Create(ctx, objects.Spec{Name: "crash-test", Data: []byte(secretValue)})
				if err != nil {
					t.Fatal(err)
				}
				target := m2
				if sq.acker {
					target = m1
				}
				var hit atomic.Bool
				reached := make(chan struct{})
				target.d.mu.Lock()
				target.d.fail = failpoints{point: func() error {
					if !hit.CompareAndSwap(false, true) {
						return nil
					}
					close(reached)
					return crash()
				}}
				target.d.mu.Unlock()
				if _, err := runSteps(ctx, m1.d, op, sq.call); err != nil && !sq.acker {
					t.Fatalf("the call: %v", err)
				}
				<-reached
				target.d.mu.Lock()
				target.d.fail = nil
				target.d.mu.Unlock()
				target.d.Close()
				target.d = startWith(t, target.cfg)
				if target.d.State() == swarm.LocalNodeStateLocked {
					unlocked := false
					for i := len(op.keys) - 1; i >= 0 && !unlocked; i-- {
						unlocked = target.d.Unlock(ctx, op.keys[i]) == nil
					}
					if !unlocked {
						t.Fatal("the manager came back locked under no key the operator was shown")
					}
				}
				waitUntil(t, "the restarted manager serves", func() bool { return target.d.CheckServing() == nil })
				if on := getCluster(t, target.d).Spec.EncryptionConfig.AutoLockManagers; on != sq.wantOn {
					// The call's record was written before any point.
					t.Fatalf("autolock %v after the crash, want %v", on, sq.wantOn)
				}
				for _, m := range ms {
					if m != target {
						// Not crashed, maybe converging still: its
						// files as its next look at the record leaves
						// them.
						waitUntil(t, "the other manager follows the record", func() bool { _, ok := m.d.followOnce(ctx); return ok })
					}
					checkCoherent(t, m.d, op)
				}
				checkSecret(t, target.d, id)
				// Finish as the operator would, then every manager
				// ends as the record says.
				if m1.d.pendingKey.Load() != pendingNone || target.d.pendingKey.Load() != pendingNone {
					if err := fetchKey(ctx, m1.d, op); err != nil {
						t.Fatal(err)
					}
				}
				c := getCluster(t, m1.d)
				rec, err := c.UnlockKey(&m1.d.keys)
				if err != nil {
					t.Fatal(err)
				}
				for i, m := range ms {
					waitUntil(t, fmt.Sprintf("manager %d follows the record", i+1), func() bool {
						if c.Spec.EncryptionConfig.AutoLockManagers {
							return lockedUnder(m.d, rec)
						}
						return plainOnly(m.d)
					})
				}
				checkNoTempFiles(t, target.cfg.DataDir)
			})
		}
	}
}

// `docker swarm init --autolock` on a manager that listens: once the key
// is fetched its files lock, a restart is locked without its member, and
// the unlock starts the member and the join/CA service. A lone autolocked
// node restarted with --listen-addr becomes that manager at its unlock.
func TestInitAutolockOnListeningManager(t *testing.T) {
	ctx := context.Background()
	cfg := Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync}
	d := startWith(t, cfg)
	if _, err := d.Init(ctx, swarm.InitRequest{ListenAddr: cfg.ListenAddr, AutoLockManagers: true}); err != nil {
		t.Fatalf("init --autolock: %v", err)
	}
	k := fetchUnlockKey(t, d)
	waitUntil(t, "the manager locks under the fetched key", func() bool { return lockedUnder(d, k) })
	d.Close()
	d = startWith(t, cfg)
	if d.State() != swarm.LocalNodeStateLocked || d.lockedMember == nil {
		t.Fatalf("restarted: state %q, locked member %v; want locked without its member", d.State(), d.lockedMember != nil)
	}
	if err := d.Unlock(ctx, k); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if d.CheckServing() != nil || d.joinSvc == nil || !d.isVoter(ctx) {
		t.Fatalf("unlocked manager: serving %v, join service %v", d.CheckServing(), d.joinSvc != nil)
	}

	lone := Config{DataDir: t.TempDir(), RoleSyncPeriod: fastSync}
	l := startWith(t, lone)
	lk := enableAutolock(t, l)
	l.Close()
	lone.ListenAddr = loopbackListen(t)
	l = startWith(t, lone)
	if l.State() != swarm.LocalNodeStateLocked {
		t.Fatalf("lone node restarted with --listen-addr: state %q, want locked", l.State())
	}
	if err := l.Unlock(ctx, lk); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if l.member == nil || l.joinSvc == nil || l.CheckServing() != nil {
		t.Fatalf("unlocked with --listen-addr: member %v, join service %v, serving %v", l.member != nil, l.joinSvc != nil, l.CheckServing())
	}
	if !lockedUnder(l, lk) {
		t.Fatal("the node that became a manager no longer has its files locked under the key")
	}
}

// A lone node autolocked before it listened for managers (its key was
// fetched on the lone node's path, which leaves the record's
// UnlockKeyFetched unset) becomes the first manager: a manager joining it
// must still lock its master key, not keep it in the clear until someone
// fetches the key again.
func TestJoinAfterLoneAutolockLocks(t *testing.T) {
	ctx := context.Background()
	first := &clusterNode{cfg: Config{DataDir: t.TempDir(), RoleSyncPeriod: fastSync}}
	first.d = startWith(t, first.cfg)
	k := enableAutolock(t, first.d)
	first.d.Close()
	first.cfg.ListenAddr = loopbackListen(t)
	first.d = startWith(t, first.cfg)
	if err := first.d.Unlock(ctx, k); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if first.d.member == nil {
		t.Fatal("the unlocked node did not become a manager")
	}
	m := joinManager(t, ctx, first)
	waitUntil(t, "the joined manager locks under the key the operator has", func() bool { return lockedUnder(m.d, k) })
	if w := m.d.Warnings(); len(w) != 0 {
		t.Errorf("the joined manager warns with nothing owed: %q", w)
	}
}
