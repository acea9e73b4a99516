package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// Swarm's refusal of `swarm leave` on a manager, in its parts (moby's
// daemon/cluster Leave).
const (
	leaveManagerPrefix = "You are attempting to leave the swarm on a node that is participating as a manager. "
	leaveLastManager   = "Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. "
	leaveLossFormat    = "Removing this node leaves %v managers out of %v. Without a Raft quorum your swarm will be inaccessible. "
	leaveUnknown       = "Doing so may lose the consensus of your cluster. "
	leaveSuffix        = "The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message."
)

// leaveManagerText is Swarm's refusal of a manager's leave without
// --force, from the managers reachable and unreachable (this one
// included); ok false when the counts are unknown.
func leaveManagerText(reachable, unreachable int, ok bool) string {
	msg := leaveManagerPrefix
	switch {
	case !ok:
		msg += leaveUnknown
	case reachable == 1 && unreachable == 0:
		return msg + leaveLastManager
	case reachable-2 <= unreachable:
		msg += fmt.Sprintf(leaveLossFormat, reachable-1, reachable+unreachable)
	}
	return msg + leaveSuffix
}

// Failpoints of a manager's `swarm leave --force`, named for the step
// that has not happened yet (see failpoints.go).
const (
	fpLeaveMark   = "leave-mark"   // the leaving marker (leaving.json)
	fpLeaveRemove = "leave-remove" // another manager removes this member
	fpLeaveWipe   = "leave-wipe"   // containers, etcd data, master key, member.json
	fpLeaveUnmark = "leave-unmark" // the marker goes; the node is inactive
)

// leaveMarker is <data-dir>/leaving.json: written before this manager's
// member is removed, removed once its manager files are gone. A restart
// that finds it finishes the leave (leftWhileDown): the managers it names
// are asked again to remove the member (idempotent), and only a refusal
// keeps the node a member.
type leaveMarker struct {
	Managers []string `json:"managers"`
	// Removed says the member's removal was answered: a restart wipes
	// without asking again (the others may not answer then, and a member
	// whose etcd member is gone must not start again).
	Removed bool `json:"removed,omitempty"`
	// Locked marks the leave of a manager started locked
	// (leaveLockedMemberLocked): no member to remove, only the wipe.
	Locked bool `json:"locked,omitempty"`
}

func (d *Daemon) leavingPath() string { return filepath.Join(d.cfg.DataDir, "leaving.json") }

// leaveMemberLocked is `swarm leave` on a manager of an etcd cluster.
// Without --force it is Swarm's refusal. With --force the member leaves
// the etcd cluster first (another manager removes it, with the quorum
// check of a demotion: a removal that would lose quorum is refused and
// the node stays a member), then this node's manager state is wiped and
// it is inactive. The last voter has no one to remove it: its state is
// wiped, which erases the swarm (as Swarm's last manager's leave does).
func (d *Daemon) leaveMemberLocked(ctx context.Context, force bool) error {
	members := d.store.Members()
	if !force {
		reach, unreach, ok := 0, 0, false
		if members != nil {
			if list, err := members.List(ctx); err == nil {
				ok = true
				for _, m := range list {
					if m.Learner {
						continue
					}
					if m.Reachable {
						reach++
					} else {
						unreach++
					}
				}
			}
		}
		return errdefs.Unavailable("%s", leaveManagerText(reach, unreach, ok))
	}
	if members == nil {
		return errdefs.Unavailable("this manager is not a member of a cluster")
	}
	list, err := members.List(ctx)
	if err != nil {
		return err
	}
	remove := leaveNeedsRemoval(list, d.nodeID)
	addrs, err := d.managerAddrs(ctx)
	if err != nil {
		return err
	}
	addrs = slices.DeleteFunc(addrs, func(a string) bool { return a == d.listen.Advertise })
	if remove && len(addrs) == 0 {
		return errdefs.Unavailable("no other manager is recorded to remove this node's member")
	}
	if err := d.injected(fpLeaveMark); err != nil {
		return err
	}
	// The only voter has no member to remove: a restart just wipes.
	b, _ := json.Marshal(leaveMarker{Managers: addrs, Removed: !remove})
	if err := writeFileSync(d.leavingPath(), b, 0o600); err != nil {
		return fmt.Errorf("leave marker: %w", err)
	}
	if remove {
		if err := d.leaveMembership(ctx, addrs); err != nil {
			return err
		}
		b, _ := json.Marshal(leaveMarker{Managers: addrs, Removed: true})
		if err := writeFileSync(d.leavingPath(), b, 0o600); err != nil {
			// A restart asks the others again (idempotent).
			d.log.Warn("noting the member's removal in the leave marker", "err", err)
		}
	}
	return d.finishLeaveLocked(ctx)
}

// leaveNeedsRemoval says whether the leaving member self must be removed
// by another manager: every member but the cluster's only voter (a
// learner still joining is removed too, or it would stay a learner that
// blocks every later join until the sweep drops it).
func leaveNeedsRemoval(list []store.Member, self string) bool {
	voters, selfVoter := 0, false
	for _, m := range list {
		if m.Learner {
			continue
		}
		voters++
		if m.Name == self {
			selfVoter = true
		}
	}
	return !selfVoter || voters > 1
}

// leaveMembership asks another manager to remove this node's member.
// A refusal (quorum, Swarm's text) removes the marker: the node stays a
// member with its data. An answer lost is settled by asking this node's
// own member whether it is still listed; when even that cannot be told,
// the marker stays and a restart finishes the leave.
func (d *Daemon) leaveMembership(ctx context.Context, addrs []string) error {
	if err := d.injected(fpLeaveRemove); err != nil {
		return err // as a crash: the marker stays
	}
	v := syncView{cert: d.cert.Load(), clusterID: d.member.ClusterID, caPEM: d.member.CAPEM, addrs: addrs, listen: d.member.Listen}
	_, err := d.callSync(ctx, v, &syncRequest{Leave: true})
	if err == nil {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, still, lerr := d.store.Members().ByName(qctx, d.nodeID, "")
	cancel()
	switch {
	case lerr == nil && still:
		if rerr := os.Remove(d.leavingPath()); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			d.log.Warn("removing the leave marker", "err", rerr)
		}
		return fmt.Errorf("this manager's member was not removed: %w", err)
	case lerr == nil:
		d.log.Warn("leave: the removal's answer was lost but the member is gone", "err", err)
		return nil
	}
	return errdefs.Unavailable("leaving: whether this manager's member was removed is unknown (%v); restart hushd to finish the leave", err)
}

// finishLeaveLocked wipes a manager whose member is gone (or the last
// one): the runtime and the join/CA service stop, the task containers and
// their tmpfs go, the store closes, the node key is kept as the join key
// (a later join under this node's ID is admitted with it), the etcd data,
// the master key and member.json go (member.json last), then the marker;
// an empty lone store is opened and the node is inactive.
func (d *Daemon) finishLeaveLocked(ctx context.Context) error {
	d.stopRuntime()
	if d.engine != nil {
		d.removeTaskContainers(ctx)
	}
	// A no-op after Leave's stop; a wait with d.mu released otherwise.
	d.stopJoinServiceLocked()
	d.closeStoreLocked()
	// After the store's close, which stops its networks manager: it
	// realises every network of the store and would bring them back.
	d.pruneOwnBridges(ctx)
	if d.lockedMember != nil {
		// Its store was a scratch one; the member's data is wiped next.
		d.lockedMember = nil
		if err := os.RemoveAll(d.scratchStoreDir()); err != nil {
			d.log.Warn("removing the locked manager's scratch store", "err", err)
		}
	}
	if err := d.wipeLeftManager(); err != nil {
		return err
	}
	d.dropKeyring()
	d.mk.Destroy()
	d.mk = keyring.MasterKey{}
	d.pendingKey.Store(pendingNone)
	d.spec.orch.Store(nil)
	d.member, d.nodeKey = nil, nil
	d.cert.Store(nil)
	if err := d.openStoreLocked(ctx, nil); err != nil {
		return err
	}
	d.state = swarm.LocalNodeStateInactive
	d.log.Info("left the swarm (manager); this node's member was removed and its state wiped")
	return nil
}

// wipeLeftManager is the file part of finishLeaveLocked (also run at
// start by leftWhileDown).
func (d *Daemon) wipeLeftManager() error {
	if err := d.injected(fpLeaveWipe); err != nil {
		return err
	}
	if d.nodeKey != nil {
		if err := writeKeyFile(d.joinKeyPath(), d.nodeKey); err != nil {
			d.log.Warn("keeping the node key for a later join", "err", err)
		}
	}
	// member.json first: the marker finishes the rest at a restart, and a
	// member.json left without its master key would stop that restart
	// ("its master key is missing").
	if err := os.Remove(d.memberPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("member state: %w", err)
	}
	if err := d.wipeManagerFiles(); err != nil {
		return err
	}
	_ = os.Remove(d.tuningPath())
	_ = os.Remove(d.crlPath())
	d.removeRotationFiles()
	if err := d.injected(fpLeaveUnmark); err != nil {
		return err
	}
	if err := os.Remove(d.leavingPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("leave marker: %w", err)
	}
	return nil
}

// leftWhileDown finishes, at start, a leave a crash interrupted (the
// marker is there). Without member.json the wipe had ended: only the
// marker goes. Otherwise the managers the marker names are asked again to
// remove this member (idempotent: a member already gone is success);
// removed, the files are wiped and the node starts inactive. A refusal
// (quorum) or no answer keeps it a member with its data, and the marker
// goes: the user asked to leave and may ask again.
func (d *Daemon) leftWhileDown(ctx context.Context) (bool, error) {
	b, err := os.ReadFile(d.leavingPath())
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("leave marker: %w", err)
	}
	var lm leaveMarker
	_ = json.Unmarshal(b, &lm)
	if d.member == nil && (d.lockedMember == nil || lm.Locked || lm.Removed) {
		// member.json is gone (the wipe had begun), the leave of a
		// locked manager (which removes no member) stopped, or the
		// member's removal was answered and the node came back locked:
		// its etcd member is gone, so no unlock could start it again.
		d.log.Warn("finishing an interrupted leave: wiping the manager state")
		d.lockedMember = nil
		if err := os.RemoveAll(d.scratchStoreDir()); err != nil {
			d.log.Warn("removing the locked manager's scratch store", "err", err)
		}
		return true, d.wipeLeftManager()
	}
	if d.member == nil {
		// Started locked: its sealed node key cannot ask the others to
		// remove its member. It stays a (locked) member; the user may
		// leave again (with --force, the locked manager's leave).
		d.log.Warn("an interrupted leave could not be finished: this manager is locked; staying a member")
		if err := os.Remove(d.leavingPath()); err != nil {
			return false, fmt.Errorf("leave marker: %w", err)
		}
		return false, nil
	}
	ms, key := d.member, d.nodeKey
	if len(lm.Managers) > 0 && !lm.Removed { // else removed, or the last voter
		cert, err := pki.TLSCertificate([]byte(ms.CertPEM), key)
		if err != nil {
			return false, err
		}
		v := syncView{cert: cert, clusterID: ms.ClusterID, caPEM: ms.CAPEM, addrs: lm.Managers, listen: ms.Listen}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = d.callSync(qctx, v, &syncRequest{Leave: true})
		cancel()
		if err != nil {
			d.log.Warn("an interrupted leave could not be finished: staying a member", "err", err)
			if err := os.Remove(d.leavingPath()); err != nil {
				return false, fmt.Errorf("leave marker: %w", err)
			}
			return false, nil
		}
	}
	d.log.Warn("finishing an interrupted leave")
	if err := d.wipeLeftManager(); err != nil {
		return false, err
	}
	d.member, d.nodeKey = nil, nil
	d.cert.Store(nil)
	return true, nil
}

// removeLeavingMember is the manager's side of a manager's leave: its
// member is removed with the quorum check of a demotion (Swarm's
// refusals); a member already gone is success.
func (d *Daemon) removeLeavingMember(ctx context.Context, id pki.Identity) error {
	if id.Role != pki.RoleManager {
		return errdefs.BadRequest("only a manager's certificate can leave the managers' cluster")
	}
	if id.NodeID == d.nodeID {
		return errdefs.Unavailable("a manager does not remove its own member: ask another manager")
	}
	members := d.store.Members()
	m, ok, err := members.ByName(ctx, id.NodeID, "")
	if err != nil || !ok {
		return err
	}
	if err := members.Remove(ctx, m.ID); err != nil {
		return err
	}
	d.log.Info("leaving manager's member removed", "node", id.NodeID, "member", m.ID)
	return nil
}
