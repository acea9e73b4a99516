package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/moby/moby/api/types/swarm"
)

// operator is what the client side of a key change has seen: the unlock
// keys that reached it, newest last.
type operator struct{ keys []string }

func (o *operator) has(k string) bool { return slices.Contains(o.keys, k) }

// step is one client call of a key change.
type step func(ctx context.Context, d *Daemon, op *operator) error

func setAutolock(on bool) step {
	return func(ctx context.Context, d *Daemon, _ *operator) error {
		c, err := getClusterErr(ctx, d)
		if err != nil {
			return err
		}
		spec := c.Spec
		spec.EncryptionConfig.AutoLockManagers = on
		return d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{})
	}
}

func rotateUnlockKey(ctx context.Context, d *Daemon, _ *operator) error {
	c, err := getClusterErr(ctx, d)
	if err != nil {
		return err
	}
	return d.Update(ctx, c.Version, c.Spec, api.SwarmUpdateFlags{RotateManagerUnlockKey: true})
}

// fetchKey is GET /swarm/unlockkey: the key reaches the operator, then the
// handler reports the delivery (where a crash can still strike).
func fetchKey(ctx context.Context, d *Daemon, op *operator) error {
	k, err := d.UnlockKey(ctx)
	if err != nil {
		return err
	}
	op.keys = append(op.keys, k)
	return d.UnlockKeyDelivered(ctx, k)
}

func getClusterErr(ctx context.Context, d *Daemon) (struct {
	Version uint64
	Spec    swarm.Spec
}, error) {
	var out struct {
		Version uint64
		Spec    swarm.Spec
	}
	sw, err := d.Inspect(ctx)
	if err != nil {
		return out, err
	}
	out.Version, out.Spec = sw.Version.Index, sw.Spec
	return out, nil
}

// keyChange is one key-change sequence as the docker CLI drives it.
type keyChange struct {
	name string
	// setup brings a fresh node to the state before the call.
	setup []step
	// call is the CLI's calls.
	call []step
	// points are the failpoints the call passes through.
	points []string
	// wantOn is the autolock setting after the call.
	wantOn bool
}

var keyChanges = []keyChange{
	{
		name:   "enable",
		call:   []step{setAutolock(true), fetchKey}, // docker swarm update --autolock=true
		points: []string{fpEnableWriteNext, fpEnablePut, fpAckInstall, fpEnableRotate, fpEnableRemovePlain},
		wantOn: true,
	},
	{
		name:   "rotate",
		setup:  []step{setAutolock(true), fetchKey},
		call:   []step{rotateUnlockKey, fetchKey}, // docker swarm unlock-key --rotate
		points: []string{fpRotateWriteNext, fpRotatePut, fpAckInstall},
		wantOn: true,
	},
	{
		name:   "rotate while a rotation is pending",
		setup:  []step{setAutolock(true), fetchKey, rotateUnlockKey},
		call:   []step{rotateUnlockKey, fetchKey},
		points: []string{fpRotateWriteNext, fpRotatePut, fpAckInstall},
		wantOn: true,
	},
	{
		name:   "rotate while enabling is pending",
		setup:  []step{setAutolock(true)},
		call:   []step{rotateUnlockKey, fetchKey},
		points: []string{fpRotateWriteNext, fpRotatePut, fpAckInstall, fpEnableRotate, fpEnableRemovePlain},
		wantOn: true,
	},
	{
		name:   "disable",
		setup:  []step{setAutolock(true), fetchKey},
		call:   []step{setAutolock(false)}, // docker swarm update --autolock=false
		points: []string{fpDisableWritePlain, fpDisablePut, fpDisableRemoveNext, fpDisableRemoveLocked},
	},
	{
		name:   "disable while a rotation is pending",
		setup:  []step{setAutolock(true), fetchKey, rotateUnlockKey},
		call:   []step{setAutolock(false)},
		points: []string{fpDisableWritePlain, fpDisablePut, fpDisableRemoveNext, fpDisableRemoveLocked},
	},
	{
		name:   "disable while enabling is pending",
		setup:  []step{setAutolock(true)},
		call:   []step{setAutolock(false)},
		points: []string{fpDisableWritePlain, fpDisablePut, fpDisableRemoveNext, fpDisableRemoveLocked},
	},
}

// crash makes the goroutine that reaches a failpoint stop dead there, as a
// kill -9 would stop the process: nothing after it runs, no error path, no
// clean-up (deferred unlocks run, which a dead process does not need).
func crash() error {
	runtime.Goexit()
	return nil
}

// runSteps runs steps until one fails; false if the goroutine was stopped
// by a crash point.
func runSteps(ctx context.Context, d *Daemon, op *operator, steps []step) (finished bool, err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, s := range steps {
			if err = s(ctx, d, op); err != nil {
				break
			}
		}
		finished = true
	}()
	<-done
	return finished, err
}

const secretValue = "s3cr3t-value-for-crash-tests"

// For every key change and every write in it, a crash there (kill -9) or a
// failure there, then a restart, leaves a node as before the call or after
// it: after only if the new key can have reached the operator, locked
// only under a key the operator has, every secret still opening, no
// plaintext key beside an acknowledged autolock, and no temp key file.
func TestKeyChangesSurviveCrashAtEveryStep(t *testing.T) {
	injected := errors.New("injected failure")
	for _, kc := range keyChanges {
		for _, point := range kc.points {
			for _, mode := range []string{"crash", "error"} {
				t.Run(fmt.Sprintf("%s/%s/%s", kc.name, point, mode), func(t *testing.T) {
					t.Parallel()
					testKeyChangeAt(t, kc, point, mode == "crash", injected)
				})
			}
		}
	}
}

func testKeyChangeAt(t *testing.T, kc keyChange, point string, crashes bool, injected error) {
	ctx := context.Background()
	dir := t.TempDir()
	d := start(t, dir)
	op := &operator{}
	for i, s := range kc.setup {
		if err := s(ctx, d, op); err != nil {
			t.Fatalf("setup step %d: %v", i, err)
		}
	}
	id, err := d.secrets.Create(ctx, objects.Spec{Name: "crash-test", Data: []byte(secretValue)})
	if err != nil {
		t.Fatal(err)
	}
	beforeOn := getCluster(t, d).Spec.EncryptionConfig.AutoLockManagers

	var hit atomic.Bool
	// The point fires once: a passing failure, which the recovery after
	// it does not meet again.
	d.fail = failpoints{point: func() error {
		if !hit.CompareAndSwap(false, true) {
			return nil
		}
		if crashes {
			return crash()
		}
		return injected
	}}
	finished, err := runSteps(ctx, d, op, kc.call)
	if !hit.Load() {
		t.Fatalf("the call never reached %s: the test does not test it", point)
	}
	if crashes && finished {
		t.Fatal("the call went on past its crash point")
	}
	if !crashes && !errors.Is(err, injected) {
		t.Fatalf("the call: err %v, want the injected failure", err)
	}
	d.fail = nil
	if !crashes {
		// A failure the node survives: what it has on disk follows the
		// record already, before any restart.
		checkCoherent(t, d, op)
	}
	// Close touches no key file and no record: the same as a kill -9 for
	// what this test looks at (etcd's committed writes are on disk).
	d.Close()

	d = restart(t, dir, op)
	on := getCluster(t, d).Spec.EncryptionConfig.AutoLockManagers
	if on != beforeOn && on != kc.wantOn {
		t.Fatalf("autolock %v after restart: neither before (%v) nor after (%v)", on, beforeOn, kc.wantOn)
	}
	checkCoherent(t, d, op)
	checkSecret(t, d, id)

	// Finish as the operator would: fetch the key if one is owed, and the
	// next restart locks under it (or does not lock, with autolock off).
	if d.pendingKey.Load() != pendingNone {
		if err := fetchKey(ctx, d, op); err != nil {
			t.Fatal(err)
		}
	}
	checkCoherent(t, d, op)
	d.Close()
	d = restart(t, dir, op)
	checkCoherent(t, d, op)
	checkSecret(t, d, id)
	if getCluster(t, d).Spec.EncryptionConfig.AutoLockManagers {
		if d.plainKey.Exists() || d.nextKey().Exists() || !d.lockedKey.Exists() {
			t.Errorf("after the key was fetched: plain %v, pending %v, locked %v; want only the locked key",
				d.plainKey.Exists(), d.nextKey().Exists(), d.lockedKey.Exists())
		}
	}
}

// restart starts hushd on dir again and, if it comes back locked, unlocks
// it with a key the operator has: a node locked under any other key has
// lost every secret.
func restart(t *testing.T, dir string, op *operator) *Daemon {
	t.Helper()
	d := start(t, dir)
	checkNoTempFiles(t, dir)
	if d.State() != swarm.LocalNodeStateLocked {
		return d
	}
	if len(op.keys) == 0 {
		t.Fatal("the node came back locked although no unlock key ever reached the operator")
	}
	// Newest first: the operator uses the last key they were shown.
	for i := len(op.keys) - 1; i >= 0; i-- {
		if err := d.Unlock(context.Background(), op.keys[i]); err == nil {
			return d
		}
	}
	t.Fatalf("the node came back locked and none of the %d keys the operator was shown unlocks it", len(op.keys))
	return nil
}

// checkCoherent checks that the key files are those of one of the states
// autolock.go allows, given the record, and that a pending key is one the
// operator has not been shown (else it would not be pending) and is
// warned about.
func checkCoherent(t *testing.T, d *Daemon, op *operator) {
	t.Helper()
	c := getCluster(t, d)
	plain, locked, next := d.plainKey.Exists(), d.lockedKey.Exists(), d.nextKey().Exists()
	files := fmt.Sprintf("plain %v, locked %v, pending %v", plain, locked, next)
	if !c.Spec.EncryptionConfig.AutoLockManagers {
		if !plain || locked || next {
			t.Fatalf("autolock off, key files %s; want only the plaintext key", files)
		}
		if w := d.Warnings(); len(w) != 0 {
			t.Errorf("warnings with autolock off: %q", w)
		}
		return
	}
	recorded, err := c.UnlockKey(&d.keys)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case !plain && locked && !next: // acknowledged
		if !op.has(recorded) {
			t.Fatal("locked under the recorded key, which never reached the operator")
		}
		if !d.lockedKey.Opens(recorded) {
			t.Fatal("the locked key does not open with the recorded unlock key")
		}
		if w := d.Warnings(); len(w) != 0 {
			t.Errorf("warnings with nothing pending: %q", w)
		}
	case plain && !locked && next: // enabling, key not fetched
		if op.has(recorded) && d.pendingKey.Load() == pendingNone {
			t.Fatal("pending files for a key already fetched")
		}
		if !d.nextKey().Opens(recorded) {
			t.Fatal("the pending key does not open with the recorded unlock key")
		}
		if w := d.Warnings(); len(w) != 1 || !strings.Contains(w[0], "not been fetched") {
			t.Errorf("warnings while the key is owed: %q", w)
		}
		if d.State() != swarm.LocalNodeStateActive {
			t.Errorf("state %s while enabling is pending; want active", d.State())
		}
	case !plain && locked && next: // rotation, new key not fetched
		if !d.nextKey().Opens(recorded) {
			t.Fatal("the pending key does not open with the recorded unlock key")
		}
		opens := false
		for _, k := range op.keys {
			opens = opens || d.lockedKey.Opens(k)
		}
		if !opens {
			t.Fatal("the locked key opens with no key the operator has")
		}
		if w := d.Warnings(); len(w) != 1 || !strings.Contains(w[0], "rotated") {
			t.Errorf("warnings while the rotated key is owed: %q", w)
		}
	default:
		t.Fatalf("autolock on, key files %s: not a state a key change may leave", files)
	}
}

func checkSecret(t *testing.T, d *Daemon, id string) {
	t.Helper()
	b, err := d.secrets.Data(context.Background(), id)
	if err != nil {
		t.Fatalf("secret after the restart: %v", err)
	}
	if !bytes.Equal(b, []byte(secretValue)) {
		t.Fatal("secret after the restart: wrong value")
	}
	keyring.Wipe(b)
}

func checkNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "keys", ".hush-master-key-*"))
	if len(m) > 0 {
		t.Fatalf("temp key files left: %v", m)
	}
}

// Enabling autolock and restarting before anyone fetched the key: the node
// is not locked (it kept the plaintext key), says why in /info's warnings,
// and still hands the key out; fetched, the key unlocks after the next
// restart. (Before the fix, it came back locked under a key no one had.)
func TestEnableAutolockRestartBeforeFetch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := start(t, dir)
	if err := setAutolock(true)(ctx, d, nil); err != nil {
		t.Fatal(err)
	}
	if sw, _ := d.Inspect(ctx); !sw.Spec.EncryptionConfig.AutoLockManagers {
		t.Fatal("docker swarm inspect: autolock off after enabling it")
	}
	d.Close()

	d = start(t, dir)
	if st := d.State(); st != swarm.LocalNodeStateActive {
		t.Fatalf("state after a restart before the key was fetched: %s, want active", st)
	}
	if w := d.Warnings(); len(w) != 1 || !strings.Contains(w[0], "unlock key has not been fetched") {
		t.Fatalf("warnings: %q", w)
	}
	op := &operator{}
	if err := fetchKey(ctx, d, op); err != nil {
		t.Fatal(err)
	}
	if w := d.Warnings(); len(w) != 0 {
		t.Fatalf("warnings after the fetch: %q", w)
	}
	if d.plainKey.Exists() {
		t.Fatal("plaintext master key still on disk after the key was fetched")
	}
	d.Close()
	d = start(t, dir)
	if st := d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("state after the key was fetched and a restart: %s, want locked", st)
	}
	if err := d.Unlock(ctx, op.keys[0]); err != nil {
		t.Fatal(err)
	}
}

// A rotation whose new key was never fetched keeps the old key working
// across restarts, and the new one works too; once the new one is fetched,
// the old one stops. (Before the fix, a restart after an interrupted
// rotation locked the operator out.)
func TestUnfetchedRotationKeepsOldKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := start(t, dir)
	old := enableAutolock(t, d)
	if err := rotateUnlockKey(ctx, d, nil); err != nil {
		t.Fatal(err)
	}
	newKey, err := d.UnlockKey(ctx) // read, not delivered: the answer was lost
	if err != nil || newKey == old {
		t.Fatalf("rotated key: same %v, %v", newKey == old, err)
	}
	for range 2 {
		d.Close()
		d = start(t, dir)
		if err := d.Unlock(ctx, old); err != nil {
			t.Fatalf("old key after an unfetched rotation: %v", err)
		}
		if w := d.Warnings(); len(w) != 1 {
			t.Fatalf("warnings: %q", w)
		}
	}
	// Unlocking with the new key proves it reached the operator.
	d.Close()
	d = start(t, dir)
	if err := d.Unlock(ctx, newKey); err != nil {
		t.Fatalf("new key: %v", err)
	}
	if d.nextKey().Exists() || len(d.Warnings()) != 0 {
		t.Fatal("the rotation is still pending after an unlock with the new key")
	}
	d.Close()
	d = start(t, dir)
	if err := d.Unlock(ctx, old); err == nil {
		t.Fatal("the old key still unlocks after the new one was used")
	}
}

// A crash inside a key-file write leaves its temp file, plaintext key and
// all; the next start removes it, overwriting it first, but leaves alone a
// temp name that is a second link of the installed key file.
func TestStartRemovesTempKeyFiles(t *testing.T) {
	dir := t.TempDir()
	d := start(t, dir)
	keys := filepath.Dir(d.plainKey.Path)
	installed, err := os.ReadFile(d.plainKey.Path)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()

	// A write that died before its link: a key no one uses.
	orphan := filepath.Join(keys, ".hush-master-key-1234.tmp")
	if err := os.WriteFile(orphan, []byte("hush-mk-v1:0123456789abcdef:"+strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(orphan) // to read its bytes once unlinked
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	// A write that died between link and unlink: the temp name is the
	// installed key file.
	linked := filepath.Join(keys, ".hush-master-key-5678.tmp")
	if err := os.Link(d.plainKey.Path, linked); err != nil {
		t.Fatal(err)
	}

	d = start(t, dir)
	checkNoTempFiles(t, dir)
	left := make([]byte, 200)
	n, _ := fh.ReadAt(left, 0)
	if bytes.Contains(left[:n], []byte("hush-mk-v1")) {
		t.Error("the orphaned temp key file was unlinked without being overwritten")
	}
	got, err := os.ReadFile(d.plainKey.Path)
	if err != nil || !bytes.Equal(got, installed) {
		t.Fatalf("the installed key file changed while removing its temp link: %v", err)
	}
	if d.State() != swarm.LocalNodeStateActive {
		t.Fatalf("state %s", d.State())
	}
}

// Enabling autolock rotates the master key once the unlock key has been
// handed out (swarmkit rotates its data key on the unlocked→locked
// transition): afterwards nothing in the store is wrapped by the key an
// earlier copy of master.key holds, and the secret still opens.
func TestEnableAutolockRotatesMasterKey(t *testing.T) {
	ctx := context.Background()
	d := start(t, t.TempDir())
	id, err := d.secrets.Create(ctx, objects.Spec{Name: "s", Data: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	before := d.mk.ID
	if n, err := d.store.Referencing(ctx, before); err != nil || n == 0 {
		t.Fatalf("records under the first master key: %d, %v; want some", n, err)
	}
	enableAutolock(t, d)
	if d.mk.ID == before {
		t.Fatalf("master key %s unchanged after enabling autolock", before)
	}
	if n, err := d.store.Referencing(ctx, before); err != nil || n != 0 {
		t.Fatalf("records still under the old master key after enabling autolock: %d, %v", n, err)
	}
	if d.plainKey.Exists() {
		t.Fatal("plaintext master key left after the unlock key was delivered")
	}
	if data, err := d.secrets.Data(ctx, id); err != nil || string(data) != "v" {
		t.Fatalf("secret after the rotation: %q %v", data, err)
	}
}
