package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// Master-key rotation. The order, each step durable before the next:
//
//  1. the new key is written to keys/master.key.rotating, sealed under the
//     current key (so whoever can load the current key, in the clear or
//     through the unlock key, can load it), and the keyring starts sealing
//     under it while still opening under both;
//  2. every wrapped key in the store is re-wrapped under it, batch by
//     batch (store.Rewrap), and the store is checked to hold nothing that
//     needs the old key any more;
//  3. the new key is installed in each key file that exists: the locked
//     file is re-written under the recorded unlock key; the plain file is
//     first linked to master.key.old, then replaced (rename);
//  4. master.key.old is overwritten and removed, the old key forgotten,
//     master.key.rotating removed, and the store compacted and
//     defragmented so no old revision keeps a value wrapped by the old key.
//
// A crash before 3 leaves the old key installed and the rotating file: the
// next activation (start or unlock) loads both and finishes the rotation.
// A crash after 3 leaves the new key installed: the next activation only
// destroys what is left of the old one.

// Rotation is what a master-key rotation did.
type Rotation struct {
	// KeyID is the new master key's ID.
	KeyID string
	// Rewrapped counts the wrapped keys re-wrapped under it.
	Rewrapped int
}

// rotation serialises rotations; fail is set only by tests, to stop a
// rotation at one of its steps as a crash would.
type rotation struct {
	mu sync.Mutex
	// failMu guards fail: on a cluster, a manager's follower loop reaches
	// the steps too (clusterrotate.go). Tests set fail with setFail there.
	failMu sync.Mutex
	fail   func(step string, batch int) error
	// driving is set while this manager drives a cluster-wide rotation
	// (clusterrotate.go): its own follower loop then leaves its key files
	// to the driver, which installs them last.
	driving atomic.Bool
	// ackTimeout bounds each wait for the other managers (0: the default;
	// tests shorten it).
	ackTimeout time.Duration
	// compactAfter is the key of the rotation across managers this
	// manager installed as a follower, until it has compacted and
	// defragmented its member once the rotation ended (under d.mu).
	compactAfter string
	// acked is the last ack this run wrote (new key ID/what), under d.mu.
	acked string
	// wait bounds how long a change refused during a rotation first
	// waits for it (0: the default; tests shorten it).
	wait time.Duration
	// resumeAfter is the first wait before this manager resumes a
	// rotation left without a driver, or retries the one autolock owes
	// (nanoseconds; 0: the default, the ack timeout's; tests shorten it
	// while the loops run, hence atomic). noAutoResume turns both off
	// (tests that hold a record standing on purpose).
	resumeAfter  atomic.Int64
	noAutoResume atomic.Bool
}

func (r *rotation) setFail(fn func(step string, batch int) error) {
	r.failMu.Lock()
	r.fail = fn
	r.failMu.Unlock()
}

// The steps a test can stop a rotation after.
const (
	stepKeyWritten   = "key-written"   // the rotating file is durable
	stepBatch        = "batch"         // one batch of records re-wrapped
	stepInstalled    = "installed"     // the new key is in the key files; the old one in master.key.old
	stepOldDestroyed = "old-destroyed" // the old key file is gone; the rotating file not yet
)

func (d *Daemon) rotateStep(step string, batch int) error {
	d.rot.failMu.Lock()
	fn := d.rot.fail
	d.rot.failMu.Unlock()
	if fn != nil {
		return fn(step, batch)
	}
	return nil
}

func (d *Daemon) rotatingKey() keyring.NextKeyStore {
	return keyring.NextKeyStore{Path: filepath.Join(filepath.Dir(d.plainKey.Path), "master.key.rotating")}
}

func (d *Daemon) oldPlainKey() keyring.FileKeyStore {
	return keyring.FileKeyStore{Path: d.plainKey.Path + ".old"}
}

// removeRotationFiles drops a rotation's files when the cluster they
// belong to is gone (leave, or a data dir without a cluster).
func (d *Daemon) removeRotationFiles() {
	_ = d.rotatingKey().Remove()
	_ = d.oldPlainKey().Remove()
}

// RotateMaster replaces the master key: a new key, every wrapped key in
// the store re-wrapped under it, the old key file destroyed (see the order
// above). The API keeps serving meanwhile: the lifecycle lock is held only
// to start and to install, not while the store is re-wrapped. A failed
// rotation is resumed by the next call or the next start. Refused while
// the node is locked or has no cluster (503). Callers holding d.mu use
// RotateMasterLocked.
func (d *Daemon) RotateMaster(ctx context.Context) (Rotation, error) {
	// Like a lifecycle change, a rotation does not stop because a client left.
	ctx = context.WithoutCancel(ctx)
	d.rot.mu.Lock()
	defer d.rot.mu.Unlock()
	d.mu.Lock()
	if d.member != nil {
		d.mu.Unlock()
		// Every manager holds the master key: one rotating it alone would
		// leave the others unable to open what it re-wraps. The rotation
		// runs across them all (clusterrotate.go).
		return d.rotateCluster(ctx)
	}
	kr, old, next, err := d.beginRotationLocked()
	d.mu.Unlock()
	if err != nil {
		return Rotation{}, err
	}
	n, err := d.rewrapStore(ctx, old.ID)
	if err != nil {
		return Rotation{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != swarm.LocalNodeStateActive || d.mk.ID != old.ID || d.keys.Keyring() != kr {
		// The cluster was left (or re-made) meanwhile: nothing to install.
		_ = d.rotatingKey().Remove()
		return Rotation{}, &errdefs.Error{Category: errdefs.ErrConflict, Msg: "the cluster changed during the master-key rotation; nothing was rotated"}
	}
	if err := d.installMasterLocked(ctx, kr, old, next, ""); err != nil {
		return Rotation{}, err
	}
	return Rotation{KeyID: next.ID, Rewrapped: n}, nil
}

// RotateMasterLocked is RotateMaster for a caller that holds d.mu (the
// autolock change that rotates the master key with it), and holds it
// throughout, so API calls wait until it is done. If the locked key file
// exists, the new key is wrapped in it under unlockKey, or, when that is
// "", under the unlock key the cluster object records; the plain key file
// is replaced if it exists. On return without error the old master key is
// gone from every file and from memory, and d.mk is the new key. On error
// the node still works under the old key or the new one (both are loaded)
// and the next start finishes the rotation. It refuses, without waiting,
// while an on-demand rotation is running.
func (d *Daemon) RotateMasterLocked(ctx context.Context, unlockKey string) (Rotation, error) {
	ctx = context.WithoutCancel(ctx)
	if !d.rot.mu.TryLock() {
		return Rotation{}, errdefs.Unavailable("a master-key rotation is in progress; try again when it is done")
	}
	defer d.rot.mu.Unlock()
	kr, old, next, err := d.beginRotationLocked()
	if err != nil {
		return Rotation{}, err
	}
	n, err := d.rewrapStore(ctx, old.ID)
	if err != nil {
		return Rotation{}, err
	}
	if err := d.installMasterLocked(ctx, kr, old, next, unlockKey); err != nil {
		return Rotation{}, err
	}
	return Rotation{KeyID: next.ID, Rewrapped: n}, nil
}

// beginRotationLocked is step 1. A rotating file left by a failed
// rotation of the same key is reused, so the rotation resumes.
func (d *Daemon) beginRotationLocked() (*keyring.Keyring, keyring.MasterKey, keyring.MasterKey, error) {
	var none keyring.MasterKey
	if err := d.CheckServingLocked(); err != nil {
		return nil, none, none, err
	}
	if d.nextKey().Exists() {
		return nil, none, none, &errdefs.Error{Category: errdefs.ErrConflict, Msg: "an unlock-key change is not finished; unlock or retry it first"}
	}
	kr := d.keys.Keyring()
	if kr == nil {
		return nil, none, none, errdefs.Unavailable("%s", msgLocked)
	}
	old := d.mk
	next, err := d.rotatingKey().Load(kr)
	if err != nil {
		if !errors.Is(err, keyring.ErrNoNextKey) {
			d.log.Warn("discarding a master-key rotation file that the current key does not open", "err", err)
		}
		if next, err = keyring.GenerateMasterKey(); err != nil {
			return nil, none, none, err
		}
		if err := d.rotatingKey().Store(kr, next); err != nil {
			return nil, none, none, fmt.Errorf("master key rotation: %w", err)
		}
	}
	if err := d.rotateStep(stepKeyWritten, 0); err != nil {
		return nil, none, none, err
	}
	kr.Rotate(next)
	if id, err := kr.CurrentID(); err != nil || id != next.ID {
		return nil, none, none, fmt.Errorf("master key rotation: the keyring refused the new key: %w", err)
	}
	d.log.Info("master key rotation started", "old", old.ID, "new", next.ID)
	return kr, old, next, nil
}

// rewrapStore is step 2: it re-wraps until nothing in the store needs the
// old key (a writer that copied an old inner seal meanwhile is caught by
// the next pass).
func (d *Daemon) rewrapStore(ctx context.Context, oldID string) (int, error) {
	st := d.curStore()
	// A cluster record an earlier hushd wrote has no stored version: the
	// re-wrap, which keeps the stored one, would move it.
	if err := cluster.PinVersion(ctx, st); err != nil && !errors.Is(err, store.ErrNotFound) {
		return 0, fmt.Errorf("master key rotation: %w", err)
	}
	total := 0
	for pass := 0; pass < 3; pass++ {
		n, err := st.Rewrap(ctx, func(b int) error { return d.rotateStep(stepBatch, b) })
		total += n
		if err != nil {
			return total, fmt.Errorf("master key rotation: %w", err)
		}
		left, err := st.Referencing(ctx, oldID)
		if err != nil {
			return total, fmt.Errorf("master key rotation: %w", err)
		}
		if left == 0 {
			return total, nil
		}
		d.log.Warn("master key rotation: values still need the old key; re-wrapping again", "values", left)
	}
	return total, fmt.Errorf("master key rotation: values still need the old master key after re-wrapping (a record kind whose inner sealed values are not registered with store.RegisterInner?); the old key is kept: %w", errdefs.ErrInternal)
}

// installMasterLocked is steps 3 and 4. They run while no store write is
// between its seal and its commit (store.Exclusive), after a last check
// that nothing needs the old key: a writer that sealed a value under the
// old key before the rotation began and commits only now is either seen
// by that check (the rotation then stops, and its retry re-wraps it) or
// refused once the old key is gone (store.ErrRetiredKey), never stored
// unopenable.
func (d *Daemon) installMasterLocked(ctx context.Context, kr *keyring.Keyring, old, next keyring.MasterKey, unlockKey string) error {
	if err := d.store.Exclusive(func() error {
		left, err := d.store.Referencing(ctx, old.ID)
		if err != nil {
			return fmt.Errorf("master key rotation: %w", err)
		}
		if left > 0 {
			return fmt.Errorf("master key rotation: %d values were written under the old key meanwhile; the old key is kept, retry the rotation: %w", left, errdefs.ErrUnavailable)
		}
		return d.installFilesLocked(ctx, kr, old, next, unlockKey)
	}); err != nil {
		return err
	}
	// Old revisions still hold values wrapped by the old key.
	if err := d.store.CompactAll(ctx); err != nil {
		d.log.Warn("master key rotation: compacting the store", "err", err)
	}
	d.log.Info("master key rotated", "keyID", next.ID)
	return nil
}

// installFilesLocked installs next in the key files, destroys the old key
// and forgets it.
func (d *Daemon) installFilesLocked(ctx context.Context, kr *keyring.Keyring, old, next keyring.MasterKey, unlockKey string) error {
	if d.lockedKey.Exists() {
		if unlockKey == "" {
			c, err := cluster.Get(ctx, d.store)
			if err != nil {
				return err
			}
			if unlockKey, err = c.UnlockKey(kr); err != nil {
				return err
			}
		}
		if unlockKey == "" {
			return fmt.Errorf("master key rotation: a locked key file exists but no unlock key is recorded: %w", errdefs.ErrInternal)
		}
		if err := d.lockedKey.Store(next, unlockKey); err != nil {
			return fmt.Errorf("master key rotation: install the new key: %w", err)
		}
	}
	plain := d.plainKey.Exists()
	if plain {
		oldFile := d.oldPlainKey()
		if err := os.Remove(oldFile.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		// The second name keeps the old key's inode until it is
		// overwritten below; the rename alone would free it unwiped.
		if err := os.Link(d.plainKey.Path, oldFile.Path); err != nil {
			return fmt.Errorf("master key rotation: %w", err)
		}
		if err := d.plainKey.Replace(next); err != nil {
			return fmt.Errorf("master key rotation: install the new key: %w", err)
		}
	}
	if err := d.rotateStep(stepInstalled, 0); err != nil {
		return err
	}
	if plain {
		if err := d.oldPlainKey().Remove(); err != nil {
			return fmt.Errorf("master key rotation: destroy the old key: %w", err)
		}
	}
	if err := d.rotateStep(stepOldDestroyed, 0); err != nil {
		return err
	}
	d.mk = next
	if err := kr.Forget(old.ID); err != nil {
		return err
	}
	// Nothing else holds the old key's bytes (d.mk is next now).
	keyring.Free(old.Key)
	return d.rotatingKey().Remove()
}

// finishRotation completes a rotation a crash interrupted, at activation
// (d.mu held, kr loaded with mk and set in d.keys). It returns the master
// key to run with.
func (d *Daemon) finishRotation(ctx context.Context, kr *keyring.Keyring, mk keyring.MasterKey) (keyring.MasterKey, error) {
	oldFile := d.oldPlainKey()
	if ofi, err := os.Lstat(oldFile.Path); err == nil {
		if pfi, err := os.Lstat(d.plainKey.Path); err == nil && os.SameFile(ofi, pfi) {
			// Stopped between the link and the replacement: the old key
			// is still the installed one; drop only the second name.
			if err := os.Remove(oldFile.Path); err != nil {
				return mk, err
			}
		} else if err := oldFile.Remove(); err != nil {
			// The new key was installed: the old one is retired.
			return mk, err
		}
	}
	id, err := d.rotatingKey().ID()
	if errors.Is(err, keyring.ErrNoNextKey) {
		return mk, nil
	}
	if err != nil {
		return mk, err
	}
	if id == mk.ID {
		// Installed already; only the rotating file was left.
		return mk, d.rotatingKey().Remove()
	}
	if d.member != nil {
		// A rotation across managers: the record says what is left to do
		// (resumeRotationAtStart, then the follower loop).
		return mk, nil
	}
	next, err := d.rotatingKey().Load(kr)
	if err != nil {
		d.log.Warn("discarding a master-key rotation file that the current key does not open", "err", err)
		return mk, d.rotatingKey().Remove()
	}
	kr.Rotate(next)
	d.log.Info("finishing an interrupted master key rotation", "old", mk.ID, "new", next.ID)
	if _, err := d.rewrapStore(ctx, mk.ID); err != nil {
		return mk, err
	}
	if err := d.installMasterLocked(ctx, kr, mk, next, ""); err != nil {
		return mk, err
	}
	return next, nil
}

// unsealStore opens the store with kr at activation: it seals what an
// earlier hush left in the clear, finishes an interrupted rotation, and
// starts the mirror, which needs the keyring to decode anything. It returns
// the master key to run with.
func (d *Daemon) unsealStore(ctx context.Context, kr *keyring.Keyring, mk keyring.MasterKey) (keyring.MasterKey, error) {
	// A keyring built before the activation (a join's or a promotion's,
	// a start's or an unlock's pre-opening of the store) is replaced:
	// its key bytes are wiped now, or a master-key rotation, which
	// forgets the old key in the keyring it runs with, would leave them
	// in memory.
	if prev := d.keys.Swap(kr); prev != nil && prev != kr {
		prev.Destroy()
	}
	d.loadRotatingKey(kr, mk)
	if _, err := d.store.Migrate(ctx, nil); err != nil {
		d.dropKeyring()
		return mk, fmt.Errorf("sealing the store: %w", err)
	}
	mk, err := d.finishRotation(ctx, kr, mk)
	if err != nil {
		d.dropKeyring()
		return mk, fmt.Errorf("finishing the master key rotation: %w", err)
	}
	if d.member != nil {
		if err := d.resumeRotationAtStart(ctx, kr); err != nil {
			d.dropKeyring()
			return mk, fmt.Errorf("resuming the master key rotation across managers: %w", err)
		}
	}
	if err := d.startMirror(ctx); err != nil {
		d.dropKeyring()
		return mk, err
	}
	return mk, nil
}

// dropKeyring forgets the keyring and destroys it, for a daemon that will
// not use it again (it left, was demoted, locked, or failed to open the
// store with it): a keyring merely dropped keeps the master key's bytes in
// locked memory, which the garbage collector never wipes.
func (d *Daemon) dropKeyring() {
	if kr := d.keys.Swap(nil); kr != nil {
		kr.Destroy()
	}
}

// startMirror starts the store mirror once; it waits for the first load.
func (d *Daemon) startMirror(ctx context.Context) error {
	d.mirrorOnce.Do(func() {
		d.runBG(d.mirror.Run, d.bg)
		d.runBG(d.events.Run, d.bg)
	})
	if err := d.mirror.WaitReady(ctx); err != nil {
		return fmt.Errorf("store mirror: %w", err)
	}
	// Objects written before the events source's first load are its
	// snapshot, not events: wait for it before anything is served.
	if err := d.events.Wait(ctx); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	return nil
}

// registerInnerSeals tells the store which records hold values sealed by
// the keyring inside them, so a rotation re-wraps those too.
func (d *Daemon) registerInnerSeals() {
	d.store.RegisterInner(objects.Secret.Table, d.secrets.RewrapData)
	d.store.RegisterInner(objects.Config.Table, d.configs.RewrapData)
	d.store.RegisterInner(cluster.Table, cluster.RewrapInner)
	d.store.RegisterInner(model.ServicesTable, services.RewrapAuth)
	d.store.RegisterInner(objects.FingerprintTable, objects.RewrapFingerprintKey)
}

// KeyInfo answers GET /hush/v1/key.
func (d *Daemon) KeyInfo(ctx context.Context) (api.KeyInfo, error) {
	d.mu.Lock()
	err := d.CheckServingLocked()
	id := d.mk.ID
	d.mu.Unlock()
	if err != nil {
		return api.KeyInfo{}, err
	}
	c, err := cluster.Get(ctx, d.curStore())
	if err != nil {
		return api.KeyInfo{}, err
	}
	return api.KeyInfo{KeyID: id, Autolock: c.Spec.EncryptionConfig.AutoLockManagers}, nil
}

// RotateMasterKey answers POST /hush/v1/key/rotate.
func (d *Daemon) RotateMasterKey(ctx context.Context) (api.KeyRotation, error) {
	r, err := d.RotateMaster(ctx)
	if err != nil {
		return api.KeyRotation{}, err
	}
	return api.KeyRotation{KeyID: r.KeyID, Rewrapped: r.Rewrapped}, nil
}

// preopenStore loads mk into the store's keyring (and seals what an
// earlier hush left in the clear) before activation, for the steps of
// unlock and start that read the cluster object first.
func (d *Daemon) preopenStore(ctx context.Context, mk keyring.MasterKey) error {
	kr, err := keyring.New(mk)
	if err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	d.keys.Set(kr)
	d.loadRotatingKey(kr, mk)
	if _, err := d.store.Migrate(ctx, nil); err != nil {
		d.dropKeyring()
		return fmt.Errorf("sealing the store: %w", err)
	}
	return nil
}

// loadRotatingKey adds to kr the key an interrupted rotation was
// introducing, since some records may already be wrapped by it. It only
// opens with it: a lone node's finishRotation then seals under it; a
// manager of a cluster does once the rotation record says every manager
// holds it (resumeRotationAtStart).
func (d *Daemon) loadRotatingKey(kr *keyring.Keyring, mk keyring.MasterKey) {
	if id, err := d.rotatingKey().ID(); err != nil || id == mk.ID {
		return
	}
	if next, err := d.rotatingKey().Load(kr); err == nil {
		if err := kr.Add(next); err != nil {
			d.log.Warn("master key rotation: the keyring refused the rotating key", "err", err)
		}
		next.Destroy()
	}
}
