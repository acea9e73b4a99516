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

	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/moby/moby/api/types/swarm"
)

// The crash points checked under autolock too: the driver stopped after
// every manager holds the new key, in the re-wrap, and once the record
// says install; a follower stopped inside its install, after the re-seal
// of its member.json and after its locked file was rewritten.
var autolockCrashPoints = []crashPoint{
	{step: stepClusterPrepared},
	{step: stepBatch, batch: 1},
	{step: stepClusterInstall},
	{step: stepMemberResealed, follower: true},
	{step: stepInstalled, follower: true},
}

// watchPlainKeys looks, every few milliseconds until the returned stop is
// called, for a plaintext master key file (master.key, or the
// master.key.old link a plain install keeps for a moment) in the data
// dirs of ms, which under autolock must never be there, and returns what
// it saw.
func watchPlainKeys(ms []*clusterNode) (stop func() []string) {
	var (
		mu   sync.Mutex
		seen []string
	)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			for _, m := range ms {
				for _, f := range []string{"master.key", "master.key.old"} {
					p := filepath.Join(m.cfg.DataDir, "keys", f)
					if _, err := os.Lstat(p); err == nil {
						mu.Lock()
						seen = append(seen, p)
						mu.Unlock()
					}
				}
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() []string {
		close(done)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return seen
	}
}

// restartLocked restarts n, which comes back locked, and unlocks it with
// key.
func restartLocked(t *testing.T, n *clusterNode, key string) {
	t.Helper()
	n.restart(t)
	if st := n.d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: %s, want locked", st)
	}
	if err := n.d.Unlock(context.Background(), key); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	waitUntil(t, "the unlocked manager serves", func() bool { return n.d.CheckServing() == nil })
}

// crashUnderAutolockCase is crashPointCase under autolock: the crashed
// manager restarts locked and is unlocked with the unlock key, the
// rotation finishes (taken over by the third manager when the driver
// stopped), every manager opens everything under the new key with its
// locked file rewritten under the unlock key, and no data dir ever holds
// a plaintext master key file meanwhile.
func crashUnderAutolockCase(t *testing.T, ms []*clusterNode, secrets map[string]string, key string, tc crashPoint) {
	ctx := context.Background()
	atRestLocked(t, ms, key)
	stop := watchPlainKeys(ms)
	defer func() {
		if seen := stop(); len(seen) > 0 {
			t.Errorf("a plaintext master key file was on disk under autolock: %v", seen[:min(len(seen), 5)])
		}
	}()
	old := copyKey(t, ms[0].d)
	driver, crashed := ms[0], ms[0]
	if tc.follower {
		crashed = ms[1]
	}
	done := rotateUntilCrash(t, driver.d, crashed.d, tc)
	if tc.step == stepMemberResealed {
		checkMemberAheadOfKeyFiles(t, crashed.d, old, key)
	}
	var r Rotation
	if !tc.follower {
		res := <-done
		if !errors.Is(res.err, errCrash) {
			t.Fatalf("the driver stopped with %v, want the crash", res.err)
		}
		restartLocked(t, crashed, key)
		allPresent(t, ms)
		waitUntil(t, "the rotation has no driver", func() bool {
			rec, ok, err := getRotation(ctx, ms[2].d.store)
			return err == nil && (!ok || rec.Driver == "")
		})
		var err error
		if r, err = ms[2].d.RotateMaster(ctx); err != nil {
			t.Fatalf("resumed rotation: %v", err)
		}
	} else {
		restartLocked(t, crashed, key)
		res := <-done
		if res.err != nil {
			t.Fatalf("rotation with a follower restarted: %v", res.err)
		}
		r = res.r
	}
	if r.KeyID == old.ID {
		t.Fatalf("still the old key: %+v", r)
	}
	checkRotatedManagers(t, ms, secrets, old, r.KeyID, key)
	restartLocked(t, crashed, key)
	checkRotatedManager(t, crashed.d, secrets, old, r.KeyID, key)
}

// The driver stopped in the install phase, after every other manager
// installed the new key and forgot the old one, and before its own final
// re-wrap under the old key: a write it committed meanwhile copied a
// record as it was before the rotation (a secret whose data key the old
// key wraps, sealed afresh under the new key outside). Restarted, it
// installs as a follower and forgets the old key too, and the third
// manager takes the rotation over: the rotation must end with that
// secret open on every manager, not with a value sealed under a key no
// manager holds (DESIGN.md, "Driver stopped in the install phase").
func driverStoppedInInstallCase(t *testing.T, ms []*clusterNode, secrets map[string]string) {
	ctx := context.Background()
	atRest(t, ms)
	old := copyKey(t, ms[0].d)
	var id string
	for id = range secrets {
		break
	}
	tbl := ms[0].d.store.Table(objects.Secret.Table)
	before, err := tbl.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(before.Value, []byte(`"kid":"`+old.ID+`"`)) {
		t.Fatalf("secret %s's record holds no value sealed under the old key: the case proves nothing", id)
	}
	ms[0].d.rot.ackTimeout = 45 * time.Second
	failOnce(ms[0].d, stepClusterInstall, 0)
	if _, err := ms[0].d.RotateMaster(ctx); !errors.Is(err, errCrash) {
		t.Fatalf("rotation: %v, want the crash", err)
	}
	// The stopped driver's follower loop takes no step any more (a
	// crashed process would not): each one is held until it is closed.
	holdRotationSteps(ms[0].d, func(context.Context) bool { return true })
	rec, ok, err := getRotation(ctx, ms[1].d.store)
	if err != nil || !ok || rec.Phase != phaseInstall {
		t.Fatalf("rotation record: %+v %v %v, want the install phase", rec, ok, err)
	}
	for _, m := range ms[1:] {
		waitUntil(t, "the follower installed the new key", func() bool {
			m.d.mu.Lock()
			defer m.d.mu.Unlock()
			return m.d.mk.ID == rec.New
		})
	}
	cur, err := tbl.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Update(ctx, id, cur.ModRev, before.Value); err != nil {
		t.Fatalf("the stopped driver's write of a record copying a value sealed under the old key: %v", err)
	}
	ms[0].restart(t)
	waitUntil(t, "the restarted driver serves", func() bool { return ms[0].d.CheckServing() == nil })
	allPresent(t, ms)
	waitUntil(t, "the rotation has no driver", func() bool {
		rec, ok, err := getRotation(ctx, ms[2].d.store)
		return err == nil && (!ok || rec.Driver == "")
	})
	r, err := ms[2].d.RotateMaster(ctx)
	if err != nil {
		t.Fatalf("rotation taken over: %v", err)
	}
	checkRotatedManagers(t, ms, secrets, old, r.KeyID, "")
}
