package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// A driver that stopped between creating the rotation record and naming
// its managers (a crash there) leaves a record that names no manager;
// restarted, it lets go of the rotation at its first look, so that
// another manager's `hush key rotate` takes it over and finishes it
// (rather than being refused for as long as the stopped driver is up).
func driverStoppedBeforeNamingCase(t *testing.T, ms []*clusterNode, secrets map[string]string) {
	ctx := context.Background()
	atRest(t, ms)
	old := copyKey(t, ms[0].d)
	// The record as startClusterRotation creates it, before
	// nameRotationManagers.
	d := ms[0].d
	next, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := d.keys.Keyring().SealKey(next)
	newID := next.ID
	next.Destroy()
	if err != nil {
		t.Fatal(err)
	}
	rec := rotationRecord{Old: old.ID, New: newID, NewKey: &sealed, Phase: phasePrepare, Driver: d.nodeID, Started: time.Now().UTC()}
	val, err := json.Marshal(&rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.store.Table(rotationTable).Create(ctx, rotationRecordID, "", val); err != nil {
		t.Fatal(err)
	}
	ms[0].restart(t)
	waitUntil(t, "the restarted driver serves", func() bool { return ms[0].d.CheckServing() == nil })
	allPresent(t, ms)
	waitUntil(t, "the restarted driver let go of the rotation", func() bool {
		rec, ok, err := getRotation(ctx, ms[1].d.store)
		return err == nil && ok && rec.Driver == ""
	})
	r, err := ms[1].d.RotateMaster(ctx)
	if err != nil {
		t.Fatalf("rotation taken over: %v", err)
	}
	if r.KeyID != newID {
		t.Fatalf("the rotation taken over ended with key %s, want the record's %s", r.KeyID, newID)
	}
	checkRotatedManagers(t, ms, secrets, old, r.KeyID, "")
}

// Under autolock, a manager restarted (so locked) in the middle of a
// rotation, once the store is re-wrapped under the new key, unlocks with
// the unlock key, opens everything through its rotating file, takes its
// part, and the rotation ends; restarted again it unlocks under the new
// key.
func restartedLockedMidRotationCase(t *testing.T, ms []*clusterNode, secrets map[string]string, key string) {
	ctx := context.Background()
	atRestLocked(t, ms, key)
	old := copyKey(t, ms[0].d)
	failOnce(ms[0].d, stepClusterRewrapped, 0)
	if _, err := ms[0].d.RotateMaster(ctx); !errors.Is(err, errCrash) {
		t.Fatalf("rotation: %v", err)
	}
	ms[0].d.rot.setFail(nil)
	ms[2].restart(t)
	if st := ms[2].d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: %s, want locked", st)
	}
	if err := ms[2].d.Unlock(ctx, key); err != nil {
		t.Fatalf("unlock mid-rotation: %v", err)
	}
	waitUntil(t, "the unlocked manager serves", func() bool { return ms[2].d.CheckServing() == nil })
	for id, want := range secrets {
		if got, err := ms[2].d.secrets.Data(ctx, id); err != nil || string(got) != want {
			t.Fatalf("secret %s on the manager unlocked mid-rotation: %q %v", id, got, err)
		}
	}
	allPresent(t, ms)
	ms[0].d.rot.ackTimeout = 30 * time.Second
	r, err := ms[0].d.RotateMaster(ctx)
	if err != nil {
		t.Fatalf("resumed rotation: %v", err)
	}
	checkRotatedManagers(t, ms, secrets, old, r.KeyID, key)
	ms[2].restart(t)
	if err := ms[2].d.Unlock(ctx, key); err != nil {
		t.Fatalf("unlock after the rotation: %v", err)
	}
	waitUntil(t, "the unlocked manager serves", func() bool { return ms[2].d.CheckServing() == nil })
	checkRotatedManager(t, ms[2].d, secrets, old, r.KeyID, key)
}

// Enabling autolock rotates the master key across the managers once the
// unlock key is fetched, so that an earlier copy of a plaintext
// master.key opens nothing. A manager whose plaintext key file has not
// gone yet when the rotation installs (its key files still settling:
// here its removal fails) must not get the new key written into it in
// the clear: its install waits until the file is gone. It returns the
// unlock key.
func newKeyNeverInPlainFileCase(t *testing.T, ms []*clusterNode, secrets map[string]string) string {
	ctx := context.Background()
	atRest(t, ms)
	old := copyKey(t, ms[0].d)
	ms[0].d.rot.ackTimeout = 5 * time.Second
	f := ms[1]
	f.d.mu.Lock()
	f.d.fail = failpoints{fpEnableRemovePlain: func() error { return errors.New("injected: the plaintext key file is not removed") }}
	f.d.mu.Unlock()
	key := enableAutolock(t, ms[0].d)
	waitUntil(t, "the second manager locked its key under the unlock key", func() bool {
		return f.d.lockedKey.Exists() && f.d.lockedKey.Opens(key)
	})
	// The enable's rotation runs in the background on the first manager:
	// it either ends or stops at a timeout. Meanwhile, and after, the
	// second manager's plaintext file never holds anything but the old key.
	checkPlain := func() {
		t.Helper()
		if !f.d.plainKey.Exists() {
			return
		}
		if mk, err := f.d.plainKey.Load(); err == nil && mk.ID != old.ID {
			t.Fatalf("the new master key %s is in the clear in master.key under autolock", mk.ID)
		}
	}
	// It ends, or stops at its install (5 s without the second manager's
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
	deadline := time.Now().Add(60 * time.Second)
	for {
		checkPlain()
		rec, ok, err := getRotation(ctx, ms[0].d.store)
		if err == nil && (!ok || rec.Phase == phaseInstall && rec.Driver == "") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the enable's rotation neither ended nor stopped: %+v %v %v", rec, ok, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkPlain()
	f.d.mu.Lock()
	f.d.fail = nil
	f.d.mu.Unlock()
	waitUntil(t, "the second manager's key files settle", func() bool { return lockedUnder(f.d, key) })
	if ok, err := ms[0].d.store.Holds(ctx, store.Absent(ms[0].d.rotationKey())); err != nil || !ok {
		if _, err := ms[0].d.RotateMaster(ctx); err != nil {
			t.Fatalf("finishing the enable's rotation: %v", err)
		}
	}
	for _, m := range ms {
		waitUntil(t, "the manager runs under a new key", func() bool {
			m.d.mu.Lock()
			defer m.d.mu.Unlock()
			return m.d.mk.ID != old.ID
		})
	}
	for _, m := range ms {
		checkRotatedManager(t, m.d, secrets, old, ms[0].d.mk.ID, key)
	}
	return key
}
