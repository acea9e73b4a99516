package daemon

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/keyring"
)

// A rotation across managers dropped in prepare, after the managers took
// its new key, leaves that key in each manager's rotating file and
// keyring. A manager that sees the record gone drops both
// (dropStaleRotationLocked); one that sees the next rotation's record
// first replaces the file, and must forget the dropped key from its
// keyring too: nothing is sealed under it, and left in key memory it
// would stay there until the next activation. Here the follower takes the
// first rotation's key but never acks, so the driver drops the rotation;
// the follower's steps are held until the next rotation's record stands.
func TestReplacedRotationForgetsDroppedKey(t *testing.T) {
	ctx := context.Background()
	ms := startManagers(t, 2)
	allPresent(t, ms)
	driver, follower := ms[0].d, ms[1].d
	follower.rot.setFail(func(step string, _ int) error {
		if step == stepFollowKey {
			return errors.New("injected: this manager holds the new key but does not ack it")
		}
		return nil
	})
	driver.rot.ackTimeout = 5 * time.Second
	first := make(chan error, 1)
	go func() {
		_, err := driver.RotateMaster(ctx)
		first <- err
	}()
	var dropped rotationRecord
	waitUntil(t, "the follower holds the first rotation's new key", func() bool {
		rec, ok, err := getRotation(ctx, driver.store)
		if err != nil || !ok || rec.NewKey == nil {
			return false
		}
		dropped = rec
		follower.mu.Lock()
		defer follower.mu.Unlock()
		id, err := follower.rotatingKey().ID()
		return err == nil && id == rec.New && follower.keys.Keyring().Holds(rec.New)
	})
	// The dropped key's bytes, to look for in key memory at the end.
	mk, err := driver.keys.Keyring().OpenKey(dropped.New, *dropped.NewKey)
	if err != nil {
		t.Fatal(err)
	}
	droppedBytes := append([]byte(nil), mk.Key...)
	mk.Destroy()
	held, release := holdRotationSteps(follower, func(context.Context) bool { return true })
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	select {
	case <-held:
	case <-time.After(time.Minute):
		t.Fatal("the follower's rotation step never ran")
	}
	if err := <-first; err == nil {
		t.Fatal("the rotation succeeded without the follower's ack")
	}
	follower.rot.setFail(nil)
	driver.rot.ackTimeout = 60 * time.Second
	second := make(chan error, 1)
	go func() {
		_, err := driver.RotateMaster(ctx)
		second <- err
	}()
	waitUntil(t, "the next rotation's record stands", func() bool {
		rec, ok, err := getRotation(ctx, driver.store)
		return err == nil && ok && rec.New != dropped.New && len(rec.Managers) == 2
	})
	close(release)
	released = true
	if err := <-second; err != nil {
		t.Fatalf("the next rotation: %v", err)
	}
	for _, m := range ms {
		m.d.mu.Lock()
		holds := m.d.keys.Keyring().Holds(dropped.New)
		m.d.mu.Unlock()
		if holds {
			t.Errorf("manager %s still holds the dropped rotation's key %s in its keyring", m.d.nodeID, dropped.New)
		}
	}
	if keyring.LockedHolds(droppedBytes) {
		t.Error("key memory of the process still holds the dropped rotation's key")
	}
	clear(droppedBytes)
}
