package daemon

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/moby/moby/api/types/swarm"
)

// Autolock's key files, in <data dir>/keys:
//
//	master.key             the master key in plaintext
//	master.key.locked      the master key wrapped by an unlock key that
//	                       has reached an operator
//	master.key.locked.next the master key wrapped by the unlock key the
//	                       cluster record holds, while that key has not
//	                       been handed to a client yet
//
// Every key change writes the file that will be needed before the record
// that needs it, and removes a file only once no state the node can come
// back in needs it. A new unlock key counts as handed out after a client
// received a GET /swarm/unlockkey answer holding it in full (or unlocked
// the node with it): only then does the ".next" file become the locked key,
// and only then does enabling autolock remove the plaintext key. So a crash
// at any point leaves a node that comes back as before the call or after
// it, and locked only under a key someone has. docs/DESIGN.md ("Key changes
// and crashes") lists the steps and what is on disk after each.

// Pending unlock keys, for /info's warnings (pendingKey).
const (
	pendingNone = iota
	// pendingEnable: autolock is on but its key was never fetched: the
	// plaintext key stays and the node does not lock.
	pendingEnable
	// pendingRotation: the unlock key was rotated but the new key never
	// fetched: the previous key still unlocks.
	pendingRotation
)

const (
	warnEnablePending   = "WARNING: autolock is enabled but its unlock key has not been fetched yet: until `docker swarm unlock-key` shows it, hushd keeps the master key unencrypted on disk and does not lock on restart"
	warnRotationPending = "WARNING: the unlock key was rotated but the new key has not been fetched yet: until `docker swarm unlock-key` shows it, the previous unlock key still unlocks this node"
)

// Warnings are the lines /info's Warnings carry about this node's keys.
func (d *Daemon) Warnings() []string {
	switch d.pendingKey.Load() {
	case pendingEnable:
		return []string{warnEnablePending}
	case pendingRotation:
		return []string{warnRotationPending}
	}
	return nil
}

// notePendingLocked records which unlock key, if any, is still owed to an
// operator (see Warnings).
func (d *Daemon) notePendingLocked() {
	p := int32(pendingNone)
	if d.state == swarm.LocalNodeStateActive && d.nextKey().Exists() {
		p = pendingRotation
		if d.plainKey.Exists() {
			p = pendingEnable
		}
	}
	d.pendingKey.Store(p)
}

// settleKeysLocked brings the key files in line with the cluster record,
// given the master key mk and, right after an unlock, the unlock key used
// ("" otherwise). It runs at start when the plaintext key is on disk,
// after each unlock, and after a key change that failed. acked reports
// that the node is autolocked under a key that has reached an operator
// and the plaintext key is gone: a start must then stay locked.
//
// The rules, one per state a crash can leave (docs/DESIGN.md):
//   - autolock off in the record: the plaintext key exists; no locked key
//     file is left.
//   - the locked key opens with the recorded unlock key: that key reached
//     an operator; a pending file and the plaintext key go (an
//     acknowledged enable, or a disable that did not reach the record).
//   - otherwise the recorded key is still owed: the pending file holds the
//     master key under it (written again if a crash lost it or left an
//     older one), and the key that unlocks today stays: the locked file if
//     there is one (the plaintext key then goes: a disable that did not
//     reach the record), the plaintext key if not (enable pending).
func (d *Daemon) settleKeysLocked(ctx context.Context, mk keyring.MasterKey, used string) (acked bool, err error) {
	// The cluster record is sealed: it is read with the store's keyring,
	// which also holds the key of an interrupted master-key rotation (that
	// may wrap the recorded unlock key). At start it is loaded here.
	kr := d.keys.Keyring()
	if kr == nil {
		if err := d.preopenStore(ctx, mk); err != nil {
			return false, err
		}
		kr = d.keys.Keyring()
	}
	c, err := cluster.Get(ctx, d.store)
	if err != nil {
		return false, err
	}
	next := d.nextKey()
	if !c.Spec.EncryptionConfig.AutoLockManagers {
		if !d.plainKey.Exists() {
			if err := d.injected(fpSyncWritePlain); err != nil {
				return false, err
			}
			if err := d.plainKey.Store(mk); err != nil {
				return false, err
			}
		}
		if next.Exists() {
			if err := d.injected(fpSyncRemoveNext); err != nil {
				return false, err
			}
		}
		if err := next.Remove(); err != nil {
			return false, err
		}
		if d.lockedKey.Exists() {
			if err := d.injected(fpSyncRemoveLocked); err != nil {
				return false, err
			}
		}
		return false, d.lockedKey.Remove()
	}
	recorded, err := c.UnlockKey(kr)
	if err != nil {
		return false, err
	}
	if recorded == "" {
		return false, fmt.Errorf("cluster %s has autolock on but no unlock key", c.ID)
	}
	if used != "" && next.Exists() && next.Opens(used) {
		// Whoever unlocked with the pending key holds it.
		if err := next.MoveTo(d.lockedKey); err != nil {
			return false, err
		}
	}
	if c.UnlockKeyFetched && !(d.lockedKey.Exists() && d.lockedKey.Opens(recorded)) {
		// A manager handed the recorded key out (UnlockKeyDelivered on
		// a cluster): lock under it here too, through the pending file,
		// so that a crash leaves the old locked key or the new one.
		if !next.Exists() || !next.Opens(recorded) {
			if err := d.injected(fpSyncWriteNext); err != nil {
				return false, err
			}
			if err := next.Store(mk, recorded); err != nil {
				return false, err
			}
		}
		if err := d.injected(fpSyncInstall); err != nil {
			return false, err
		}
		if err := next.MoveTo(d.lockedKey); err != nil {
			return false, err
		}
	}
	if d.lockedKey.Exists() && d.lockedKey.Opens(recorded) {
		if next.Exists() {
			if err := d.injected(fpSyncRemoveNext); err != nil {
				return false, err
			}
		}
		if err := next.Remove(); err != nil {
			return false, err
		}
		if d.plainKey.Exists() {
			if err := d.finishEnableLocked(ctx); err != nil {
				return false, err
			}
		}
		return true, nil
	}
	if !next.Exists() || !next.Opens(recorded) {
		if err := d.injected(fpSyncWriteNext); err != nil {
			return false, err
		}
		if err := next.Store(mk, recorded); err != nil {
			return false, err
		}
	}
	switch {
	case d.lockedKey.Exists():
		if d.plainKey.Exists() {
			if err := d.plainKey.Remove(); err != nil {
				return false, err
			}
		}
	case !d.plainKey.Exists():
		// Only a pending key, which no one has: keep a key that opens.
		if err := d.plainKey.Store(mk); err != nil {
			return false, err
		}
	}
	return false, nil
}

// finishEnableLocked ends enabling autolock once its unlock key has reached
// an operator: the locked key file opens with it, and the plaintext key
// file is still there. Also run at start and after an unlock when a crash
// interrupted it (and then, harmlessly, after a disable that stopped
// before its record was written: the two leave the same files).
func (d *Daemon) finishEnableLocked(ctx context.Context) error {
	// The master key is rotated here, as swarmkit rotates its data key on
	// the unlocked→locked transition, so that any earlier copy of
	// master.key opens nothing. Here exactly: the unlock key has been
	// acknowledged (a rotation before that would wrap under a key that may
	// never be fetched), and the plaintext key file still exists (a crash
	// during the rotation comes back unlocked, and the store's own
	// rotation record finishes it at that start). RotateMasterLocked
	// leaves master.key.locked wrapping the new key under the recorded
	// unlock key and replaces master.key, which is removed below.
	//
	// At start-up recovery (a crash after the key was acknowledged and
	// before this ran) the runtime is not up yet and the store cannot be
	// re-wrapped online: the transition then completes without a rotation
	// and says so; `hush key rotate` after the unlock does it.
	switch {
	case d.member != nil:
		// Every manager holds the master key: it is rotated across them
		// all, by the manager that recorded the key's delivery, once this
		// lock is free (clusterKeyDeliveredLocked, rotateAfterEnable).
	case d.state == swarm.LocalNodeStateActive:
		if err := d.injected(fpEnableRotate); err != nil {
			return err
		}
		r, err := d.RotateMasterLocked(ctx, "")
		if err != nil {
			return fmt.Errorf("rotating the master key as autolock is enabled: %w", err)
		}
		d.log.Info("master key rotated as autolock was enabled", "key", r.KeyID, "rewrapped", r.Rewrapped)
	default:
		d.log.Warn("autolock was enabled by a run that stopped before rotating the master key: run `hush key rotate` once unlocked")
	}
	if err := d.injected(fpEnableRemovePlain); err != nil {
		return err
	}
	if err := d.plainKey.Remove(); err != nil {
		return err
	}
	d.log.Info("autolock enabled: the master key is now stored only wrapped by the unlock key")
	return nil
}

// recoverKeysLocked is run after a key change failed: the files follow the
// record again, as a restart would make them. It returns cause.
func (d *Daemon) recoverKeysLocked(ctx context.Context, cause error) error {
	if d.mk.Key != nil {
		if _, err := d.settleKeysLocked(ctx, d.mk, ""); err != nil {
			d.log.Error("key files after a failed key change; a restart retries", "err", err)
		}
	}
	d.notePendingLocked()
	return cause
}

// enableOrRotateLocked gives the cluster a new unlock key: turning
// autolock on, or rotating its key (rotate). The key stays pending until a
// client has fetched it (UnlockKeyDelivered).
func (d *Daemon) enableOrRotateLocked(ctx context.Context, c *cluster.Cluster, rotate bool) error {
	// A master-key rotation between its first step and its install (the
	// lifecycle lock is free while it re-wraps the store, and a failed one
	// leaves its file until it is resumed) would wrap the retiring key in
	// the pending file and install the new one under the pending unlock
	// key, which no one may ever fetch: refuse until it is done.
	if _, err := d.rotatingKey().ID(); !errors.Is(err, keyring.ErrNoNextKey) {
		return errdefs.Unavailable("a master-key rotation is not finished: wait for it, or run `hush key rotate` to complete it, then retry")
	}
	fpWrite, fpPut := fpEnableWriteNext, fpEnablePut
	if rotate {
		fpWrite, fpPut = fpRotateWriteNext, fpRotatePut
	}
	key, err := keyring.GenerateUnlockKey()
	if err != nil {
		return err
	}
	// 1. The master key under the new unlock key, beside whatever opens
	// today (the plaintext key, or the locked key under the old one).
	if err := d.injected(fpWrite); err != nil {
		return err
	}
	if err := d.nextKey().Store(d.mk, key); err != nil {
		return err
	}
	// 2. The record: autolock on with the new key. From here `docker
	// swarm inspect` shows it and GET /swarm/unlockkey hands it out.
	c.Spec.EncryptionConfig.AutoLockManagers = true
	if err := c.SetUnlockKey(&d.keys, key); err != nil {
		return err
	}
	if err := d.injected(fpPut); err != nil {
		return err
	}
	if err := cluster.Put(ctx, d.store, c); err != nil {
		return err
	}
	if rotate {
		d.log.Info("unlock key rotated; the previous key unlocks until the new one is fetched")
	} else {
		d.log.Info("autolock on; the node locks only once its unlock key has been fetched")
	}
	return nil
}

// disableLocked turns autolock off.
func (d *Daemon) disableLocked(ctx context.Context, c *cluster.Cluster) error {
	// 1. The plaintext key, beside the locked one: a crash before the
	// record comes back locked (and the plaintext key is removed again).
	if err := d.injected(fpDisableWritePlain); err != nil {
		return err
	}
	if !d.plainKey.Exists() {
		if err := d.plainKey.Store(d.mk); err != nil {
			return err
		}
	}
	// 2. The record.
	c.Spec.EncryptionConfig.AutoLockManagers = false
	_ = c.SetUnlockKey(&d.keys, "")
	if err := d.injected(fpDisablePut); err != nil {
		return err
	}
	if err := cluster.Put(ctx, d.store, c); err != nil {
		return err
	}
	// 3. The locked key files, no longer needed.
	if err := d.injected(fpDisableRemoveNext); err != nil {
		return err
	}
	if err := d.nextKey().Remove(); err != nil {
		return err
	}
	if err := d.injected(fpDisableRemoveLocked); err != nil {
		return err
	}
	if err := d.lockedKey.Remove(); err != nil {
		return err
	}
	d.log.Info("autolock disabled")
	return nil
}

// UnlockKeyDelivered is told that a client received key, the unlock key
// GET /swarm/unlockkey answered with, in full. If it is the pending key,
// it has now reached an operator: it becomes the only one that unlocks
// (after a rotation), or autolock takes effect (after enabling). Any
// successful answer counts, `docker swarm unlock-key` as well as the fetch
// `docker swarm update --autolock` and `unlock-key --rotate` make after
// their POST: the server cannot tell them apart, and each prints the key.
func (d *Daemon) UnlockKeyDelivered(ctx context.Context, key string) error {
	ctx = context.WithoutCancel(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	next := d.nextKey()
	if d.state != swarm.LocalNodeStateActive || key == "" {
		return nil
	}
	if d.member != nil {
		return d.clusterKeyDeliveredLocked(ctx, key)
	}
	if !next.Exists() {
		return nil
	}
	c, err := cluster.Get(ctx, d.store)
	if err != nil {
		return err
	}
	recorded, err := c.UnlockKey(&d.keys)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare([]byte(recorded), []byte(key)) != 1 {
		// Rotated again since: the newer key is the one owed.
		return nil
	}
	if !next.Opens(key) {
		return d.recoverKeysLocked(ctx, errors.New("the pending locked key does not open with the recorded unlock key"))
	}
	err = d.injected(fpAckInstall)
	if err == nil {
		err = next.MoveTo(d.lockedKey)
	}
	if err == nil && d.plainKey.Exists() {
		err = d.finishEnableLocked(ctx)
	} else if err == nil {
		d.log.Info("the rotated unlock key was fetched; the previous key no longer unlocks")
	}
	if err != nil {
		return d.recoverKeysLocked(ctx, err)
	}
	d.notePendingLocked()
	return nil
}

// noteKeyMemory says once if key memory could not be mlocked (EPERM, or
// ENOMEM under RLIMIT_MEMLOCK): keys still work, in pages that may be
// swapped.
func (d *Daemon) noteKeyMemory() {
	if err := keyring.MemoryLockError(); err != nil {
		d.memWarn.Do(func() {
			d.log.Warn("key memory is not locked: keys may be written to swap; raise RLIMIT_MEMLOCK (ulimit -l) or run as root", "err", err)
		})
	}
}
