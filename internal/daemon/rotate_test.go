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
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

// fixture is a data dir with secrets in it.
type fixture struct {
	dir     string
	secrets map[string]string // id → data
}

func newFixture(t *testing.T, d *Daemon, n int) *fixture {
	t.Helper()
	f := &fixture{dir: d.cfg.DataDir, secrets: map[string]string{}}
	for i := range n {
		data := fmt.Sprintf("secret-data-%d", i)
		id, err := d.secrets.Create(context.Background(), objects.Spec{Name: fmt.Sprintf("rot-%d", i), Data: []byte(data)})
		if err != nil {
			t.Fatal(err)
		}
		f.secrets[id] = data
	}
	return f
}

// check proves every secret opens on d, and that old (a copy of an
// earlier master key) opens nothing in its store.
func (f *fixture) check(t *testing.T, d *Daemon, old keyring.MasterKey) {
	t.Helper()
	ctx := context.Background()
	for id, want := range f.secrets {
		got, err := d.secrets.Data(ctx, id)
		if err != nil || string(got) != want {
			t.Fatalf("secret %s after the rotation: %q %v", id, got, err)
		}
	}
	if d.mk.ID == old.ID {
		t.Fatalf("still running under the old master key %s", old.ID)
	}
	if n, err := d.store.Referencing(ctx, old.ID); err != nil || n != 0 {
		t.Fatalf("%d values still need the old key (%v)", n, err)
	}
	oldOnly, err := keyring.New(old)
	if err != nil {
		t.Fatal(err)
	}
	kvs, err := storetest.RawValues(ctx, d.store, "/hush/")
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) < len(f.secrets) {
		t.Fatalf("only %d keys in the store", len(kvs))
	}
	for k, v := range kvs {
		if _, err := store.OpenWith(oldOnly, k, v); !errors.Is(err, keyring.ErrUnknownKey) {
			t.Fatalf("the old key file opens %s: %v", k, err)
		}
	}
	// No key file is left that nothing holds: only the installed key.
	files, _ := filepath.Glob(filepath.Join(f.dir, "keys", "*"))
	hidden, _ := filepath.Glob(filepath.Join(f.dir, "keys", ".*"))
	for _, p := range append(files, hidden...) {
		switch filepath.Base(p) {
		case "master.key", "master.key.locked":
		default:
			t.Errorf("key file %s left after the rotation", p)
		}
	}
}

func copyKey(t *testing.T, d *Daemon) keyring.MasterKey {
	t.Helper()
	return keyring.MasterKey{ID: d.mk.ID, Key: append([]byte(nil), d.mk.Key...)}
}

func TestRotateMaster(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := start(t, dir)
	f := newFixture(t, d, 5)
	old := copyKey(t, d)
	oldFile, err := os.ReadFile(d.plainKey.Path)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := d.store.Revision(ctx)
	r, err := d.RotateMaster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 5 × (record, data inside it, index entry), the node, the cluster (and
	// its CA key inside), the index key, the format marker at least.
	if r.KeyID == old.ID || r.KeyID != d.mk.ID || r.Rewrapped < 3*5+4 {
		t.Fatalf("rotation: %+v (old %s)", r, old.ID)
	}
	f.check(t, d, old)
	if onDisk, err := d.plainKey.Load(); err != nil || onDisk.ID != r.KeyID {
		t.Fatalf("master.key after the rotation: %v %v", onDisk.ID, err)
	}
	// Old revisions are compacted and the file defragmented: no page of the
	// database names the old key.
	if err := storetest.ReadAt(ctx, d.store, "/hush/v1/cluster/default", before); err == nil {
		t.Error("a revision from before the rotation can still be read")
	}
	d.Close()
	db, err := os.ReadFile(filepath.Join(dir, "etcd", "member", "snap", "db"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte(old.ID)) {
		t.Error("the database file still holds values wrapped by the old key")
	}
	if bytes.Contains(db, oldFile) {
		t.Error("the old key file's content is in the database")
	}
	d = start(t, dir)
	defer d.Close()
	f.check(t, d, old)
}

func TestRotateMasterRefusedWhileLocked(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := start(t, dir)
	enableAutolock(t, d)
	d.Close()
	d = start(t, dir)
	defer d.Close()
	if d.State() != swarm.LocalNodeStateLocked {
		t.Fatalf("state %s, want locked", d.State())
	}
	if _, err := d.RotateMaster(ctx); !errdefs.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("rotation while locked: %v, want unavailable", err)
	}
	if _, err := d.KeyInfo(ctx); !errdefs.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("key info while locked: %v, want unavailable", err)
	}
}

var errCrash = errors.New("simulated crash")

// A rotation stopped at each of its steps, then the data dir reopened:
// every secret still opens, the rotation is finished, no key file is left
// that nothing holds, and the old key opens nothing.
func TestRotateMasterCrashPoints(t *testing.T) {
	tests := []struct {
		step     string
		batch    int
		autolock bool
	}{
		{step: stepKeyWritten},
		{step: stepBatch, batch: 1},
		{step: stepBatch, batch: 2},
		{step: stepInstalled},
		{step: stepOldDestroyed},
		{step: stepKeyWritten, autolock: true},
		{step: stepBatch, batch: 1, autolock: true},
		{step: stepInstalled, autolock: true},
		{step: stepOldDestroyed, autolock: true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s-%d-autolock=%v", tc.step, tc.batch, tc.autolock), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			d := start(t, dir)
			// Enough records for several batches.
			f := newFixture(t, d, 40)
			var unlock string
			if tc.autolock {
				unlock = enableAutolock(t, d)
			}
			old := copyKey(t, d)
			reached := false
			d.rot.fail = func(step string, batch int) error {
				if step == tc.step && batch == tc.batch {
					reached = true
					return errCrash
				}
				return nil
			}
			if _, err := d.RotateMaster(ctx); !errors.Is(err, errCrash) || !reached {
				t.Fatalf("rotation did not stop at %s %d: %v", tc.step, tc.batch, err)
			}
			d.Close()

			d = start(t, dir)
			defer d.Close()
			if tc.autolock {
				if d.State() != swarm.LocalNodeStateLocked {
					t.Fatalf("state %s, want locked", d.State())
				}
				if err := d.Unlock(ctx, unlock); err != nil {
					t.Fatalf("the unlock key of before the rotation: %v", err)
				}
			}
			if d.State() != swarm.LocalNodeStateActive {
				t.Fatalf("state %s, want active", d.State())
			}
			f.check(t, d, old)
			if tc.autolock {
				if d.plainKey.Exists() {
					t.Fatal("a plain master key appeared under autolock")
				}
				mk, err := d.lockedKey.Load(unlock)
				if err != nil || mk.ID != d.mk.ID {
					t.Fatalf("locked key file: %v %v", mk.ID, err)
				}
			}
			// A second rotation from the recovered state works.
			if _, err := d.RotateMaster(ctx); err != nil {
				t.Fatalf("rotation after recovery: %v", err)
			}
			f.check(t, d, old)
		})
	}
}

// The API keeps serving during a rotation: reads and writes between two
// batches succeed.
func TestRotateMasterOnline(t *testing.T) {
	ctx := context.Background()
	d := start(t, t.TempDir())
	defer d.Close()
	f := newFixture(t, d, 60)
	old := copyKey(t, d)
	var during []string
	d.rot.fail = func(step string, batch int) error {
		if step != stepBatch || batch != 1 {
			return nil
		}
		// Called without the lifecycle lock: these would block if the
		// rotation held it.
		if err := d.CheckServing(); err != nil {
			return err
		}
		id, err := d.secrets.Create(ctx, objects.Spec{Name: "during-rotation", Data: []byte("written during")})
		if err != nil {
			return err
		}
		f.secrets[id] = "written during"
		during = append(during, id)
		_, err = d.secrets.List(ctx, objects.Filters{})
		return err
	}
	if _, err := d.RotateMaster(ctx); err != nil {
		t.Fatal(err)
	}
	if len(during) != 1 {
		t.Fatal("the hook did not run between batches")
	}
	f.check(t, d, old)
}

func TestKeyInfo(t *testing.T) {
	ctx := context.Background()
	d := start(t, t.TempDir())
	defer d.Close()
	info, err := d.KeyInfo(ctx)
	if err != nil || info.KeyID != d.mk.ID || info.Autolock {
		t.Fatalf("key info: %+v %v", info, err)
	}
	enableAutolock(t, d)
	if info, err = d.KeyInfo(ctx); err != nil || !info.Autolock {
		t.Fatalf("key info under autolock: %+v %v", info, err)
	}
	if !strings.HasPrefix(d.rotatingKey().Path, filepath.Join(d.cfg.DataDir, "keys")) {
		t.Fatal("the rotating key is not kept with the other key files")
	}
}

// An autolock key change made while an on-demand master-key rotation is
// re-wrapping the store (the lifecycle lock is free then) must not leave a
// key file wrapping a master key the rotation retires, nor install the new
// master key under an unlock key no one has fetched: whether or not the
// operator then fetches the new unlock key, a restart opens every secret
// with a key the operator holds.
func TestAutolockChangeDuringRotation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		change  step
		fetch   bool
		refused bool
	}{
		{name: "rotate-unlock-key-unfetched", change: rotateUnlockKey, refused: true},
		{name: "rotate-unlock-key-fetched", change: rotateUnlockKey, fetch: true, refused: true},
		{name: "disable", change: setAutolock(false)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			d := start(t, dir)
			f := newFixture(t, d, 60)
			op := &operator{keys: []string{enableAutolock(t, d)}}
			old := copyKey(t, d)
			var changeErr error
			ran := false
			d.rot.fail = func(step string, batch int) error {
				if step == stepBatch && batch == 1 {
					ran = true
					changeErr = tc.change(ctx, d, op)
				}
				return nil
			}
			if _, err := d.RotateMaster(ctx); err != nil {
				t.Fatalf("rotation: %v", err)
			}
			if !ran {
				t.Fatal("the hook did not run between batches")
			}
			if tc.refused != errdefs.Is(changeErr, errdefs.ErrUnavailable) {
				t.Fatalf("the change during the rotation: %v (want refused: %v)", changeErr, tc.refused)
			}
			if changeErr == nil && tc.fetch {
				if err := fetchKey(ctx, d, op); err != nil {
					t.Fatal(err)
				}
			}
			d.Close()
			d = restart(t, dir, op)
			defer d.Close()
			if d.State() != swarm.LocalNodeStateActive {
				t.Fatalf("state %s after restart", d.State())
			}
			f.check(t, d, old)
			checkCoherent(t, d, op)
		})
	}
}

// A writer that sealed a value inside its record before a rotation began
// (the manager seals secret data, then writes the record) and commits only
// after the rotation retired that key would store a value nothing can open
// any more: the store refuses it, retryably, and the writer seals again.
func TestRotateMasterRefusesALateWriteUnderTheRetiredKey(t *testing.T) {
	ctx := context.Background()
	d := start(t, t.TempDir())
	f := newFixture(t, d, 3)
	old := copyKey(t, d)
	var inner keyring.Sealed
	var sealErr error
	d.rot.fail = func(step string, batch int) error {
		if step == stepKeyWritten {
			// Still under the old key: the keyring rotates after this step.
			inner, sealErr = d.keys.Keyring().Seal([]byte("late value"), []byte("late/aad"))
		}
		return nil
	}
	if _, err := d.RotateMaster(ctx); err != nil {
		t.Fatal(err)
	}
	if sealErr != nil || inner.KeyID != old.ID {
		t.Fatalf("inner seal: %v under %s, want under %s", sealErr, inner.KeyID, old.ID)
	}
	rec, err := json.Marshal(struct {
		Sealed keyring.Sealed `json:"sealed"`
	}{inner})
	if err != nil {
		t.Fatal(err)
	}
	err = d.store.Put(ctx, "/hush/v1/late/x", rec)
	if err == nil {
		_, oerr := d.keys.Keyring().Open(inner, []byte("late/aad"))
		t.Fatalf("a record holding a value sealed under the retired key was written (it opens: %v)", oerr)
	}
	if !errdefs.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("late write: %v, want unavailable (retry)", err)
	}
	// Writes sealed under the new key go through.
	f.secrets[mustCreate(t, d, "after-rotation", "new")] = "new"
	f.check(t, d, old)
}

func mustCreate(t *testing.T, d *Daemon, name, data string) string {
	t.Helper()
	id, err := d.secrets.Create(context.Background(), objects.Spec{Name: name, Data: []byte(data)})
	if err != nil {
		t.Fatal(err)
	}
	return id
}
