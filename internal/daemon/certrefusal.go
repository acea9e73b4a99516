package daemon

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
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

// Refused manager certificates at etcd's TLS (see docs/DESIGN.md,
// "Removing nodes, leaving"). etcd's peer and client listeners accept any
// unexpired manager certificate of the cluster CA; the only per-connection
// refusal etcd supports is a revocation list of serial numbers
// (store.Members.SetCRL). So every manager certificate's serial is
// recorded in the store when it is issued (and by each manager for the
// certificate it holds, which covers certificates issued before this
// table existed), and each manager keeps its member's list current with
// the serials of the certificates a removal or a demotion refuses.

// managerCertsTable maps a manager certificate's serial (hex) to its node
// and validity.
const managerCertsTable = "managercerts"

type managerCertRecord struct {
	Node      string    `json:"node"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	// Demoted marks a certificate its node held (or was issued) before a
	// demotion: it stays refused by serial when the node is promoted
	// again, whose new manager certificate is another serial.
	Demoted bool `json:"demoted,omitempty"`
	// Held marks a certificate its node has taken into use as a manager:
	// recorded by that node itself once it is active under it
	// (keepEtcdCRL). From then on the worker certificates the node was
	// issued before it are refused (refuseWorkerCert): its promotion is
	// complete. A promotion's certificate not held yet (its answer lost,
	// the node still starting its member) refuses nothing, since the
	// node asks again under its worker certificate.
	Held bool `json:"held,omitempty"`
}

// Upkeep of the table, per pass of keepEtcdCRL. A record is pruned once
// its certificate has been expired for certPruneGrace: etcd refuses an
// expired certificate itself, so the list need not name it, and the
// grace covers a peer whose clock is behind this manager's by up to the
// skew certificates are backdated for. maxCertWritesPerPass bounds the
// writes (prunes and demotion marks) of one pass, so a backlog (a
// cluster upgraded with years of records) is worked off over passes
// without holding up the list.
const (
	certPruneGrace       = pki.Backdate
	maxCertWritesPerPass = 64
)

// crlPeriod is how often a manager reads the refusals for its member's
// list; crlValidity is the list's NextUpdate (etcd does not read it).
const (
	crlPeriod   = 2 * time.Second
	crlValidity = 7 * 24 * time.Hour
)

// recordManagerCert records leaf (a manager certificate of nodeID);
// recording it again changes nothing.
func recordManagerCert(ctx context.Context, st *store.Store, nodeID string, leaf *x509.Certificate) error {
	val, _ := json.Marshal(managerCertRecord{Node: nodeID, NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC()})
	_, err := st.Table(managerCertsTable).Create(ctx, leaf.SerialNumber.Text(16), "", val)
	if errors.Is(err, store.ErrNameTaken) {
		return nil
	}
	return err
}

// recordHeldCert records leaf as the manager certificate nodeID holds and
// is active under: created held, or its record (made at its issue, or
// before Held was kept) marked held. A record changed meanwhile is left
// to the caller's next pass.
func recordHeldCert(ctx context.Context, st *store.Store, nodeID string, leaf *x509.Certificate) error {
	// First the node record's key (a promotion's issue leaves it the
	// worker certificate's, for the promotion asked again): once held,
	// no worker certificate has it.
	if err := nodes.SetKeyFP(ctx, st, nodeID, keyFP(leaf)); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	t := st.Table(managerCertsTable)
	serial := leaf.SerialNumber.Text(16)
	val, _ := json.Marshal(managerCertRecord{Node: nodeID, NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), Held: true})
	_, err := t.Create(ctx, serial, "", val)
	if !errors.Is(err, store.ErrNameTaken) {
		return err
	}
	o, err := t.Get(ctx, serial)
	if err != nil {
		return err
	}
	var r managerCertRecord
	if err := json.Unmarshal(o.Value, &r); err != nil {
		return fmt.Errorf("manager certificate record %s: %w", serial, err)
	}
	if r.Node != nodeID {
		return fmt.Errorf("manager certificate record %s names node %s, not this one", serial, r.Node)
	}
	if r.Held {
		return nil
	}
	r.Held = true
	val, _ = json.Marshal(r)
	_, err = t.Update(ctx, o.ID, o.ModRev, val)
	return err
}

// noteIssued records a manager certificate just issued (issue).
func (d *Daemon) noteIssued(iss *pki.Issued, nodeID string, role pki.Role) error {
	if role != pki.RoleManager {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := recordManagerCert(ctx, d.curStore(), nodeID, iss.Leaf); err != nil {
		return fmt.Errorf("recording the manager certificate: %w", err)
	}
	return nil
}

// markDemoted revokes by serial every manager certificate recorded for
// nodeID: called once its demotion is written, so that a promotion later
// (a new manager certificate, another serial) does not make the ones it
// held as a manager before acceptable to etcd again. A certificate
// issued concurrently (a renewal that read the role before the demotion)
// is marked by keepEtcdCRL's next pass while the node is a worker.
func markDemoted(ctx context.Context, st *store.Store, nodeID string) error {
	objs, err := st.Table(managerCertsTable).List(ctx)
	if err != nil {
		return err
	}
	for _, o := range objs {
		var r managerCertRecord
		if json.Unmarshal(o.Value, &r) != nil || r.Node != nodeID || r.Demoted {
			continue
		}
		if err := setDemoted(ctx, st, o, r); err != nil {
			return err
		}
	}
	return nil
}

// setDemoted marks one record; a record changed or pruned meanwhile is
// left to the next pass.
func setDemoted(ctx context.Context, st *store.Store, o store.Object, r managerCertRecord) error {
	r.Demoted = true
	val, _ := json.Marshal(r)
	_, err := st.Table(managerCertsTable).Update(ctx, o.ID, o.ModRev, val)
	if errors.Is(err, store.ErrStale) || errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// noteDemoted is markDemoted for the daemon's demotion paths, in st (the
// store the caller's request took: curStore): a failure is logged, and
// keepEtcdCRL marks the records while the node is a worker.
func (d *Daemon) noteDemoted(ctx context.Context, st *store.Store, nodeID string) {
	if err := markDemoted(ctx, st, nodeID); err != nil {
		d.log.Warn("demotion: revoking the node's manager certificates by serial failed; the next revocation pass retries", "node", nodeID, "err", err)
	}
}

// revokedByDemotion refuses, at the join/CA service, a manager
// certificate its demotion revoked (marked demoted) once its node is
// recorded as a manager again: etcd refuses it by serial, and renewed
// here it would buy a manager certificate of a new serial that etcd
// accepts, undoing the revocation (and a leave request under it would
// remove the node's member). While the node is recorded as a worker the
// certificate is still served: it is how the demoted node gets its
// worker certificate. n is the node's record.
func (d *Daemon) revokedByDemotion(ctx context.Context, id pki.Identity, leaf *x509.Certificate, n nodes.Node) error {
	if id.Role != pki.RoleManager || n.Spec.Role != swarm.NodeRoleManager {
		return nil
	}
	o, err := d.store.Table(managerCertsTable).Get(ctx, leaf.SerialNumber.Text(16))
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var r managerCertRecord
	if json.Unmarshal(o.Value, &r) != nil || !r.Demoted || r.Node != id.NodeID {
		return nil
	}
	return errdefs.Unauthorized("node %s's manager certificate (serial %s) was revoked by its demotion: use the certificate it was issued since", id.NodeID, o.ID)
}

// refuseManagerCert is the dispatcher's check of a manager certificate
// (dispatchnet.ServerConfig.RefuseManager), on every call made under one:
// it is served only while its node is recorded as a manager and etcd does
// not refuse it by serial (refusedManagerSerials), so a demoted or
// removed node's old manager certificate, or one held before a demotion
// by a node promoted again, relays no logs and opens no session as its
// node (whose assignments carry its tasks' secrets). A worker agent calls
// with its worker certificate; a manager's agent is in-process.
func (d *Daemon) refuseManagerCert(ctx context.Context, nodeID string, leaf *x509.Certificate) error {
	// curStore: the dispatcher's handlers outlive the runtime's stop, so
	// a store swap does not wait for this read.
	st := d.curStore()
	n, err := nodes.Get(ctx, st, nodeID)
	if errors.Is(err, store.ErrNotFound) {
		return errdefs.Unauthorized("node %s is not part of this swarm", nodeID)
	}
	if err != nil {
		return err
	}
	if n.Spec.Role != swarm.NodeRoleManager {
		return errdefs.Unauthorized("node %s is not a manager of this swarm: its manager certificate is refused", nodeID)
	}
	serials, err := refusedManagerSerials(ctx, st, time.Now())
	if err != nil {
		return err
	}
	if slices.ContainsFunc(serials, func(s *big.Int) bool { return s.Cmp(leaf.SerialNumber) == 0 }) {
		return errdefs.Unauthorized("node %s's manager certificate (serial %s) is revoked", nodeID, leaf.SerialNumber.Text(16))
	}
	return nil
}

// tendManagerCerts is one pass of the table's upkeep: it prunes records
// of certificates expired for certPruneGrace and marks the certificates
// of nodes recorded as workers as demoted, at most maxCertWritesPerPass
// writes in all. It returns how many records it pruned and marked.
func tendManagerCerts(ctx context.Context, st *store.Store, now time.Time) (pruned, marked int, err error) {
	t := st.Table(managerCertsTable)
	objs, err := t.List(ctx)
	if err != nil || len(objs) == 0 {
		return 0, 0, err
	}
	var role map[string]swarm.NodeRole
	for _, o := range objs {
		if pruned+marked >= maxCertWritesPerPass {
			break
		}
		var r managerCertRecord
		if json.Unmarshal(o.Value, &r) != nil {
			// Not a record this daemon wrote: it refuses nothing, and is
			// pruned with the others.
			r = managerCertRecord{}
		}
		if !r.NotAfter.Add(certPruneGrace).After(now) {
			err := t.Delete(ctx, o.ID, "", o.ModRev, nil)
			if err != nil && !errors.Is(err, store.ErrStale) && !errors.Is(err, store.ErrNotFound) {
				return pruned, marked, err
			}
			pruned++
			continue
		}
		if r.Demoted {
			continue
		}
		if role == nil {
			recs, err := nodes.List(ctx, st)
			if err != nil {
				return pruned, marked, err
			}
			role = make(map[string]swarm.NodeRole, len(recs))
			for _, n := range recs {
				role[n.ID] = n.Spec.Role
			}
		}
		if role[r.Node] == swarm.NodeRoleWorker {
			if err := setDemoted(ctx, st, o, r); err != nil {
				return pruned, marked, err
			}
			marked++
		}
	}
	return pruned, marked, nil
}

// refusedManagerSerials are the serials of unexpired manager certificates
// that etcd must refuse: those of a removed node issued up to its removal
// (the dispatcher's rule, removedCache) or of a manager a force-new-cluster
// dropped issued up to the drop, every one of a node recorded as a worker,
// and every one marked demoted (markDemoted): a node promoted again holds
// a new manager certificate, and the ones it held before its demotion
// stay refused until they expire.
func refusedManagerSerials(ctx context.Context, st *store.Store, now time.Time) ([]*big.Int, error) {
	objs, err := st.Table(managerCertsTable).List(ctx)
	if err != nil {
		return nil, err
	}
	if len(objs) == 0 {
		return nil, nil
	}
	recs, err := nodes.List(ctx, st)
	if err != nil {
		return nil, err
	}
	role := map[string]swarm.NodeRole{}
	for _, n := range recs {
		role[n.ID] = n.Spec.Role
	}
	removed, err := nodes.Removed(ctx, st)
	if err != nil {
		return nil, err
	}
	// A force-new-cluster's dropped managers are no members of the new
	// cluster: the certificates they held then are refused (droppedAt's
	// rule; one that joined again holds a later one).
	droppedObjs, err := st.Table(droppedTable).List(ctx)
	if err != nil {
		return nil, err
	}
	dropped := make(map[string]time.Time, len(droppedObjs))
	for _, o := range droppedObjs {
		var r droppedRecord
		if json.Unmarshal(o.Value, &r) == nil {
			dropped[o.ID] = r.At
		}
	}
	var out []*big.Int
	for _, o := range objs {
		var r managerCertRecord
		if json.Unmarshal(o.Value, &r) != nil || !r.NotAfter.After(now) {
			continue
		}
		refused := r.Demoted || role[r.Node] == swarm.NodeRoleWorker
		issued := r.NotBefore.Add(pki.Backdate).Truncate(time.Second)
		if at, ok := removed[r.Node]; ok && !issued.After(at) {
			refused = true
		}
		if at, ok := dropped[r.Node]; ok && !issued.After(at) {
			refused = true
		}
		if !refused {
			continue
		}
		s, ok := new(big.Int).SetString(o.ID, 16)
		if ok {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *big.Int) int { return a.Cmp(b) })
	return out, nil
}

// keepEtcdCRL runs while this manager is active: it records the
// certificate it holds (held: recordHeldCert), tends the records (tendManagerCerts), and sets
// its member's revocation list whenever the refused serials change. On
// the user's etcd there is no list to set (its TLS is the user's, hush
// runs no member: SetCRL would fail every period), but the records are
// tended all the same: every manager certificate issued adds one, and the
// join/CA service and the dispatcher read them.
func (d *Daemon) keepEtcdCRL(ctx context.Context) {
	members := d.store.Members()
	if members == nil {
		return
	}
	external := d.cfg.External != nil
	var last string
	set := false
	var recorded *x509.Certificate
	t := time.NewTicker(crlPeriod)
	defer t.Stop()
	for {
		if c := d.cert.Load(); c != nil && c.Leaf != nil && c.Leaf != recorded && certRole(c.Leaf) == pki.RoleManager {
			// Held: this node is active under it, so the worker
			// certificates it held before are refused from now on.
			if err := recordHeldCert(ctx, d.store, d.nodeID, c.Leaf); err == nil {
				recorded = c.Leaf
			}
		}
		now := time.Now()
		if pruned, marked, err := tendManagerCerts(ctx, d.store, now); err != nil {
			if ctx.Err() == nil {
				d.log.Warn("manager certificate records not tended", "err", err)
			}
		} else if pruned+marked > 0 {
			d.log.Info("manager certificate records tended", "prunedExpired", pruned, "markedDemoted", marked)
		}
		if !external {
			if key, err := d.refreshEtcdCRL(ctx, members, now, last, set); err != nil {
				if ctx.Err() == nil {
					d.log.Warn("etcd's revocation list not updated", "err", err)
				}
			} else {
				last, set = key, true
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refreshEtcdCRL sets the member's list when the refused serials (key,
// their hex joined) differ from last, or none was set yet.
func (d *Daemon) refreshEtcdCRL(ctx context.Context, members *store.Members, now time.Time, last string, set bool) (string, error) {
	serials, err := refusedManagerSerials(ctx, d.store, now)
	if err != nil {
		return "", err
	}
	parts := make([]string, len(serials))
	for i, s := range serials {
		parts[i] = s.Text(16)
	}
	key := strings.Join(parts, ",")
	if set && key == last {
		return key, nil
	}
	if err := d.setEtcdCRL(ctx, members, serials, now); err != nil {
		return "", err
	}
	d.log.Info("etcd's revocation list set", "refused", len(serials))
	return key, nil
}

// setEtcdCRL signs the list with the cluster CA and hands it to etcd.
func (d *Daemon) setEtcdCRL(ctx context.Context, members *store.Members, serials []*big.Int, now time.Time) error {
	c, err := cluster.Get(ctx, d.store)
	if err != nil {
		return err
	}
	roots, err := pki.ParseRootBundle([]byte(c.CACert), now)
	if err != nil {
		return err
	}
	signer, err := c.CASigner(&d.keys)
	if err != nil {
		return err
	}
	ca, err := pki.NewCA(roots[0], signer, nil)
	if err != nil {
		return err
	}
	der, err := ca.RevocationList(serials, now.UnixNano(), now, crlValidity)
	if err != nil {
		return err
	}
	if err := members.SetCRL(der); err != nil {
		return err
	}
	// The next start of this member uses it until it is active again.
	if err := writeFileSync(d.crlPath(), der, 0o600); err != nil {
		d.log.Warn("keeping etcd's revocation list for the next start", "err", err)
	}
	return nil
}

func (d *Daemon) crlPath() string { return filepath.Join(d.cfg.DataDir, "etcd-crl.der") }

// savedCRL is the list this member last set (nil when there is none or it
// does not parse: the store starts with an empty one).
func (d *Daemon) savedCRL() []byte {
	b, err := os.ReadFile(d.crlPath())
	if err != nil {
		return nil
	}
	if _, err := x509.ParseRevocationList(b); err != nil {
		d.log.Warn("ignoring a malformed saved revocation list", "err", err)
		return nil
	}
	return b
}
