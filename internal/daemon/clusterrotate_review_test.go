package daemon

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/keyring"
)

// A driver that stopped between creating the rotation record and naming
// its managers (a crash there) leaves a record that names no manager;
// restarted, it lets go of the rotation at its first look, so that
// another manager's `hush key rotate` takes it over and finishes it
// (rather than being refused for as long as the stopped driver is up).
func TestClusterRotateDriverStoppedBeforeNaming(t *testing.T) {
	ctx := context.Background()
	ms := startManagers(t, 3)
	secrets := clusterSecrets(t, ms[0].d, 5)
	old := copyKey(t, ms[0].d)
	allPresent(t, ms)
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
	for _, m := range ms {
		waitUntil(t, "the manager runs under the new key", func() bool {
			m.d.mu.Lock()
			defer m.d.mu.Unlock()
			return m.d.mk.ID == r.KeyID
		})
		checkRotatedManager(t, m.d, secrets, old, r.KeyID, "")
	}
}
