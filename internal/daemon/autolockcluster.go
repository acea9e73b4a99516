package daemon

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/moby/moby/api/types/swarm"
)

// Autolock on a cluster of managers, as swarmkit does it: the unlock key
// lives in the replicated cluster record (sealed under the master key,
// which every manager holds), and every manager keeps its own key files
// in line with it (settleKeysLocked, run by followUnlockKey whenever the
// record changes). A manager's node TLS key is sealed under the master
// key in member.json, so wrapping the master key file locks it too.
//
// The record says when its unlock key has reached an operator
// (UnlockKeyFetched, written by the manager that answered GET
// /swarm/unlockkey with it): only then does any manager lock under it,
// and only then is its plaintext key removed. Until then each manager
// keeps what unlocks today beside the pending file, as a lone node does.
//
// A manager started while its key files are locked does not start its
// etcd member (its TLS key is sealed) and serves only the lifecycle
// calls, on a scratch store that holds nothing; `docker swarm unlock`
// opens the node key, starts the member and activates once it has a
// quorum. A locked manager is down for the cluster's quorum, as a locked
// swarmkit manager is.

// msgUnlockStarting refuses a second unlock, or a leave, on a manager
// unlocked whose start (serveUnlockedMember) is under way.
const msgUnlockStarting = "this manager is unlocked and waits for the swarm's quorum to start"

// keySyncPeriod is how often a manager looks at the cluster record for a
// changed unlock key.
const keySyncPeriod = time.Second

// storeDir is the embedded store's data directory: the member's, or, on a
// manager started locked, a scratch one.
func (d *Daemon) storeDir() string {
	if d.lockedMember != nil {
		return d.scratchStoreDir()
	}
	return filepath.Join(d.cfg.DataDir, "etcd")
}

func (d *Daemon) scratchStoreDir() string { return filepath.Join(d.cfg.DataDir, "etcd.locked") }

// lockedMemberWaits is resume's answer on a manager started locked: the
// node stays locked, its scratch store untouched.
func (d *Daemon) lockedMemberWaits() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lockedMember == nil {
		return false
	}
	d.state = swarm.LocalNodeStateLocked
	d.log.Warn("hushd is locked: run `docker swarm unlock` with the unlock key; this manager takes no part in the swarm until then")
	return true
}

// startUnlockedMemberLocked follows a successful unlock of a manager with
// mk, the master key key opened: the node key is opened and the key kept
// for activateUnlockedLocked; serveUnlockedMember starts the member.
func (d *Daemon) startUnlockedMemberLocked(_ context.Context, mk keyring.MasterKey, key string) error {
	if ms := d.lockedMember; ms != nil {
		mc, err := d.openMember(ms, mk)
		if err != nil {
			mk.Destroy()
			return err
		}
		d.unlockMember = mc
	}
	d.unlockWith, d.unlockUsed = mk, key
	d.log.Info("unlocked: starting this manager")
	return nil
}

// serveUnlockedMember starts an unlocked manager (without d.mu): asks the
// other managers first whether it was demoted while it was down and
// locked (as a plain restart does before it opens its store), starts its
// member from the real data dir (or, demoted, runs as a worker), and
// activates at once if the member joins a quorum within quorumGrace,
// else in the background when it does (pending meanwhile), as a manager
// restarted without a quorum.
func (d *Daemon) serveUnlockedMember(ctx context.Context) error {
	d.mu.Lock()
	mc := d.unlockMember
	d.unlockMember = nil
	d.mu.Unlock()
	if mc != nil {
		// A leave a crash interrupted is finished first, as a plain
		// restart finishes it before it opens its store (leftWhileDown).
		left, err := d.leftWhileDown(ctx)
		demoted := false
		if err == nil && !left {
			demoted, err = d.demotedWhileDown(ctx)
		}
		if err != nil {
			// Locked as before: a later unlock asks again.
			clear(mc.TLS.KeyPEM)
			d.mu.Lock()
			d.unlockWith.Destroy()
			d.unlockWith, d.unlockUsed = keyring.MasterKey{}, ""
			d.member, d.nodeKey = nil, nil
			d.mu.Unlock()
			return err
		}
		d.mu.Lock()
		if d.closing {
			d.mu.Unlock()
			clear(mc.TLS.KeyPEM)
			return nil
		}
		d.closeStoreLocked()
		d.lockedMember = nil
		if err := os.RemoveAll(d.scratchStoreDir()); err != nil {
			d.log.Warn("removing the locked manager's scratch store", "err", err)
		}
		if left || demoted {
			clear(mc.TLS.KeyPEM)
			mc = nil
			d.unlockWith.Destroy()
			d.unlockWith, d.unlockUsed = keyring.MasterKey{}, ""
		}
		if demoted {
			err = d.loadWorker()
		}
		if left {
			d.state = swarm.LocalNodeStateInactive
		}
		if err == nil {
			err = d.openStoreLocked(ctx, mc)
		}
		d.mu.Unlock()
		if err != nil {
			return fmt.Errorf("starting this node's store: %w", err)
		}
		if left || demoted {
			return d.startServing(ctx, false)
		}
	}
	if d.readyWithin(ctx, quorumGrace) {
		return d.startServing(ctx, true)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return nil
	}
	d.noQuorum.Store(true)
	d.serveOnQuorum()
	return nil
}

// activateUnlockedLocked is resume after an unlock of a manager: the key
// files follow the record (the key used may be the pending one), then the
// runtime starts. A failure keeps the key for the next try.
func (d *Daemon) activateUnlockedLocked(ctx context.Context) error {
	mk, used := d.unlockWith, d.unlockUsed
	if _, err := d.settleKeysLocked(ctx, mk, used); err != nil {
		d.dropKeyring()
		return fmt.Errorf("key files: %w", err)
	}
	d.unlockWith, d.unlockUsed = keyring.MasterKey{}, ""
	if err := d.activateLocked(mk); err != nil {
		return err
	}
	d.notePendingLocked()
	return nil
}

// listenAfterUnlock makes a lone node unlocked with --listen-addr the
// first manager others can join, as its start would have.
func (d *Daemon) listenAfterUnlock(ctx context.Context) error {
	if err := d.listenOnExisting(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.member == nil || d.state != swarm.LocalNodeStateActive {
		return nil
	}
	return d.startJoinServiceLocked()
}

// clusterKeyDeliveredLocked is UnlockKeyDelivered on a manager of a
// cluster: the record notes that its key has reached an operator, then
// this manager's files follow (the others' follow the record).
func (d *Daemon) clusterKeyDeliveredLocked(ctx context.Context, key string) error {
	// Enabling (the plaintext key is still here), not an unlock-key
	// rotation: the master key is rotated across the managers once the
	// key has reached an operator, as a lone node rotates it.
	enabling := d.plainKey.Exists()
	noted := false
	for attempt := 0; ; attempt++ {
		c, err := cluster.Get(ctx, d.store)
		if err != nil {
			return err
		}
		recorded, err := c.UnlockKey(&d.keys)
		if err != nil {
			return err
		}
		if recorded == "" || subtle.ConstantTimeCompare([]byte(recorded), []byte(key)) != 1 {
			return nil // rotated again since, or turned off
		}
		if c.UnlockKeyFetched {
			break
		}
		if err := d.injected(fpAckRecord); err != nil {
			return d.recoverKeysLocked(ctx, err)
		}
		c.UnlockKeyFetched = true
		// With it, the rotation enabling owes, so that a crash before
		// it starts does not lose it (resumeOwedRotation).
		c.RotationOwed = c.RotationOwed || enabling
		// Bookkeeping no client sees: the version stays (Swarm's fetch
		// writes nothing).
		err = cluster.PutInternal(ctx, d.store, &c)
		if errors.Is(err, errdefs.ErrOutOfSequence) && attempt < 5 {
			continue // another write to the record: read it again
		}
		if err != nil {
			return d.recoverKeysLocked(ctx, err)
		}
		noted = true
		break
	}
	if _, err := d.settleKeysLocked(ctx, d.mk, ""); err != nil {
		return d.recoverKeysLocked(ctx, err)
	}
	d.notePendingLocked()
	if enabling && noted {
		if err := d.injected(fpClusterEnableRotate); err != nil {
			return err // as a crash before the rotation starts
		}
		d.rotateAfterEnable()
	}
	return nil
}

// resumeOwedRotation starts the rotation that enabling autolock owes when
// none stands (its manager stopped before starting it, or it was refused:
// a manager was absent): run by each manager once when it activates.
func (d *Daemon) resumeOwedRotation(ctx context.Context) {
	c, err := cluster.Get(ctx, d.store)
	if err != nil || !c.RotationOwed || !c.Spec.EncryptionConfig.AutoLockManagers || !c.UnlockKeyFetched {
		return
	}
	if _, ok, err := getRotation(ctx, d.store); err != nil || ok {
		return // one stands: its driver, or the next `hush key rotate`, ends it
	}
	d.log.Info("autolock was enabled but the master key has not been rotated across the managers since: rotating it")
	d.rotateAfterEnable()
}

// settleRotationOwed clears RotationOwed once a rotation across the
// managers has ended (best effort: left set, the next activation runs one
// more rotation).
func (d *Daemon) settleRotationOwed(ctx context.Context) {
	st := d.curStore()
	for attempt := 0; attempt < 5; attempt++ {
		c, err := cluster.Get(ctx, st)
		if err != nil || !c.RotationOwed {
			return
		}
		c.RotationOwed = false
		err = cluster.PutInternal(ctx, st, &c)
		if !errors.Is(err, errdefs.ErrOutOfSequence) {
			if err != nil {
				d.log.Warn("master key rotation: clearing the rotation autolock owed", "err", err)
			}
			return
		}
	}
}

// rotateAfterEnable rotates the master key across the managers in the
// background, once autolock's unlock key has reached an operator: so that
// an earlier copy of any manager's plaintext master.key opens nothing.
// It needs every manager present; if one is not (or this manager stops
// first), it logs what to do: `hush key rotate`.
func (d *Daemon) rotateAfterEnable() {
	d.runBG(func(ctx context.Context) {
		if !d.rot.mu.TryLock() {
			return // a rotation is running: it retires the key as well
		}
		defer d.rot.mu.Unlock()
		r, err := d.rotateCluster(ctx)
		if err != nil {
			d.log.Warn("autolock enabled, but the master key was not rotated across the managers: run `hush key rotate`", "err", err)
			return
		}
		d.log.Info("master key rotated across the managers as autolock was enabled", "key", r.KeyID, "rewrapped", r.Rewrapped)
	}, d.bg)
}

// followUnlockKey runs on every active manager of a cluster: when the
// cluster record changes, the key files follow it (an unlock key set,
// fetched, rotated or removed through any manager), and so do the
// settings kept outside the record (settle: the raft timing for etcd's
// next start, the orchestrator's and dispatcher's settings). Without the
// latter, a manager that did not serve a `swarm update` kept the old
// settings while it ran and wrote the new timing only at its next start,
// after its etcd had started with the old one: two restarts to apply it.
func (d *Daemon) followUnlockKey(ctx context.Context) {
	// The store revision, not Version: hush's own writes (the fetched
	// flag) must be followed too.
	var seen int64
	var owed resumeBackoff
	t := time.NewTicker(keySyncPeriod)
	defer t.Stop()
	// At once first: a manager that just joined or was promoted holds
	// its master key in the clear until this look.
	for {
		if c, err := cluster.Get(ctx, d.store); err == nil {
			if c.Revision() != seen {
				if v, ok := d.followOnce(ctx); ok {
					if seen == 0 {
						d.resumeOwedRotation(ctx)
					}
					seen = v
				}
			}
			if seen != 0 {
				// Refused then (a manager was absent): retried once
				// every manager is back (clusterresume.go).
				d.retryOwedRotation(ctx, &c, &owed)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// followOnce brings the settings and the key files in line with the
// record, if mu is free (stopRuntime waits for followUnlockKey while
// holding it: never block on it); true, with the record's store revision, once
// they are. Under mu, as every settle: it writes the tuning file.
func (d *Daemon) followOnce(ctx context.Context) (int64, bool) {
	if !d.mu.TryLock() {
		return 0, false
	}
	defer d.mu.Unlock()
	if d.state != swarm.LocalNodeStateActive || d.mk.Key == nil || ctx.Err() != nil {
		return 0, false
	}
	c, err := cluster.Get(ctx, d.store)
	if err != nil {
		return 0, false
	}
	d.settle(&c)
	defer d.notePendingLocked()
	acked, err := d.settleKeysLocked(ctx, d.mk, "")
	d.notePendingLocked() // at once: the files just changed
	if err == nil && acked {
		err = d.noteFetchedLocked(ctx)
	}
	if err != nil {
		d.log.Warn("key files do not follow the cluster's unlock key yet; retrying", "err", err)
		return 0, false
	}
	return c.Revision(), true
}

// noteFetchedLocked writes UnlockKeyFetched into the record when this
// manager's files are locked under the recorded key but the record does
// not say it was fetched: a lone node autolocked (its key fetched on the
// lone node's path, which writes no flag) that became a manager. Its
// locked file opening with the recorded key shows the key reached an
// operator; without the flag, managers joining it would keep their
// master key in the clear.
func (d *Daemon) noteFetchedLocked(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		c, err := cluster.Get(ctx, d.store)
		if err != nil {
			return err
		}
		if !c.Spec.EncryptionConfig.AutoLockManagers || c.UnlockKeyFetched {
			return nil
		}
		recorded, err := c.UnlockKey(&d.keys)
		if err != nil {
			return err
		}
		if recorded == "" || !d.lockedKey.Opens(recorded) {
			return nil
		}
		c.UnlockKeyFetched = true
		// Bookkeeping no client sees: the version stays (Swarm's fetch
		// writes nothing).
		err = cluster.PutInternal(ctx, d.store, &c)
		if errors.Is(err, errdefs.ErrOutOfSequence) && attempt < 5 {
			continue
		}
		return err
	}
}

// msgLeaveLocked is Swarm's refusal of `swarm leave` without --force on a
// locked node (moby's daemon/cluster Leave).
const msgLeaveLocked = "Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message."

// leaveLockedMemberLocked is `swarm leave` on a manager started locked.
// Its node key is sealed under the master key, so it holds no certificate
// to ask another manager to remove its member (and runs none): with
// --force its manager state is wiped, as Swarm's locked manager's leave
// does, and its member stays in the membership, down as it was while
// locked, until the node is demoted (docs/COMPATIBILITY.md). The leave
// marker (Locked) makes a crash finish the wipe at the restart.
func (d *Daemon) leaveLockedMemberLocked(ctx context.Context, force bool) error {
	if !force {
		return errdefs.Unavailable("%s", msgLeaveLocked)
	}
	if d.lockedMember.External != nil {
		return d.leaveLockedExternalLocked(ctx)
	}
	if err := d.injected(fpLeaveMark); err != nil {
		return err
	}
	b, _ := json.Marshal(leaveMarker{Locked: true})
	if err := writeFileSync(d.leavingPath(), b, 0o600); err != nil {
		return fmt.Errorf("leave marker: %w", err)
	}
	d.log.Warn("leaving while locked: this manager's member stays in the cluster until it is demoted")
	return d.finishLeaveLocked(ctx)
}
