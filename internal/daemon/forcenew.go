package daemon

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// `docker swarm init --force-new-cluster` on a manager of a cluster of
// managers: the recovery after the cluster lost its quorum for good (it is
// also allowed with the quorum, as in Swarm). The manager restarts its
// etcd member from its own data as a cluster of itself (etcd's
// force-new-cluster: every other member is removed from the membership),
// keeping the cluster ID, CA, tokens and every object, and becomes the
// swarm's only manager.
//
// The sequence, each step behind a failpoint named for it:
//
//  1. fpForceNewMark: member.json records ForceNew (fsynced). This is the
//     commit point: before it a crash leaves the node as it was (pending,
//     its data untouched); from it on a restart forces the new cluster
//     (loadMember starts the member with ForceNewCluster) and finishes.
//  2. fpForceNewRestart: the store is closed and reopened as a cluster of
//     this member alone; activation as at start.
//  3. fpForceNewRecord: the other managers' node records are noted as
//     dropped (table "forcenew": by whom, when).
//  4. fpForceNewUnmark: member.json loses the mark; the managers this one
//     knows are itself.
//
// The dropped managers' node records stay, with their role, as Swarm keeps
// them: `node ls` shows them Down with no manager status, and `docker node
// rm` removes them. A dropped manager that comes back is told so by this
// manager when it asks for its role (syncNode): it then refuses to start
// its old etcd member and hushd stops with droppedText, rather than rejoin
// silently or let two old managers form the old cluster again.
const (
	fpForceNewMark    = "forcenew-mark"
	fpForceNewRestart = "forcenew-restart"
	fpForceNewRecord  = "forcenew-record"
	fpForceNewUnmark  = "forcenew-unmark"
)

// droppedTable lists the managers a force-new-cluster dropped.
const droppedTable = "forcenew"

type droppedRecord struct {
	By string    `json:"by"`
	At time.Time `json:"at"`
}

// droppedCheck is how often a pending manager asks the others whether a
// force-new-cluster dropped it.
const droppedCheck = 5 * time.Second

// msgForceNewAutolock refuses --autolock with a force-new-cluster on a
// manager of a cluster of managers, naming what works instead.
const msgForceNewAutolock = "hush does not take --autolock together with --force-new-cluster on a manager of a cluster of managers: recover first, then run `docker swarm update --autolock=true`"

// msgForceNewLearner refuses a force-new-cluster on a manager whose etcd
// member never became a voter.
const msgForceNewLearner = "this manager is not a voting member of its cluster yet (its join or promotion had not finished when the quorum was lost): its data may lack the swarm's writes; run docker swarm init --force-new-cluster on a manager that was a voting member"

// forceNewMember runs a force-new-cluster on a manager of a cluster of
// managers; handled is false for any other node (the lone node's path,
// forceNewClusterLocked, or a refusal by initLocked).
func (d *Daemon) forceNewMember(ctx context.Context, req swarm.InitRequest, caKey []byte) (id string, handled bool, err error) {
	d.mu.Lock()
	member := d.member != nil && d.worker == nil && d.cfg.External == nil
	voter := member && d.store.Members().VotesLocally()
	d.mu.Unlock()
	if !member {
		return "", false, nil
	}
	// Refusals first: nothing is changed by a request refused.
	netw, err := cluster.ValidateInit(&req, d.cfg.AdvertiseAddr)
	if err != nil {
		return "", true, err
	}
	if err := d.forceNewKeepsAddrs(req, netw); err != nil {
		return "", true, err
	}
	if req.AutoLockManagers || req.Spec.EncryptionConfig.AutoLockManagers {
		// The recovery and an autolock change are each a crash-safe
		// sequence of their own; one call does not chain them.
		return "", true, errdefs.BadRequest("%s", msgForceNewAutolock)
	}
	if !voter {
		// etcd would make a cluster without a voter (raft panics at every
		// start) or of data that lacks the cluster's writes.
		return "", true, errdefs.BadRequest("%s", msgForceNewLearner)
	}
	// A pending member's wait for the quorum ends: the recovery replaces
	// it (and a quorum that came meanwhile made the member active).
	d.stopQuorumWait()
	pending := d.noQuorum.Load()
	if err := d.forceRestartMember(ctx, pending); err != nil {
		return "", true, err
	}
	if pending {
		// As at start: resume, activation, the join/CA service, and the
		// end of the recovery (a step of startSteps).
		if err := d.startServing(ctx, true); err != nil {
			return "", true, fmt.Errorf("%s: %w", msgForceNewInterrupted, err)
		}
		d.noQuorum.Store(false)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.finishForceNewLocked(ctx); err != nil {
		return "", true, fmt.Errorf("%s: %w", msgForceNewInterrupted, err)
	}
	// The request's spec fields, as on a lone node.
	id, err = d.forceNewClusterLocked(ctx, req, caKey)
	return id, true, err
}

// msgForceNewUnfinished refuses a manager's admission while a recovery is
// unfinished: a restart finishing it would remove the new member again.
const msgForceNewUnfinished = "a docker swarm init --force-new-cluster on this manager is unfinished: restart its hushd to finish it, then join or promote managers"

// refuseWhileForceNew refuses a new manager (a join or a promotion) while a
// recovery is unfinished: the restart that finishes it forces the new
// cluster again, which would remove the new member, and notes every other
// manager's record as dropped.
func (d *Daemon) refuseWhileForceNew() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.member != nil && d.member.ForceNew {
		return errdefs.Unavailable("%s", msgForceNewUnfinished)
	}
	return nil
}

// msgForceNewInterrupted prefixes an error after the commit point.
const msgForceNewInterrupted = "force-new-cluster interrupted after its commit point; restarting hushd finishes it"

// forceRestartMember marks the recovery (the commit point) and reopens the
// store as a cluster of this member; an active member is activated again.
func (d *Daemon) forceRestartMember(ctx context.Context, pending bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state == swarm.LocalNodeStateLocked {
		return errdefs.Unavailable("%s", msgNotManager)
	}
	active := !pending && d.state == swarm.LocalNodeStateActive
	if err := d.injected(fpForceNewMark); err != nil {
		d.rewaitQuorum(pending)
		return err
	}
	ms := *d.member
	ms.ForceNew = true
	if err := d.saveMember(&ms); err != nil {
		d.rewaitQuorum(pending)
		return err
	}
	d.member.ForceNew = true
	d.log.Warn("force-new-cluster: restarting this manager's etcd member from its own data as a cluster of itself; the other managers are dropped")
	if err := d.injected(fpForceNewRestart); err != nil {
		return err
	}
	mc, err := d.memberConfig(d.member, d.nodeKey)
	if err != nil {
		return err
	}
	if err := d.reopenStore(ctx, mc, false); err != nil {
		return fmt.Errorf("%s: %w", msgForceNewInterrupted, err)
	}
	if err := d.awaitQuorum(ctx); err != nil {
		return fmt.Errorf("%s: %w", msgForceNewInterrupted, err)
	}
	if active {
		if err := d.activateLocked(d.mk); err != nil {
			return fmt.Errorf("%s: %w", msgForceNewInterrupted, err)
		}
	}
	return nil
}

// rewaitQuorum starts the pending member's wait again after a refusal
// before the commit point.
func (d *Daemon) rewaitQuorum(pending bool) {
	if pending && d.noQuorum.Load() {
		d.serveOnQuorum()
	}
}

// stopQuorumWait ends serveOnQuorum's wait, if it runs.
func (d *Daemon) stopQuorumWait() {
	if d.quorumStop != nil {
		d.quorumStop()
		d.quorumDone.Wait()
	}
}

// finishForceNewStep is startSteps' step that ends a recovery a restart
// resumed (member.json still marked).
func (d *Daemon) finishForceNewStep(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.member == nil || !d.member.ForceNew || d.state != swarm.LocalNodeStateActive {
		return nil
	}
	return d.finishForceNewLocked(ctx)
}

// finishForceNewLocked notes every other manager as dropped and clears
// the mark; a no-op once done. Both writes are idempotent, so a crash
// between them is finished by the restart.
func (d *Daemon) finishForceNewLocked(ctx context.Context) error {
	if d.member == nil || !d.member.ForceNew {
		return nil
	}
	if err := d.injected(fpForceNewRecord); err != nil {
		return err
	}
	recs, err := nodes.List(ctx, d.store)
	if err != nil {
		return err
	}
	val, _ := json.Marshal(droppedRecord{By: d.nodeID, At: time.Now().UTC()})
	var dropped []string
	t := d.store.Table(droppedTable)
	for _, n := range recs {
		if n.ID == d.nodeID || n.Spec.Role != swarm.NodeRoleManager {
			continue
		}
		if _, err := t.Get(ctx, n.ID); err == nil {
			// Noted by the run a crash interrupted: its time stays.
			dropped = append(dropped, n.ID)
			continue
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if _, err := t.Create(ctx, n.ID, "", val); err != nil && !errors.Is(err, store.ErrNameTaken) {
			return err
		}
		dropped = append(dropped, n.ID)
	}
	if err := d.injected(fpForceNewUnmark); err != nil {
		return err
	}
	ms := *d.member
	ms.ForceNew = false
	ms.Managers = []string{d.listen.Advertise}
	if err := d.saveMember(&ms); err != nil {
		return err
	}
	d.member.ForceNew, d.member.Managers = false, ms.Managers
	d.log.Warn("force-new-cluster done: this manager is the swarm's only manager; the dropped managers must not start from their old data",
		"cluster", ms.ClusterID, "dropped", dropped)
	return nil
}

// droppedAt reports whether a force-new-cluster dropped the manager
// nodeID while it held the certificate leaf (a manager that joined again
// since holds a later one), and by whom and when, as st (the store the
// caller's request took) records it.
func (d *Daemon) droppedAt(ctx context.Context, st *store.Store, nodeID string, leaf *x509.Certificate) (droppedRecord, bool, error) {
	o, err := st.Table(droppedTable).Get(ctx, nodeID)
	if errors.Is(err, store.ErrNotFound) {
		return droppedRecord{}, false, nil
	}
	if err != nil {
		return droppedRecord{}, false, err
	}
	var r droppedRecord
	if err := json.Unmarshal(o.Value, &r); err != nil {
		return droppedRecord{}, false, errors.Join(errdefs.ErrInternal, err)
	}
	if leaf != nil && leaf.NotBefore.Add(pki.Backdate).Truncate(time.Second).After(r.At) {
		return r, false, nil
	}
	return r, true, nil
}

// droppedText is what a dropped manager logs as it stops.
func droppedText(nodeID string, r droppedRecord) string {
	return fmt.Sprintf("this manager (node %s) was dropped from its swarm by `docker swarm init --force-new-cluster` on node %s at %s; "+
		"its data is of the swarm as it was before, and starting from it could split the swarm, so hushd will not: "+
		"keep its data dir as a backup if you wish, start hushd with an empty data dir and join again with `docker swarm join --token <token>`",
		nodeID, r.By, r.At.Format(time.RFC3339))
}

// errDropped is a dropped manager's fatal error.
var errDropped = errors.New("dropped by force-new-cluster")

// droppedErr turns a sync answer's Dropped into the fatal error.
func droppedErr(text string) error {
	return fmt.Errorf("%w: %s", errDropped, text)
}

// watchDropped runs while a member waits for its quorum: it asks the other
// managers, every droppedCheck, whether a force-new-cluster dropped it
// (its etcd member then never gets a quorum again), and stops hushd if so.
func (d *Daemon) watchDropped(ctx context.Context) {
	d.mu.Lock()
	ms, key := d.member, d.nodeKey
	d.mu.Unlock()
	if ms == nil || key == nil {
		return
	}
	cert, err := pki.TLSCertificate([]byte(ms.CertPEM), key)
	if err != nil {
		return
	}
	addrs := slices.DeleteFunc(slices.Clone(ms.Managers), func(a string) bool { return a == ms.Listen.Advertise })
	if len(addrs) == 0 {
		return
	}
	v := syncView{cert: cert, clusterID: ms.ClusterID, caPEM: ms.CAPEM, addrs: addrs, listen: ms.Listen}
	for d.noQuorum.Load() {
		qctx, cancel := context.WithTimeout(ctx, droppedCheck)
		ans, err := d.callSync(qctx, v, &syncRequest{})
		cancel()
		if err == nil && ans.Dropped != "" {
			d.log.Error(ans.Dropped)
			select {
			case d.errc <- droppedErr(ans.Dropped):
			default:
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(droppedCheck):
		}
	}
}

// stopDropped is an active manager's end once it learns a force-new-cluster
// elsewhere dropped it (its etcd member is refused by the new cluster's):
// the runtime stops, and hushd with the fatal error.
func (d *Daemon) stopDropped(text string) error {
	d.log.Error(text)
	d.stopRuntime()
	select {
	case d.errc <- droppedErr(text):
	default:
	}
	return nil
}

// droppedAnswer is the node sync's answer to a manager a force-new-cluster
// dropped (ok false for any other node, or when this manager cannot tell).
func (d *Daemon) droppedAnswer(ctx context.Context, id pki.Identity, leaf *x509.Certificate) (*joinResponse, bool) {
	st := d.curStore()
	if id.Role != pki.RoleManager || d.CheckServing() != nil || st.Members() == nil {
		return nil, false
	}
	r, dropped, err := d.droppedAt(ctx, st, id.NodeID, leaf)
	if err != nil || !dropped {
		return nil, false
	}
	c, err := cluster.Get(ctx, st)
	if err != nil {
		return nil, false
	}
	d.log.Warn("a manager dropped by force-new-cluster came back: told to stop", "node", id.NodeID)
	return &joinResponse{ClusterID: c.ID, Dropped: droppedText(id.NodeID, r)}, true
}

// droppedSet lists the dropped managers (empty if the list cannot be
// read: node ls then shows them as recorded managers).
func (d *Daemon) droppedSet(ctx context.Context, st *store.Store) map[string]bool {
	objs, err := st.Table(droppedTable).List(ctx)
	if err != nil {
		return nil
	}
	out := make(map[string]bool, len(objs))
	for _, o := range objs {
		out[o.ID] = true
	}
	return out
}

// droppedNotMember reports whether the manager nodeID was dropped and is
// not an etcd member now: Swarm's `node rm` takes a manager that is not a
// raft member without a demotion.
func (d *Daemon) droppedNotMember(ctx context.Context, st *store.Store, nodeID string) bool {
	if _, dropped, err := d.droppedAt(ctx, st, nodeID, nil); err != nil || !dropped {
		return false
	}
	m := st.Members()
	if m == nil {
		return false
	}
	_, ok, err := m.ByName(ctx, nodeID, "")
	return err == nil && !ok
}

// forceNewKeepsAddrs refuses, by name, a listen or advertise address on a
// force-new-cluster that differs from the node's own: Swarm restarts the
// node on the new addresses (its way to move a manager), which hush does
// not do; accepting and ignoring them would leave the user believing the
// manager moved. The docker CLI always sends its default listen address,
// which means "not given".
func (d *Daemon) forceNewKeepsAddrs(req swarm.InitRequest, netw cluster.Network) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.forceNewAddrsLocked(req, netw)
}

func (d *Daemon) forceNewAddrsLocked(req swarm.InitRequest, netw cluster.Network) error {
	cur := d.listen
	if strings.TrimPrefix(req.ListenAddr, "tcp://") != cliDefaultListen && netw.ListenAddr != cur.Listen {
		return errdefs.BadRequest("ListenAddr %s: hush does not move a manager to another listen address with --force-new-cluster (this node listens on %q); leave it out", req.ListenAddr, cur.Listen)
	}
	adv, own := netw.AdvertiseAddr, cur.Advertise
	if _, _, err := net.SplitHostPort(req.AdvertiseAddr); err != nil {
		// No port asked: the one ValidateInit supplied (the CLI's listen
		// port, 2377) is not the node's to compare.
		adv, _, _ = net.SplitHostPort(adv)
		own, _, _ = net.SplitHostPort(own)
	}
	if req.AdvertiseAddr != "" && adv != own {
		return errdefs.BadRequest("AdvertiseAddr %s: hush does not move a manager to another advertise address with --force-new-cluster (this node advertises %q); leave it out", req.AdvertiseAddr, cur.Advertise)
	}
	return nil
}
