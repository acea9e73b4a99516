package daemon

import (
	"context"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/moby/moby/api/types/swarm"
)

// A manager that leaves the swarm, or is demoted, runs on without the
// master key: the keyring it ran with is destroyed (its key bytes wiped
// from locked memory), not merely dropped. Once the last manager holding
// the key has given it up too, no key memory of the process holds it.
func TestLeaveAndDemotionWipeKeyring(t *testing.T) {
	ctx := context.Background()
	ms := startManagers(t, 3)
	allPresent(t, ms)
	old := copyKey(t, ms[0].d) // on the heap, not in key memory
	if !keyring.LockedHolds(old.Key) {
		t.Fatal("the master key is in no key memory: the check proves nothing")
	}

	left := ms[2].d.keys.Keyring()
	if err := ms[2].d.Leave(ctx, true); err != nil {
		t.Fatalf("leave --force: %v", err)
	}
	if left.Holds(old.ID) {
		t.Error("the keyring of the manager that left still holds the master key")
	}

	demoted := ms[1].d.keys.Keyring()
	if err := setRole(ctx, ms[0].d, ms[1].d.nodeID, swarm.NodeRoleWorker); err != nil {
		t.Fatalf("demotion: %v", err)
	}
	waitUntil(t, "the demoted manager runs as a worker", ms[1].d.isWorker)
	if demoted.Holds(old.ID) {
		t.Error("the keyring of the demoted manager still holds the master key")
	}

	// The last manager's copies are the only ones left: gone with them,
	// the key is in no key memory.
	last := ms[0].d
	last.Close()
	last.keys.Keyring().Destroy()
	last.mk.Destroy()
	if keyring.LockedHolds(old.Key) {
		t.Fatal("the master key's bytes are still in key memory after the manager that left and the demoted one gave it up")
	}
}
