package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// Master-key rotation on a cluster of managers. Every manager holds the
// master key in its own key files, so the new key must reach every one of
// them, durably, before anything is sealed under it, and the old key may
// leave a manager only once nothing in the store needs it. One manager
// drives (the one `hush key rotate` reached); every manager, the driver
// included, follows a record in the store (its follower loop,
// followRotationOnce, beside followUnlockKey). The phases (docs/DESIGN.md,
// "Master-key rotation across managers"):
//
//  1. prepare: the driver creates the record (a create that fails if one
//     exists: one rotation at a time, cluster-wide) holding the new key K2
//     sealed under the current key K1, then names the managers that take
//     part (every manager recorded; all must be present, i.e. unlocked and
//     renewing their presence, or the rotation is dropped at once). Each
//     manager stores K2 in master.key.rotating (sealed under K1), loads it
//     to open with (still sealing under K1) and acks "prepared".
//  2. seal: once all acked, the record drops K2 (every manager has it on
//     disk) and says seal: each manager seals under K2 (switched while no
//     write of its store is between seal and commit) and acks "sealing";
//     then the driver re-wraps the store until nothing needs K1.
//  3. install: each manager but the driver installs K2 in its key files
//     (the locked file under the recorded unlock key, or the plain file),
//     forgets and wipes K1 (its store then refuses a value holding a K1
//     seal), drops its rotating file and acks "installed"; the driver
//     re-wraps once more, checks that nothing needs K1, installs last, then
//     deletes the record and its acks and compacts the store.
//
// A manager that restarts loads its rotating file beside its installed key
// and, once the record says seal, seals under K2 before it serves. A
// rotation dropped in prepare (a manager did not ack in time) leaves
// rotating files that the managers drop when they see no record. After
// prepare a rotation is never dropped: a wait that times out returns an
// error and the next `hush key rotate` on any manager takes the driver's
// part over (refused only while the recorded driver is still present and
// driving).

const (
	rotationTable    = "keyrotation"
	rotationRecordID = "current"
	rotationAckTable = "keyrotationack"
)

// The phases of a cluster rotation, in order.
const (
	phasePrepare = "prepare"
	phaseSeal    = "seal"
	phaseInstall = "install"
)

// What a manager acknowledges, in order.
const (
	ackPrepared  = "prepared"
	ackSealing   = "sealing"
	ackInstalled = "installed"
)

var ackOrder = map[string]int{ackPrepared: 1, ackSealing: 2, ackInstalled: 3}

// The steps a test can stop a cluster rotation after (rotateStep): the
// driver's, then each manager's own.
const (
	stepClusterStarted   = "cluster-started"   // record written with its managers
	stepClusterPrepared  = "cluster-prepared"  // every manager acked prepared; record still says prepare
	stepClusterSealing   = "cluster-sealing"   // record says seal; store not re-wrapped yet
	stepClusterRewrapped = "cluster-rewrapped" // store re-wrapped; record still says seal
	stepClusterInstall   = "cluster-install"   // record says install; managers install
	stepClusterFinal     = "cluster-final"     // every manager installed; record not deleted yet
	stepFollowKey        = "follow-key"        // this manager's rotating file written; no ack
	stepDropRecord       = "drop-record"       // tests: an attempt to delete a dropped rotation's record fails
	stepFollowSealing    = "follow-sealing"    // sealing under the new key; no ack
	stepFollowInstalled  = "follow-installed"  // new key installed, old forgotten; no ack
	stepMemberResealed   = "member-resealed"   // member.json sealed under the new key; key files not yet
)

// defaultRotationAckTimeout bounds each wait of a driver for the others.
const defaultRotationAckTimeout = 60 * time.Second

func (d *Daemon) rotationAckTimeout() time.Duration {
	if d.rot.ackTimeout > 0 {
		return d.rot.ackTimeout
	}
	return defaultRotationAckTimeout
}

// rotationRecord is the cluster-wide rotation in progress.
type rotationRecord struct {
	// Old and New are the key IDs (K1 and K2).
	Old string `json:"old"`
	New string `json:"new"`
	// NewKey is K2 sealed under K1, until every manager has it on disk.
	NewKey *keyring.Sealed `json:"newKey,omitempty"`
	// Managers are the node IDs that must take part.
	Managers []string `json:"managers,omitempty"`
	Phase    string   `json:"phase"`
	// Driver is the manager driving the rotation ("" while none does).
	Driver  string    `json:"driver,omitempty"`
	Started time.Time `json:"started"`

	rev int64
}

// rotationAck is one manager's progress in the rotation to key New.
type rotationAck struct {
	New  string `json:"new"`
	Done string `json:"done"`
}

func (d *Daemon) rotationKey() string {
	return d.curStore().Table(rotationTable).Key(rotationRecordID)
}

// getRotation reads the rotation in progress (ok false: none).
func getRotation(ctx context.Context, st *store.Store) (rotationRecord, bool, error) {
	o, err := st.Table(rotationTable).Get(ctx, rotationRecordID)
	if errors.Is(err, store.ErrNotFound) {
		return rotationRecord{}, false, nil
	}
	if err != nil {
		return rotationRecord{}, false, err
	}
	var r rotationRecord
	err = json.Unmarshal(o.Value, &r)
	clear(o.Value)
	if err != nil {
		return rotationRecord{}, false, fmt.Errorf("master-key rotation record: %w: %w", errdefs.ErrInternal, err)
	}
	r.rev = o.ModRev
	return r, true, nil
}

// putRotation writes r if the record is still at r's revision.
func putRotation(ctx context.Context, st *store.Store, r *rotationRecord) error {
	val, err := json.Marshal(r)
	if err != nil {
		return err
	}
	rev, err := st.Table(rotationTable).Update(ctx, rotationRecordID, r.rev, val)
	if errors.Is(err, store.ErrStale) || errors.Is(err, store.ErrNotFound) {
		return &errdefs.Error{Category: errdefs.ErrConflict, Msg: "the master-key rotation record changed meanwhile (another manager took the rotation over?); retry `hush key rotate`"}
	}
	if err != nil {
		return err
	}
	r.rev = rev
	return nil
}

// advanceRotation applies change to the record rec names, as this
// manager, its driver: re-read first, since re-wrapping the store
// rewrites the record (its revision moves without any change of
// substance). It refuses if another manager took the rotation over.
func (d *Daemon) advanceRotation(ctx context.Context, rec *rotationRecord, change func(*rotationRecord)) error {
	for attempt := 0; ; attempt++ {
		cur, ok, err := getRotation(ctx, d.curStore())
		if err != nil {
			return err
		}
		if !ok || cur.New != rec.New || cur.Driver != d.nodeID {
			return &errdefs.Error{Category: errdefs.ErrConflict, Msg: "another manager took the master-key rotation over meanwhile; it finishes it"}
		}
		change(&cur)
		err = putRotation(ctx, d.curStore(), &cur)
		if errdefs.Is(err, errdefs.ErrConflict) && attempt < 5 {
			continue
		}
		if err != nil {
			return err
		}
		*rec = cur
		return nil
	}
}

// deleteRotation removes the record of r's rotation and every ack, in one
// transaction (the record is read again: a re-wrap moves its revision).
func deleteRotation(ctx context.Context, st *store.Store, r rotationRecord) error {
	cur, ok, err := getRotation(ctx, st)
	if err != nil || !ok {
		return err
	}
	if cur.New != r.New {
		return &errdefs.Error{Category: errdefs.ErrConflict, Msg: "another master-key rotation replaced this one meanwhile"}
	}
	if cur.Driver != r.Driver || cur.Phase != r.Phase {
		// Taken over (and maybe moved on) since r was read: a driver
		// that lost its presence meanwhile must not drop or end what
		// the manager that resumed it now drives.
		return &errdefs.Error{Category: errdefs.ErrConflict, Msg: "another manager took the master-key rotation over meanwhile; it finishes it"}
	}
	r = cur
	acks, err := st.Table(rotationAckTable).List(ctx)
	if err != nil {
		return err
	}
	var extra []store.Op
	for _, a := range acks {
		clear(a.Value)
		extra = append(extra, store.DeleteOp(st.Table(rotationAckTable).Key(a.ID)))
	}
	err = st.Table(rotationTable).Delete(ctx, rotationRecordID, "", r.rev, nil, extra...)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// dropRotationWait bounds how long a driver retries deleting the record
// of a rotation it dropped in prepare.
const dropRotationWait = 30 * time.Second

// dropRotation deletes the record of a rotation dropped in prepare,
// retrying (bounded) a delete that fails: a record left in prepare would
// keep every manager's rotating file and refuse role changes until a
// manager's `hush key rotate` took it over. A loaded store times requests
// out, and this runs right after a manager went down. Once ctx ends (the
// driver is stopping: Close, or a leave or demotion ending d.bg, which
// waits for it) the first attempt is the only one.
func (d *Daemon) dropRotation(ctx context.Context, rec rotationRecord) {
	deadline := time.Now().Add(dropRotationWait)
	for attempt := 0; ; attempt++ {
		err := d.rotateStep(stepDropRecord, attempt)
		if err == nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			err = deleteRotation(dctx, d.curStore(), rec)
			cancel()
		}
		if err == nil || errdefs.Is(err, errdefs.ErrConflict) {
			// Gone, or replaced by another rotation (not ours to drop).
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			d.log.Warn("master key rotation: the dropped rotation's record is left; `hush key rotate` takes it over", "err", err)
			return
		}
		d.log.Warn("master key rotation: dropping the record; retrying", "err", err)
		if sleepCtx(ctx, 250*time.Millisecond) != nil {
			return
		}
	}
}

// writeRotationAck records this manager's progress (d.mu held); an ack
// already written by this run is not written again at each look.
func (d *Daemon) writeRotationAck(ctx context.Context, newID, done string) error {
	if d.rot.acked == newID+"/"+done {
		return nil
	}
	val, _ := json.Marshal(rotationAck{New: newID, Done: done})
	if err := d.curStore().Apply(ctx, store.PutOp(d.curStore().Table(rotationAckTable).Key(d.nodeID), string(val))); err != nil {
		return err
	}
	d.rot.acked = newID + "/" + done
	return nil
}

// stepAckRead is each read of the acks in a driver's wait (rotateStep): a
// test fails it as the store does when etcd has lost its leader.
const stepAckRead = "ack-read"

// rotationAcks returns what each manager acknowledged of the rotation to
// newID.
func (d *Daemon) rotationAcks(ctx context.Context, newID string) (map[string]string, error) {
	if err := d.rotateStep(stepAckRead, 0); err != nil {
		return nil, err
	}
	objs, err := d.curStore().Table(rotationAckTable).List(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, o := range objs {
		var a rotationAck
		err := json.Unmarshal(o.Value, &a)
		clear(o.Value)
		if err == nil && a.New == newID {
			out[o.ID] = a.Done
		}
	}
	return out, nil
}

// rotationInProgress refuses what would change the set of key holders (or
// the files they keep the key in) while a rotation stands: what names the
// refused change.
func (d *Daemon) rotationInProgress(ctx context.Context, what string) error {
	ok, err := d.curStore().Holds(ctx, store.Absent(d.rotationKey()))
	if err != nil {
		return err
	}
	if !ok {
		return errdefs.Unavailable("a master-key rotation is in progress across the managers: %s is refused until it ends (`hush key rotate` on any manager finishes it)", what)
	}
	return nil
}

// roleChangeGuard refuses a change of node id's role to want while a
// rotation stands, and returns the guard of the role's write: no rotation
// record (it catches one started after this check). The exception is the
// demotion of another manager that is absent (down, locked, or gone for
// good after a crash or `swarm leave --force`): the rotation waits for
// every manager it counted, so one that never comes back would hold it,
// and every later role change, forever. Demoted, it is no longer waited
// for; it holds no key it could use any more (its etcd member is removed
// with the demotion, and it wipes its key files when it hears of it), so
// its write is guarded instead on its staying absent.
func (d *Daemon) roleChangeGuard(ctx context.Context, id string, want swarm.NodeRole) (store.Cond, error) {
	const what = "a promotion or demotion"
	err := d.rotationInProgress(ctx, what)
	if err == nil {
		return store.Absent(d.rotationKey()), nil
	}
	if !errdefs.Is(err, errdefs.ErrUnavailable) {
		return store.Cond{}, err
	}
	if d.demotingAbsentManager(ctx, id, want) {
		return store.Absent(store.SelfClaimKey(id)), nil
	}
	// Else the change waits (bounded) for the rotation to end.
	if err := d.awaitNoRotation(ctx, what); err != nil {
		if want == swarm.NodeRoleWorker && id != d.nodeID && errdefs.Is(err, errdefs.ErrUnavailable) {
			return store.Cond{}, errdefs.Unavailable("a master-key rotation is in progress across the managers: the demotion of manager %s, which is up, is refused until it ends (`hush key rotate` on any manager finishes it); only a manager that is down may be demoted meanwhile", id)
		}
		return store.Cond{}, err
	}
	return store.Absent(d.rotationKey()), nil
}

// defaultRotationWait bounds how long a change that a rotation in progress
// refuses (a role change, a manager's join, an autolock change) first
// waits for it to end: enabling autolock on a cluster starts one, which
// takes about a second when every manager is up.
const defaultRotationWait = 15 * time.Second

func (d *Daemon) rotationWait() time.Duration {
	if d.rot.wait > 0 {
		return d.rot.wait
	}
	return defaultRotationWait
}

// awaitNoRotation is rotationInProgress after a bounded wait for the
// rotation to end. Callers hold no d.mu: this manager's own step of the
// rotation needs it.
func (d *Daemon) awaitNoRotation(ctx context.Context, what string) error {
	deadline := time.Now().Add(d.rotationWait())
	for {
		err := d.rotationInProgress(ctx, what)
		if err == nil || !errdefs.Is(err, errdefs.ErrUnavailable) || time.Now().After(deadline) {
			return err
		}
		if serr := sleepCtx(ctx, 200*time.Millisecond); serr != nil {
			return err
		}
	}
}

// demotingAbsentManager reports whether a role change is the demotion of
// a manager that is down or locked: allowed during a rotation, which then
// stops waiting for it (it holds no key files once it learns it was
// demoted, before it opens any store). Without it, a manager lost for
// good in the middle of a rotation would hold the rotation, and with it
// every role change, for ever.
func (d *Daemon) demotingAbsentManager(ctx context.Context, id string, want swarm.NodeRole) bool {
	if want != swarm.NodeRoleWorker || id == d.nodeID {
		return false
	}
	absent, err := d.absentManagers(ctx, []string{id})
	return err == nil && len(absent) == 1
}

// clusterManagers lists the managers recorded, sorted, with a description
// of each for messages.
func (d *Daemon) clusterManagers(ctx context.Context) ([]string, map[string]string, error) {
	all, err := nodes.List(ctx, d.curStore())
	if err != nil {
		return nil, nil, err
	}
	var ids []string
	desc := map[string]string{}
	for _, n := range all {
		if n.Spec.Role != swarm.NodeRoleManager {
			continue
		}
		ids = append(ids, n.ID)
		s := n.ID
		if n.Hostname != "" || n.Addr != "" {
			s += " (" + strings.TrimSpace(n.Hostname+" "+n.Addr) + ")"
		}
		desc[n.ID] = s
	}
	sort.Strings(ids)
	return ids, desc, nil
}

// absentManagers are those of ids that hold no presence of their own: down,
// locked, or cut off from the quorum.
func (d *Daemon) absentManagers(ctx context.Context, ids []string) ([]string, error) {
	present, err := d.curStore().Present(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range ids {
		if id != d.nodeID && !slices.Contains(present[id], id) {
			out = append(out, id)
		}
	}
	return out, nil
}

func describe(ids []string, desc map[string]string) string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if s, ok := desc[id]; ok {
			out = append(out, s)
		} else {
			out = append(out, id)
		}
	}
	return strings.Join(out, ", ")
}

// rotateCluster is RotateMaster on a manager of a cluster (d.rot.mu held,
// d.mu not): it starts a rotation, or takes over the one in progress, and
// drives it to its end.
func (d *Daemon) rotateCluster(ctx context.Context) (Rotation, error) {
	return d.driveClusterRotation(ctx, func(ctx context.Context, kr *keyring.Keyring) (rotationRecord, error) {
		rec, ok, err := getRotation(ctx, d.curStore())
		if err != nil {
			return rotationRecord{}, err
		}
		if ok {
			return d.takeOverRotation(ctx, rec)
		}
		return d.startClusterRotation(ctx, kr)
	})
}

// driveClusterRotation drives the record pick gives (started, or taken
// over) to its end, as this manager's driver (d.rot.mu held, d.mu not);
// pick runs with the manager serving and its keyring at hand.
func (d *Daemon) driveClusterRotation(ctx context.Context, pick func(context.Context, *keyring.Keyring) (rotationRecord, error)) (Rotation, error) {
	// The driver's steps hold d.mu over store calls that a cluster
	// without quorum does not finish: they end when Close begins, before
	// it takes d.mu, as the follower loop's do (d.life). The request's
	// context is uncancellable (RotateMaster), and d.bg ends only later.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(d.life, cancel)()
	if err := d.lockMu(ctx); err != nil {
		return Rotation{}, err
	}
	err := d.CheckServingLocked()
	kr := d.keys.Keyring()
	d.mu.Unlock()
	if err != nil {
		return Rotation{}, err
	}
	if kr == nil {
		return Rotation{}, errdefs.Unavailable("%s", msgLocked)
	}
	d.rot.driving.Store(true)
	defer d.rot.driving.Store(false)
	rec, err := pick(ctx, kr)
	if err != nil {
		return Rotation{}, err
	}
	r, err := d.driveRotation(ctx, &rec)
	if err != nil {
		d.releaseRotation(ctx)
		return Rotation{}, err
	}
	d.settleRotationOwed(ctx)
	return r, nil
}

// startClusterRotation writes a new rotation record, then the managers
// that must take part; it drops the record and refuses, naming them, if
// one of them is absent.
func (d *Daemon) startClusterRotation(ctx context.Context, kr *keyring.Keyring) (rotationRecord, error) {
	c, err := cluster.Get(ctx, d.curStore())
	if err != nil {
		return rotationRecord{}, err
	}
	if c.Spec.EncryptionConfig.AutoLockManagers && !c.UnlockKeyFetched {
		// Each manager keeps the master key under an unlock key no one may
		// have yet: the rotation would have to re-wrap it under that key.
		return rotationRecord{}, &errdefs.Error{Category: errdefs.ErrConflict, Msg: "an unlock-key change is not finished: fetch the unlock key (docker swarm unlock-key) first, then retry"}
	}
	if err := d.lockMu(ctx); err != nil {
		return rotationRecord{}, err
	}
	old := d.mk.ID
	d.mu.Unlock()
	next, err := keyring.GenerateMasterKey()
	if err != nil {
		return rotationRecord{}, err
	}
	sealed, err := kr.SealKey(next)
	next.Destroy()
	if err != nil {
		return rotationRecord{}, fmt.Errorf("master key rotation: %w", err)
	}
	if id, err := kr.CurrentID(); err != nil || id != old || sealed.KeyID != old {
		return rotationRecord{}, &errdefs.Error{Category: errdefs.ErrConflict, Msg: "this manager's master key changed meanwhile; retry"}
	}
	rec := rotationRecord{Old: old, New: next.ID, NewKey: &sealed, Phase: phasePrepare, Driver: d.nodeID, Started: time.Now().UTC()}
	val, err := json.Marshal(&rec)
	if err != nil {
		return rotationRecord{}, err
	}
	// The create fails if a record exists: one rotation at a time.
	rev, err := d.curStore().Table(rotationTable).Create(ctx, rotationRecordID, "", val)
	if errors.Is(err, store.ErrNameTaken) {
		return rotationRecord{}, &errdefs.Error{Category: errdefs.ErrConflict, Msg: "another manager started a master-key rotation meanwhile; retry `hush key rotate` to finish it"}
	}
	if err != nil {
		return rotationRecord{}, err
	}
	rec.rev = rev
	// From here no role change, join or promotion is written (each is
	// refused, or fails a guard, while the record exists): the managers
	// read now are all the holders of the master key.
	if err := d.nameRotationManagers(ctx, &rec); err != nil {
		if derr := deleteRotation(context.WithoutCancel(ctx), d.curStore(), rec); derr != nil {
			d.log.Warn("master key rotation: dropping the record of a refused rotation", "err", derr)
		}
		return rotationRecord{}, err
	}
	if err := d.rotateStep(stepClusterStarted, 0); err != nil {
		return rotationRecord{}, err
	}
	d.log.Info("master key rotation across managers started", "old", rec.Old, "new", rec.New, "managers", len(rec.Managers))
	return rec, nil
}

// nameRotationManagers writes the managers taking part into rec, once
// each is present. A manager that just started may not have claimed its
// presence yet: absent ones are asked again for a short while.
func (d *Daemon) nameRotationManagers(ctx context.Context, rec *rotationRecord) error {
	deadline := time.Now().Add(min(3*time.Second, d.rotationAckTimeout()))
	for {
		ids, desc, err := d.clusterManagers(ctx)
		if err != nil {
			return err
		}
		absent, err := d.absentManagers(ctx, ids)
		if err != nil {
			return err
		}
		if len(absent) == 0 {
			rec.Managers = ids
			return putRotation(ctx, d.curStore(), rec)
		}
		if time.Now().After(deadline) {
			return errdefs.Unavailable("cannot rotate the master key: every manager must take part, and these are down, locked or cut off from the quorum: %s; start or unlock them (or demote/remove them), then retry", describe(absent, desc))
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// takeOverRotation makes this manager the driver of the rotation in
// progress, unless its driver is another manager that is still present.
func (d *Daemon) takeOverRotation(ctx context.Context, rec rotationRecord) (rotationRecord, error) {
	if rec.Driver != "" && rec.Driver != d.nodeID {
		absent, err := d.absentManagers(ctx, []string{rec.Driver})
		if err != nil {
			return rec, err
		}
		if len(absent) == 0 {
			return rec, &errdefs.Error{Category: errdefs.ErrConflict, Msg: fmt.Sprintf("a master-key rotation driven by manager %s is in progress; retry when it ends (or once that manager is down)", rec.Driver)}
		}
	}
	rec.Driver = d.nodeID
	if err := putRotation(ctx, d.curStore(), &rec); err != nil {
		return rec, err
	}
	if len(rec.Managers) == 0 {
		// The driver stopped between the record and its managers.
		if err := d.nameRotationManagers(ctx, &rec); err != nil {
			if derr := deleteRotation(context.WithoutCancel(ctx), d.curStore(), rec); derr != nil {
				d.log.Warn("master key rotation: dropping the record of a refused rotation", "err", derr)
			}
			return rec, err
		}
	}
	d.log.Info("master key rotation across managers resumed", "old", rec.Old, "new", rec.New, "phase", rec.Phase)
	return rec, nil
}

// releaseRotation clears this manager as the driver after a failure, so
// that `hush key rotate` on another manager may take the rotation over
// at once (best effort: a driver that is gone is taken over anyway).
func (d *Daemon) releaseRotation(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	rec, ok, err := getRotation(ctx, d.curStore())
	if err != nil || !ok || rec.Driver != d.nodeID {
		return
	}
	rec.Driver = ""
	_ = putRotation(ctx, d.curStore(), &rec)
}

// driveRotation takes rec from its phase to its end.
func (d *Daemon) driveRotation(ctx context.Context, rec *rotationRecord) (Rotation, error) {
	rewrapped := 0
	if rec.Phase == phasePrepare {
		if err := d.followRotationSelf(ctx); err != nil {
			return Rotation{}, err
		}
		if err := d.awaitRotationAcks(ctx, rec, ackPrepared, false); err != nil {
			// Nothing is sealed under the new key yet: the rotation is
			// dropped, and the managers drop their rotating files.
			d.dropRotation(ctx, *rec)
			return Rotation{}, fmt.Errorf("%w; the rotation was dropped, nothing changed: retry it once they are up", err)
		}
		if err := d.rotateStep(stepClusterPrepared, 0); err != nil {
			return Rotation{}, err
		}
		if err := d.advanceRotation(ctx, rec, func(r *rotationRecord) { r.Phase, r.NewKey = phaseSeal, nil }); err != nil {
			return Rotation{}, err
		}
		if err := d.rotateStep(stepClusterSealing, 0); err != nil {
			return Rotation{}, err
		}
	}
	if rec.Phase == phaseSeal {
		if err := d.followRotationSelf(ctx); err != nil {
			return Rotation{}, err
		}
		if err := d.awaitRotationAcks(ctx, rec, ackSealing, false); err != nil {
			return Rotation{}, fmt.Errorf("%w; the rotation stays in progress: run `hush key rotate` again to finish it", err)
		}
		n, err := d.rewrapStore(ctx, rec.Old)
		rewrapped += n
		if err != nil {
			return Rotation{}, err
		}
		if err := d.rotateStep(stepClusterRewrapped, 0); err != nil {
			return Rotation{}, err
		}
		if err := d.advanceRotation(ctx, rec, func(r *rotationRecord) { r.Phase = phaseInstall }); err != nil {
			return Rotation{}, err
		}
		if err := d.rotateStep(stepClusterInstall, 0); err != nil {
			return Rotation{}, err
		}
	}
	if rec.Phase != phaseInstall {
		return Rotation{}, fmt.Errorf("master-key rotation record in an unknown phase %q: %w", rec.Phase, errdefs.ErrInternal)
	}
	if err := d.followRotationSelf(ctx); err != nil {
		return Rotation{}, err
	}
	if err := d.awaitRotationAcks(ctx, rec, ackInstalled, true); err != nil {
		return Rotation{}, fmt.Errorf("%w; the rotation stays in progress: run `hush key rotate` again to finish it", err)
	}
	// The others have forgotten the old key: a value holding it that a
	// write slipped in before they did is re-wrapped here, with the old
	// key this manager still holds, and checked for inside the install.
	if err := d.lockMu(ctx); err != nil {
		return Rotation{}, err
	}
	holdsOld := d.mk.ID == rec.Old
	d.mu.Unlock()
	if holdsOld {
		n, err := d.rewrapStore(ctx, rec.Old)
		rewrapped += n
		if err != nil {
			return Rotation{}, err
		}
	} else if left, err := d.curStore().Referencing(ctx, rec.Old); err != nil {
		return Rotation{}, err
	} else if left > 0 {
		// Taken over after every manager, this one included, had
		// forgotten the old key (its driver stopped in the install):
		// say so rather than end the rotation over values no one opens.
		return Rotation{}, fmt.Errorf("master key rotation: %d values still need the old key %s, which no manager holds any more: %w", left, rec.Old, errdefs.ErrInternal)
	}
	if err := d.lockMu(ctx); err != nil {
		return Rotation{}, err
	}
	err := d.installRotatedLocked(ctx, *rec, true)
	if err == nil {
		err = d.writeRotationAck(ctx, rec.New, ackInstalled)
	}
	d.mu.Unlock()
	if err != nil {
		return Rotation{}, err
	}
	if err := d.rotateStep(stepClusterFinal, 0); err != nil {
		return Rotation{}, err
	}
	if err := deleteRotation(ctx, d.curStore(), *rec); err != nil {
		return Rotation{}, err
	}
	// Old revisions hold values wrapped by the old key, and the record
	// with the new key sealed under it.
	if err := d.curStore().CompactAll(ctx); err != nil {
		d.log.Warn("master key rotation: compacting the store", "err", err)
	}
	d.log.Info("master key rotated across managers", "keyID", rec.New, "managers", len(rec.Managers))
	return Rotation{KeyID: rec.New, Rewrapped: rewrapped}, nil
}

// awaitRotationAcks waits (bounded) until every manager of rec that is
// still a manager acknowledged want (skipSelf: but this one).
func (d *Daemon) awaitRotationAcks(ctx context.Context, rec *rotationRecord, want string, skipSelf bool) error {
	deadline := time.Now().Add(d.rotationAckTimeout())
	// transient: the store lost its leader (a manager's restart can make
	// etcd elect another): the wait goes on until its deadline rather
	// than ending the rotation, which a leader change does not harm.
	transient := func(err error) bool {
		return errdefs.Is(err, errdefs.ErrNoLeader) && time.Now().Before(deadline) && sleepCtx(ctx, 100*time.Millisecond) == nil
	}
	for {
		acks, err := d.rotationAcks(ctx, rec.New)
		if err != nil {
			if transient(err) {
				continue
			}
			return err
		}
		ids, desc, err := d.clusterManagers(ctx)
		if err != nil {
			if transient(err) {
				continue
			}
			return err
		}
		var missing []string
		for _, id := range rec.Managers {
			if (skipSelf && id == d.nodeID) || !slices.Contains(ids, id) {
				// A manager removed since holds no key files any more.
				continue
			}
			if ackOrder[acks[id]] < ackOrder[want] {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if want == ackPrepared {
			// Nothing is sealed under the new key yet: a manager that is
			// down or locked will not ack; the rotation is dropped now
			// rather than at the deadline.
			absent, err := d.absentManagers(ctx, missing)
			if err != nil {
				if transient(err) {
					continue
				}
				return err
			}
			if len(absent) > 0 {
				return errdefs.Unavailable("master key rotation: these managers went down or were locked before they took the new key: %s", describe(absent, desc))
			}
		}
		if time.Now().After(deadline) {
			return errdefs.Unavailable("master key rotation: these managers did not take the new key in time (step %q): %s (one that is down for good can be demoted meanwhile: docker node demote)", want, describe(missing, desc))
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// lockMu takes d.mu unless ctx ends first, for goroutines that a holder
// of d.mu may wait for. A leave or a demotion ends d.bg, where the
// rotation autolock's enable owes runs (rotateAfterEnable) and a worker's
// removal leaves (removedFromCluster), and then waits for d.bg's
// goroutines while it holds d.mu (closeStoreLocked): one blocked in
// d.mu.Lock there would never end, and neither would the leave.
func (d *Daemon) lockMu(ctx context.Context) error {
	for !d.mu.TryLock() {
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// followRotationSelf is the driver's own follower step, at once.
func (d *Daemon) followRotationSelf(ctx context.Context) error {
	if err := d.lockMu(ctx); err != nil {
		return err
	}
	defer d.mu.Unlock()
	if err := d.CheckServingLocked(); err != nil {
		return err
	}
	if h := d.followRotationHook; h != nil {
		h(ctx)
	}
	_, err := d.followRotationLocked(ctx)
	return err
}

// How often a manager reads the rotation record: idle, and while a
// rotation is in progress (each phase waits for every manager's look).
const (
	rotationPollIdle   = time.Second
	rotationPollActive = 100 * time.Millisecond
)

// followRotation runs on every active manager of a cluster: it follows
// the record of a master-key rotation (followRotationLocked).
func (d *Daemon) followRotation(ctx context.Context) {
	var resume resumeBackoff
	for {
		wait := rotationPollIdle
		if d.followRotationOnce(ctx) {
			wait = rotationPollActive
			// A record stands: resumed here if it has no driver
			// (clusterresume.go).
			d.resumeDriverless(ctx, &resume)
		}
		if sleepCtx(ctx, wait) != nil {
			return
		}
	}
}

// followRotationOnce is the follower loop's step, if mu is free (see
// followOnce); true while a rotation is in progress (or mu was busy).
func (d *Daemon) followRotationOnce(ctx context.Context) bool {
	if !d.mu.TryLock() {
		return true
	}
	defer d.mu.Unlock()
	if d.state != swarm.LocalNodeStateActive || d.mk.Key == nil || ctx.Err() != nil {
		return false
	}
	if h := d.followRotationHook; h != nil {
		h(ctx)
	}
	active, err := d.followRotationLocked(ctx)
	if err != nil {
		d.log.Warn("master key rotation: this manager's step failed; retrying", "err", err)
	}
	return active || err != nil
}

// followRotationLocked brings this manager to the phase the rotation
// record says, and acknowledges it (active: a record exists). Every step
// is idempotent.
func (d *Daemon) followRotationLocked(ctx context.Context) (active bool, err error) {
	kr := d.keys.Keyring()
	if kr == nil {
		return false, errdefs.Unavailable("%s", msgLocked)
	}
	rec, ok, err := getRotation(ctx, d.store)
	if err != nil {
		return false, err
	}
	if !ok {
		if d.rot.compactAfter != "" && d.rot.compactAfter == d.mk.ID {
			// The rotation this manager installed is over: the driver
			// compacted the store, and this member's own file keeps
			// the old revisions' pages until it is defragmented too.
			d.rot.compactAfter = ""
			if err := d.store.CompactAll(ctx); err != nil {
				d.log.Warn("master key rotation: compacting this member's store", "err", err)
			}
		}
		return false, d.dropStaleRotationLocked(ctx, kr)
	}
	if rec.Driver == d.nodeID && !d.rot.driving.Load() {
		// Restarted since it drove: no one drives here now; let any
		// manager's `hush key rotate` take over at once. Also when the
		// record names no manager yet (the driver stopped before it
		// named them): the others would otherwise be refused for as long
		// as this manager is up.
		rec.Driver = ""
		if err := putRotation(ctx, d.store, &rec); err != nil {
			return true, err
		}
	}
	if !slices.Contains(rec.Managers, d.nodeID) {
		return true, nil
	}
	if d.mk.ID == rec.New {
		// Installed already (a crash before the ack).
		_ = d.rotatingKey().Remove()
		if rec.Driver != d.nodeID {
			d.rot.compactAfter = rec.New
		}
		return true, d.writeRotationAck(ctx, rec.New, ackInstalled)
	}
	switch rec.Phase {
	case phasePrepare:
		if err := d.holdNewKeyLocked(ctx, kr, rec); err != nil {
			return true, err
		}
		if err := d.rotateStep(stepFollowKey, 0); err != nil {
			return true, err
		}
		return true, d.writeRotationAck(ctx, rec.New, ackPrepared)
	case phaseSeal:
		if err := d.sealUnderNewLocked(kr, rec); err != nil {
			return true, err
		}
		if err := d.rotateStep(stepFollowSealing, 0); err != nil {
			return true, err
		}
		return true, d.writeRotationAck(ctx, rec.New, ackSealing)
	case phaseInstall:
		if err := d.sealUnderNewLocked(kr, rec); err != nil {
			return true, err
		}
		if rec.Driver == d.nodeID && d.rot.driving.Load() {
			// The driver installs last, holding the old key until
			// nothing can need it (driveRotation).
			return true, d.writeRotationAck(ctx, rec.New, ackSealing)
		}
		if err := d.installRotatedLocked(ctx, rec, false); err != nil {
			return true, err
		}
		if err := d.rotateStep(stepFollowInstalled, 0); err != nil {
			return true, err
		}
		d.rot.compactAfter = rec.New
		return true, d.writeRotationAck(ctx, rec.New, ackInstalled)
	}
	return true, fmt.Errorf("master-key rotation record in an unknown phase %q: %w", rec.Phase, errdefs.ErrInternal)
}

// holdNewKeyLocked makes sure this manager holds the record's new key on
// disk (master.key.rotating, sealed under the current key) and in kr, to
// open with only.
func (d *Daemon) holdNewKeyLocked(ctx context.Context, kr *keyring.Keyring, rec rotationRecord) error {
	id, err := d.rotatingKey().ID()
	if err == nil && id == rec.New && kr.Holds(rec.New) {
		return nil
	}
	if err == nil && id != rec.New {
		// A dropped rotation's key, replaced by this one before this
		// manager looked while no record stood: dropped (file and
		// keyring) as such a look would have, so that its bytes do not
		// stay in key memory until the next activation.
		if err := d.dropStaleRotationLocked(ctx, kr); err != nil {
			return err
		}
	}
	next, err := d.rotatingKey().Load(kr)
	if err != nil || next.ID != rec.New {
		next.Destroy()
		if rec.NewKey == nil {
			return fmt.Errorf("master key rotation: this manager does not hold the new key %s and the record no longer carries it: %w", rec.New, errdefs.ErrInternal)
		}
		if next, err = kr.OpenKey(rec.New, *rec.NewKey); err != nil {
			return fmt.Errorf("master key rotation: opening the new key: %w", err)
		}
		if err := d.rotatingKey().Store(kr, next); err != nil {
			next.Destroy()
			return fmt.Errorf("master key rotation: %w", err)
		}
	}
	defer next.Destroy()
	return kr.Add(next)
}

// sealUnderNewLocked makes kr seal under the record's new key. The switch
// happens while no write of this manager's store is between its seal and
// its commit, so once it returns nothing this manager writes afterwards
// needs the old key (unless it copies an older inner seal: see the
// install's check).
func (d *Daemon) sealUnderNewLocked(kr *keyring.Keyring, rec rotationRecord) error {
	if id, err := kr.CurrentID(); err == nil && id == rec.New {
		return nil
	}
	next, err := d.rotatingKey().Load(kr)
	if err != nil {
		return fmt.Errorf("master key rotation: this manager's copy of the new key: %w", err)
	}
	defer next.Destroy()
	if next.ID != rec.New {
		return fmt.Errorf("master key rotation: this manager holds key %s, the rotation introduces %s: %w", next.ID, rec.New, errdefs.ErrInternal)
	}
	return d.store.Exclusive(func() error {
		kr.Rotate(next)
		if id, err := kr.CurrentID(); err != nil || id != next.ID {
			return fmt.Errorf("master key rotation: the keyring refused the new key: %w", err)
		}
		return nil
	})
}

// installRotatedLocked installs the record's new key in this manager's key
// files and forgets the old one (installFilesLocked), while no write is
// between seal and commit; final (the driver, last) first checks that
// nothing in the store needs the old key.
func (d *Daemon) installRotatedLocked(ctx context.Context, rec rotationRecord, final bool) error {
	kr := d.keys.Keyring()
	if kr == nil {
		return errdefs.Unavailable("%s", msgLocked)
	}
	if d.mk.ID == rec.New {
		return d.rotatingKey().Remove()
	}
	if err := d.sealUnderNewLocked(kr, rec); err != nil {
		return err
	}
	next, err := d.rotatingKey().Load(kr)
	if err != nil {
		return fmt.Errorf("master key rotation: this manager's copy of the new key: %w", err)
	}
	old := d.mk
	err = d.store.Exclusive(func() error {
		if err := d.rewrapBeforeForget(ctx, old.ID); err != nil {
			return err
		}
		if final {
			left, err := d.store.Referencing(ctx, old.ID)
			if err != nil {
				return fmt.Errorf("master key rotation: %w", err)
			}
			if left > 0 {
				return fmt.Errorf("master key rotation: %d values were written under the old key meanwhile; the old key is kept, retry the rotation: %w", left, errdefs.ErrUnavailable)
			}
		}
		// Under autolock, once its key is fetched, a plaintext master.key
		// is due to go, whether beside the locked file or only the
		// pending one still (this manager's key files are settling:
		// settleKeysLocked, from followUnlockKey): the new key must not
		// be written into it in the clear.
		if d.plainKey.Exists() {
			c, err := cluster.Get(ctx, d.store)
			if err != nil {
				return err
			}
			if c.Spec.EncryptionConfig.AutoLockManagers && c.UnlockKeyFetched {
				return errdefs.Unavailable("master key rotation: this manager's plaintext master.key has not been removed yet under autolock (its key files are settling); the new key is installed once it is gone")
			}
		}
		// A pending locked file (autolock enabled, its key fetched, this
		// manager's files not settled yet) would otherwise become the
		// locked key still wrapping the old master key.
		if d.nextKey().Exists() {
			c, err := cluster.Get(ctx, d.store)
			if err != nil {
				return err
			}
			recorded, err := c.UnlockKey(kr)
			if err != nil {
				return err
			}
			if c.Spec.EncryptionConfig.AutoLockManagers && recorded != "" {
				if err := d.nextKey().Store(next, recorded); err != nil {
					return fmt.Errorf("master key rotation: %w", err)
				}
			} else if err := d.nextKey().Remove(); err != nil {
				return err
			}
		}
		// The node key in member.json is sealed under the master key:
		// under the new one before the key files say it (a restart in
		// between opens it through the rotating file).
		if err := d.resealMemberLocked(kr, next.ID); err != nil {
			return err
		}
		if err := d.rotateStep(stepMemberResealed, 0); err != nil {
			return err
		}
		return d.installFilesLocked(ctx, kr, old, next, "")
	})
	if err != nil {
		if d.mk.ID != next.ID {
			next.Destroy()
		}
		return err
	}
	d.log.Info("master key rotation: this manager installed the new key", "keyID", next.ID)
	return nil
}

// dropStaleRotationLocked removes a rotating file no rotation needs: one
// whose rotation was dropped in prepare (nothing was sealed under its key)
// or finished, when no record stands or the next rotation's does
// (holdNewKeyLocked); a dropped rotation's key leaves kr with it.
func (d *Daemon) dropStaleRotationLocked(ctx context.Context, kr *keyring.Keyring) error {
	id, err := d.rotatingKey().ID()
	if errors.Is(err, keyring.ErrNoNextKey) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur, err := kr.CurrentID(); err == nil && cur == id && id != d.mk.ID {
		return fmt.Errorf("master key rotation: this manager seals under key %s, which no rotation record names and no key file holds: %w", id, errdefs.ErrInternal)
	}
	if id != d.mk.ID {
		// Only a key nothing is sealed under is dropped: a rotation is
		// deleted only once every manager installed its key, so this is
		// a dropped one's; the count makes sure of it.
		if n, err := d.store.Referencing(ctx, id); err != nil {
			return err
		} else if n > 0 {
			return fmt.Errorf("master key rotation: %d values are sealed under key %s of this manager's rotating file, which no rotation record names; the file is kept: %w", n, id, errdefs.ErrInternal)
		}
		if err := kr.Forget(id); err != nil {
			return err
		}
		d.log.Info("master key rotation: dropping the new key of a rotation that was dropped", "keyID", id)
	}
	return d.rotatingKey().Remove()
}

// resumeRotationAtStart makes a manager restarted during a rotation seal
// under the new key before it serves, if the record says so (kr loaded
// with its installed key and its rotating file).
func (d *Daemon) resumeRotationAtStart(ctx context.Context, kr *keyring.Keyring) error {
	if _, err := d.rotatingKey().ID(); errors.Is(err, keyring.ErrNoNextKey) {
		return nil
	}
	rec, ok, err := getRotation(ctx, d.store)
	if err != nil || !ok {
		return err
	}
	if rec.Phase == phasePrepare || !kr.Holds(rec.New) {
		return nil
	}
	return d.sealUnderNewLocked(kr, rec)
}

// resealMemberLocked seals this manager's node key in member.json under
// the key newID (kr's current key).
func (d *Daemon) resealMemberLocked(kr *keyring.Keyring, newID string) error {
	if d.member == nil || d.member.Key.KeyID == newID {
		return nil
	}
	ms := *d.member
	der, err := kr.Open(ms.Key, pki.NodeKeyAAD(d.nodeID))
	if err != nil {
		return fmt.Errorf("master key rotation: opening this manager's node key: %w", err)
	}
	sealed, err := kr.Seal(der, pki.NodeKeyAAD(d.nodeID))
	clear(der)
	if err != nil {
		return fmt.Errorf("master key rotation: sealing this manager's node key: %w", err)
	}
	if sealed.KeyID != newID {
		return fmt.Errorf("master key rotation: this manager seals under %s, not %s: %w", sealed.KeyID, newID, errdefs.ErrInternal)
	}
	ms.Key = sealed
	if err := d.saveMember(&ms); err != nil {
		return err
	}
	*d.member = ms
	return nil
}
