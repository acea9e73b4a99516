package daemon

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// Role changes and certificate renewal: see docs/DESIGN.md "Role changes
// and renewal (issue 9)". The node record's role is what every node
// converges to; each node asks a manager's join/CA service, under mutual
// TLS with its current certificate, what its role is, and gets a new
// certificate there when its role changed or its certificate is due.

// nodeSyncPath is the join/CA service's call for certified nodes: the
// node's identity comes from its TLS certificate only.
const nodeSyncPath = "/hush/join/v1/node"

// syncRequest is what a certified node asks: nothing (its role and the
// managers), or a certificate for its CSR's key in its recorded role;
// PeerURL is where its etcd member will listen when that role is manager
// and it is not one yet.
type syncRequest struct {
	CSR     []byte `json:"csr,omitempty"`
	PeerURL string `json:"peerURL,omitempty"`
	// External is a promoted worker's external etcd (nil: none): the
	// manager refuses a store unlike its own before it issues anything
	// (promoteNode), as a join's admit does.
	External *externalRef `json:"external,omitempty"`
	// Leave asks that the calling manager's etcd member be removed: its
	// `swarm leave --force` (leave.go).
	Leave bool `json:"leave,omitempty"`
}

// defaultSyncPeriod is how often a node asks its role and checks its
// certificate's renewal point.
const defaultSyncPeriod = 5 * time.Second

// Failpoints of the role changes on the changing node, named for the
// write that has not happened yet (see failpoints.go).
const (
	fpDemoteWriteWorker = "demote-write-worker" // node.key and worker.json
	fpDemoteWipe        = "demote-wipe"         // etcd data, master.key, member.json
	fpPromoteWriteMbr   = "promote-write-member"
	fpPromoteWipe       = "promote-wipe"     // etcd data, worker.json, node.key
	fpPromoteActivate   = "promote-activate" // waits for quorum and vote, activation
)

const msgPromoteNoListen = "node %s has no listen address: a worker that joined without --listen-addr cannot become a manager in hush (make it leave and join again with --listen-addr and the manager token)"

// ---- the API side: docker node inspect/update/promote/demote ----

// UpdateNode is `docker node update` (promote and demote included) on a
// manager of a cluster. A demotion is checked against the membership
// first (Swarm's refusals), so a refused one changes nothing; the record
// then says the new role, and the nodes converge to it (the demoted
// node's member is removed here, or by the manager its sync asks).
func (c clusterNodes) UpdateNode(ctx context.Context, ref string, version uint64, spec swarm.NodeSpec) (bool, error) {
	d := c.d
	st := d.curStore()
	members := st.Members()
	if members == nil {
		return false, nil
	}
	if err := d.CheckServing(); err != nil {
		return true, err
	}
	// A demotion's write is guarded on the other managers' records (see
	// updateNodeOnce): another change to one of them meanwhile means
	// checking again against what it is now.
	for range maxRoleTries - 1 {
		err := c.updateNodeOnce(ctx, st, ref, version, spec)
		if !errors.Is(err, store.ErrGuard) {
			return true, err
		}
	}
	if err := c.updateNodeOnce(ctx, st, ref, version, spec); err != nil {
		if errors.Is(err, store.ErrGuard) {
			return true, errdefs.Unavailable("the managers' records kept changing during the demotion; retry")
		}
		return true, err
	}
	return true, nil
}

// maxRoleTries bounds the re-checks of a demotion whose guard failed.
const maxRoleTries = 5

// updateNodeOnce is one checked attempt of UpdateNode; ErrGuard means
// another manager's record changed since the checks read it (a stale
// version of the node itself is errdefs.OutOfSequence).
func (c clusterNodes) updateNodeOnce(ctx context.Context, st *store.Store, ref string, version uint64, spec swarm.NodeSpec) error {
	d := c.d
	members := st.Members()
	if members == nil {
		return errdefs.Unavailable("this manager is not a member of a cluster")
	}
	n, err := resolveNode(ctx, st, ref)
	if err != nil {
		return err
	}
	want := spec.Role
	if want == "" {
		want = n.Spec.Role
	}
	var remove *store.Member
	var managers []nodes.Node
	var guards []store.Cond
	if want != n.Spec.Role {
		// A role change changes who holds the master key: not while a
		// rotation across the managers counts them (clusterrotate.go),
		// but for the demotion of an absent manager.
		g, err := d.roleChangeGuard(ctx, n.ID, want)
		if err != nil {
			return err
		}
		guards = append(guards, g)
	}
	switch {
	case want == n.Spec.Role:
	case want == swarm.NodeRoleManager:
		if !hasListenAddr(n.Addr) {
			return errdefs.BadRequest(msgPromoteNoListen, n.ID)
		}
	case want == swarm.NodeRoleWorker:
		// Demotions recorded but not carried out yet count as done: their
		// members are about to go, and the records must keep a manager.
		all, err := nodes.List(ctx, st)
		if err != nil {
			return err
		}
		var pending []string
		for _, o := range all {
			switch {
			case o.ID == n.ID:
			case o.Spec.Role == swarm.NodeRoleManager:
				managers = append(managers, o)
			default:
				pending = append(pending, o.ID)
			}
		}
		if len(managers) == 0 {
			return errdefs.FailedPrecondition("attempting to demote the last manager of the swarm")
		}
		m, ok, err := members.ByName(ctx, n.ID, "")
		if err != nil {
			return err
		}
		if ok {
			if err := members.CheckRemove(ctx, m.ID, pending...); err != nil {
				return err
			}
			remove = &m
		}
	}
	if err := nodes.UpdateRole(ctx, st, n.ID, version, spec, managers, guards...); err != nil {
		if errors.Is(err, store.ErrGuard) {
			// The transaction cannot say which compare failed. The
			// node's own record at another version than the caller's is
			// "update out of sequence", as an unguarded update says: no
			// re-check can pass with that version (the bounded retries
			// all failed on it, answering "kept changing").
			if cur, gerr := nodes.Get(ctx, st, n.ID); gerr == nil && cur.Version != version {
				return errdefs.OutOfSequence()
			}
		}
		return err
	}
	if want != n.Spec.Role {
		d.log.Info("node role changed", "node", n.ID, "from", n.Spec.Role, "to", want)
	}
	if want == swarm.NodeRoleWorker && n.Spec.Role == swarm.NodeRoleManager {
		// etcd refuses the manager certificates it held by serial, also
		// after a later promotion (certrefusal.go).
		d.noteDemoted(ctx, st, n.ID)
	}
	switch {
	case remove != nil && n.ID != d.nodeID:
		// At once, so that node ls shows it; the demoted node's sync
		// removes it too (idempotent) if this fails.
		if err := members.Remove(ctx, remove.ID); err != nil {
			d.log.Warn("demotion: removing the member now failed; the node's own sync retries", "node", n.ID, "err", err)
		}
	case remove != nil:
		// This node: answer first; its sync asks another manager, which
		// removes this member and certifies it as a worker.
		d.kickSync()
	}
	return nil
}

// hasListenAddr: a node that joined without a listen address is recorded
// at port 0 (workerAddr).
func hasListenAddr(addr string) bool {
	_, p, err := net.SplitHostPort(addr)
	return err == nil && p != "0" && p != ""
}

// ---- the manager side: the certified node's call ----

func (d *Daemon) serveNodeSync(w http.ResponseWriter, r *http.Request) {
	var req syncRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJoinBody)).Decode(&req); err != nil {
		writeJoinError(w, errdefs.BadRequest("invalid node request"))
		return
	}
	d.mu.Lock()
	var clusterID string
	if d.member != nil {
		clusterID = d.member.ClusterID
	}
	hook := d.nodeSyncHook
	d.mu.Unlock()
	if hook != nil {
		hook(r.Context())
	}
	id, err := pki.PeerIdentity(*r.TLS, clusterID)
	if err == nil {
		// Before the refusal list: a dropped manager removed since
		// must still learn why it must not start (forcenew.go).
		if resp, ok := d.droppedAnswer(r.Context(), id, r.TLS.VerifiedChains[0][0]); ok {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(resp)
			return
		}
		// A removed node's certificate renews nothing (noderemove.go).
		err = d.refuseNode(id.NodeID, r.TLS.VerifiedChains[0][0])
	}
	if err == nil && len(req.CSR) > 0 {
		// Each CSR costs a signature and a store write: bounded per node,
		// keyed by the verified certificate's node ID.
		err = d.issueLimit.Allow(id.NodeID, time.Now())
	}
	if err != nil {
		writeJoinError(w, err)
		return
	}
	var signed bool
	resp, err := d.syncNode(r.Context(), id, r.TLS.VerifiedChains[0][0], &req, &signed, r.RemoteAddr)
	if err != nil && len(req.CSR) > 0 && !signed {
		// Refused before anything was signed (a CSR that does not parse,
		// a store unlike this one's): the retries of such a request do
		// not use up the node's renewals. A request refused after its
		// certificate was signed keeps its issue: the signature and the
		// stored manager-certificate record are what the limit bounds,
		// and refunding them would let a node whose promotion is refused
		// late (another learner catching up) have any number made.
		d.issueLimit.Refund(id.NodeID)
	}
	if err != nil {
		d.log.Warn("node sync refused", "node", id.NodeID, "err", err)
		writeJoinError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// syncNode answers a certified node its recorded role and the managers,
// and, for a CSR, a certificate in that role: a renewal; a demotion (this
// manager removes the node's etcd member first, with Swarm's refusals);
// or a promotion (the join's path: a manager certificate, a learner, the
// master key wrapped to the certified key). *signed is set once a
// certificate has been signed for the request, whatever follows. from is
// the node's connection address.
func (d *Daemon) syncNode(ctx context.Context, id pki.Identity, presented *x509.Certificate, req *syncRequest, signed *bool, from string) (*joinResponse, error) {
	if err := d.CheckServing(); err != nil {
		return nil, err
	}
	members := d.store.Members()
	if members == nil {
		return nil, errdefs.Unavailable("this manager is not a member of a cluster")
	}
	c, err := cluster.Get(ctx, d.store)
	if err != nil {
		return nil, err
	}
	n, err := nodes.Get(ctx, d.store, id.NodeID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errdefs.Unauthorized("node %s is not part of this swarm", id.NodeID)
	}
	if err != nil {
		return nil, err
	}
	if err := d.revokedByDemotion(ctx, id, presented, n); err != nil {
		return nil, err
	}
	// And the other way round: a worker certificate its node's completed
	// promotion superseded renews nothing, nor promotes it again
	// (promotedcerts.go).
	if err := d.supersededByPromotion(ctx, id, presented, len(req.CSR) > 0); err != nil {
		return nil, err
	}
	mgrs, err := d.managerAddrs(ctx)
	if err != nil {
		return nil, err
	}
	resp := &joinResponse{Role: string(n.Spec.Role), ClusterID: c.ID, CAPEM: []byte(c.CACert), Managers: mgrs}
	if req.Leave {
		if err := d.removeLeavingMember(ctx, id); err != nil {
			return nil, err
		}
		return resp, nil
	}
	if len(req.CSR) == 0 {
		return resp, nil
	}
	want := pki.RoleWorker
	if n.Spec.Role == swarm.NodeRoleManager {
		want = pki.RoleManager
	}
	switch {
	case want == pki.RoleWorker && id.Role == pki.RoleManager:
		if id.NodeID == d.nodeID {
			// Removing its own member stops this manager's store.
			return nil, errdefs.Unavailable("a manager does not demote itself: ask another manager")
		}
		m, ok, err := members.ByName(ctx, id.NodeID, "")
		if err != nil {
			return nil, err
		}
		if ok {
			if err := members.Remove(ctx, m.ID); err != nil {
				return nil, err
			}
			d.log.Info("demoted manager's member removed", "node", id.NodeID, "member", m.ID)
		}
		d.noteDemoted(ctx, d.store, id.NodeID)
	case want == pki.RoleManager && id.Role == pki.RoleWorker:
		resp, err := d.promoteNode(ctx, &c, n, req, resp, signed, from)
		if err != nil {
			return nil, err
		}
		if err := d.refuseIssued(ctx, id.NodeID, presented, resp.CertPEM); err != nil {
			return nil, err
		}
		return resp, nil
	}
	iss, err := d.issue(&c, req.CSR, id.NodeID, want)
	if err != nil {
		return nil, err
	}
	*signed = true
	if err := d.refuseIssued(ctx, id.NodeID, presented, iss.PEM); err != nil {
		return nil, err
	}
	// The key a later join of this node must show (recordJoiner).
	if err := nodes.SetKeyFP(ctx, d.store, id.NodeID, keyFP(iss.Leaf)); err != nil {
		return nil, err
	}
	resp.CertPEM = iss.PEM
	return resp, nil
}

// refuseIssued reads the refusal list from the store, not the cache,
// once a certificate is issued and before it is answered: a node removed
// through another manager within the cache's second would otherwise get a
// certificate issued after its removal, which the removal's cut-off does
// not refuse. A removal recorded after this read is later than the
// issue, so its cut-off refuses the new certificate.
func (d *Daemon) refuseIssued(ctx context.Context, nodeID string, presented *x509.Certificate, issuedPEM []byte) error {
	removed, err := nodes.Removed(ctx, d.store)
	if err != nil {
		return err
	}
	at, ok := removed[nodeID]
	if !ok {
		return nil
	}
	d.removed.noteRemoved(nodeID, at)
	blk, _ := pem.Decode(issuedPEM)
	if blk == nil {
		return errors.New("node sync: no certificate issued")
	}
	issued, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return err
	}
	for _, c := range []*x509.Certificate{presented, issued} {
		if !c.NotBefore.Add(pki.Backdate).Truncate(time.Second).After(at) {
			return removedError(nodeID)
		}
	}
	return nil
}

// promoteNode admits a worker whose record says manager as a joining
// manager would be admitted (admit): certificate, learner, wrapped key.
// *signed is set once the certificate is signed. from is the node's
// connection address: a promotion across hosts that a loopback address
// would break is refused by name, as a manager join is.
func (d *Daemon) promoteNode(ctx context.Context, c *cluster.Cluster, n nodes.Node, req *syncRequest, resp *joinResponse, signed *bool, from string) (*joinResponse, error) {
	if req.PeerURL == "" {
		return nil, errdefs.BadRequest("%s", msgManagerNeedsListen)
	}
	if err := d.checkJoinerStore(req.External); err != nil {
		return nil, err
	}
	if err := checkJoinRequest(&joinRequest{NodeID: n.ID, Addr: n.Addr, PeerURL: req.PeerURL, Availability: string(swarm.NodeAvailabilityActive)}); err != nil {
		return nil, err
	}
	if err := checkAdvertisedReach(from, d.listen.Advertise, req.PeerURL); err != nil {
		return nil, err
	}
	iss, pub, err := d.issueManager(c, req.CSR, n.ID)
	if err != nil {
		return nil, err
	}
	*signed = true
	// The node record's key stays the worker certificate's until the
	// promotion completes (recordHeldCert): a node whose answer is lost
	// asks again under that certificate, which the record's key tells
	// from the one held before an earlier promotion (promotedcerts.go).
	a, err := d.admitMember(ctx, d.store.Members(), n.ID, req.PeerURL, pub)
	if err != nil {
		return nil, err
	}
	resp.CertPEM, resp.MemberID, resp.InitialCluster = iss.PEM, a.member.ID, a.peers
	resp.KeyID, resp.WrapPub, resp.WrappedKey, resp.External = a.keyID, a.wrapPub, a.wrapped, d.externalRef()
	d.log.Info("worker promoted: certified as a manager, learner added", "node", n.ID, "member", a.member.ID)
	return resp, nil
}

// ---- the node side ----

// syncView is what one sync round reads of the node, under d.mu.
type syncView struct {
	cert      *tls.Certificate
	clusterID string
	caPEM     string
	addrs     []string
	listen    listenPlan
}

func (d *Daemon) syncViewLocked() (syncView, bool) {
	cert := d.cert.Load()
	if cert == nil || d.state != swarm.LocalNodeStateActive {
		return syncView{}, false
	}
	switch {
	case d.member != nil:
		// Other managers first: this one cannot certify its own demotion.
		addrs := slices.DeleteFunc(slices.Clone(d.member.Managers), func(a string) bool { return a == d.listen.Advertise })
		return syncView{cert, d.member.ClusterID, d.member.CAPEM, append(addrs, d.listen.Advertise), d.member.Listen}, true
	case d.worker != nil:
		return syncView{cert, d.worker.ClusterID, d.worker.CAPEM, slices.Clone(d.worker.Managers), d.worker.Listen}, true
	}
	return syncView{}, false
}

// kickSync makes the sync loop run a round now.
func (d *Daemon) kickSync() {
	select {
	case d.syncKick <- struct{}{}:
	default:
	}
}

// startSync runs the node's sync loop until Close.
func (d *Daemon) startSync() {
	period := d.cfg.RoleSyncPeriod
	if period <= 0 {
		period = defaultSyncPeriod
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.syncStop = cancel
	d.syncDone.Add(1)
	go func() {
		defer d.syncDone.Done()
		for {
			if err := d.syncOnce(ctx); err != nil && ctx.Err() == nil {
				d.log.Warn("node sync", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-d.syncKick:
			case <-time.After(period):
			}
		}
	}()
}

// now is the sync loop's clock: the real one, unless a test moved it.
func (d *Daemon) now() time.Time {
	return time.Now().Add(time.Duration(d.skew.Load()))
}

// syncOnce asks a manager this node's role; a changed role is carried
// out, else a certificate past its renewal point is renewed.
func (d *Daemon) syncOnce(ctx context.Context) error {
	d.mu.Lock()
	if d.promoting != nil {
		// Briefly: mu is held, and the next round tries again.
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := d.finishPromotionLocked(wctx)
		cancel()
		d.mu.Unlock()
		return err
	}
	v, ok := d.syncViewLocked()
	d.mu.Unlock()
	if !ok || len(v.addrs) == 0 {
		return nil
	}
	if !d.now().Before(v.cert.Leaf.NotAfter) {
		// The managers' TLS refuses an expired certificate, role query
		// included: a manager renews itself, others report (certexpiry.go).
		return d.renewExpired(ctx, v)
	}
	d.certProblem.Store(nil)
	ans, err := d.callSync(ctx, v, &syncRequest{})
	if err != nil {
		return err
	}
	if ans.Dropped != "" {
		return d.stopDropped(ans.Dropped)
	}
	d.noteManagers(ans.Managers)
	have := certRole(v.cert.Leaf)
	want := pki.RoleManager
	if ans.Role == roleWorker {
		want = pki.RoleWorker
	}
	switch {
	case want == pki.RoleWorker && have == pki.RoleManager:
		return d.demoteSelf(ctx, v)
	case want == pki.RoleManager && have == pki.RoleWorker:
		return d.promoteSelf(ctx, v)
	}
	roots, err := pki.ParseRootBundle([]byte(v.caPEM), d.now())
	if err != nil {
		return err
	}
	if d.renewFor == nil || d.renewFor.Cmp(v.cert.Leaf.SerialNumber) != 0 {
		d.renewAt, d.renewFor = pki.RenewAt(v.cert.Leaf, rand.Int64N), v.cert.Leaf.SerialNumber
	}
	if why := pki.NeedsReissue(v.cert.Leaf, have, roots[0], d.renewAt, d.now()); why != pki.ReasonNone {
		d.log.Info("renewing this node's certificate", "reason", string(why), "notAfter", v.cert.Leaf.NotAfter)
		return d.renewSelf(ctx, v)
	}
	return nil
}

func certRole(leaf *x509.Certificate) pki.Role {
	if len(leaf.Subject.OrganizationalUnit) == 1 {
		return pki.Role(leaf.Subject.OrganizationalUnit[0])
	}
	return ""
}

// noteManagers keeps the managers' addresses a sync answered, for the
// next rounds and for a restart (a demoted manager asks them once its own
// store is gone).
func (d *Daemon) noteManagers(mgrs []string) {
	if len(mgrs) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.member != nil && !slices.Equal(d.member.Managers, mgrs):
		d.member.Managers = slices.Clone(mgrs)
		if err := d.saveMember(d.member); err != nil {
			d.log.Warn("recording the managers", "err", err)
		}
	case d.worker != nil && !slices.Equal(d.worker.Managers, mgrs):
		d.worker.Managers = slices.Clone(mgrs)
		if err := d.saveWorker(d.worker); err != nil {
			d.log.Warn("recording the managers", "err", err)
		}
	}
}

// callSync asks the managers in order, under mutual TLS with the node's
// current certificate; the first answer wins, a refusal is returned as
// the manager's error.
func (d *Daemon) callSync(ctx context.Context, v syncView, req *syncRequest) (*joinResponse, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(v.caPEM)) {
		return nil, errors.New("node sync: no CA certificate")
	}
	params := pki.TLSParams{ClusterID: v.clusterID, Cert: func() (*tls.Certificate, error) { return v.cert, nil },
		Roots: func() *x509.CertPool { return pool }}
	tcfg, err := params.ClientConfig()
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	cli := &http.Client{CheckRedirect: noRedirect, Transport: &http.Transport{TLSClientConfig: tcfg}}
	defer cli.CloseIdleConnections()
	var last error
	for _, a := range v.addrs {
		cctx, cancel := context.WithTimeout(ctx, joinTimeout)
		r, err := http.NewRequestWithContext(cctx, http.MethodPost, "https://"+a+nodeSyncPath, bytes.NewReader(body))
		if err != nil {
			cancel()
			last = err
			continue
		}
		r.Header.Set("Content-Type", "application/json")
		b, err := joinCall(cli, r, a, 4*maxCABundle)
		cancel()
		if err != nil {
			last = err
			if errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, errdefs.ErrNoLeader) {
				continue
			}
			return nil, err
		}
		var out joinResponse
		if err := json.Unmarshal(b, &out); err != nil || out.ClusterID != v.clusterID {
			last = errdefs.Unavailable("the manager at %s sent a malformed answer", a)
			continue
		}
		return &out, nil
	}
	return nil, last
}

// checkNodeCert accepts a certificate answered for this node only: its
// key, its ID, the wanted role, under the node's pinned CA bundle.
func (d *Daemon) checkNodeCert(v syncView, ans *joinResponse, key *ecdsa.PrivateKey, role pki.Role) (*tls.Certificate, error) {
	roots, err := pki.ParseRootBundle([]byte(v.caPEM), time.Now())
	if err != nil {
		return nil, err
	}
	if err := checkJoinAnswer(ans, []byte(v.caPEM), roots, key, d.nodeID, role); err != nil {
		return nil, err
	}
	return pki.TLSCertificate(ans.CertPEM, key)
}

// renewSelf gets a new certificate for the node's own key and swaps it
// into everything that uses it: the files, etcd's peer TLS, and the
// certificate the join/CA service, the dispatcher and the worker's
// dispatcher client read per handshake.
func (d *Daemon) renewSelf(ctx context.Context, v syncView) error {
	d.mu.Lock()
	key := d.nodeKey
	d.mu.Unlock()
	csr, err := pki.NewCSR(key)
	if err != nil {
		return err
	}
	ans, err := d.callSync(ctx, v, &syncRequest{CSR: csr})
	if err != nil {
		return err
	}
	cert, err := d.checkNodeCert(v, ans, key, certRole(v.cert.Leaf))
	if err != nil {
		return err
	}
	return d.installRenewed(key, ans.CertPEM, cert)
}

// installRenewed makes cert (certPEM, for key) this node's certificate:
// the files, etcd's peer TLS, and what the services read per handshake.
func (d *Daemon) installRenewed(key *ecdsa.PrivateKey, certPEM []byte, cert *tls.Certificate) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.nodeKey != key {
		return nil // the role changed meanwhile
	}
	switch {
	case d.member != nil:
		ms := *d.member
		ms.CertPEM = string(certPEM)
		if err := d.saveMember(&ms); err != nil {
			return err
		}
		*d.member = ms
		if members := d.curStore().Members(); members != nil {
			mc, err := d.memberConfig(&ms, key)
			if err != nil {
				return err
			}
			err = members.RenewTLS(mc.TLS)
			clear(mc.TLS.KeyPEM)
			if err != nil {
				return err
			}
		}
	case d.worker != nil:
		ws := *d.worker
		ws.CertPEM = string(certPEM)
		if err := d.saveWorker(&ws); err != nil {
			return err
		}
		*d.worker = ws
	default:
		return nil
	}
	d.cert.Store(cert)
	d.certProblem.Store(nil)
	d.log.Info("node certificate renewed", "notAfter", cert.Leaf.NotAfter)
	return nil
}

// demoteSelf makes this manager a worker: a manager removes its member
// and certifies a fresh key as a worker; the worker's files are written
// (the commit point, with a higher role epoch than member.json), then the
// store is closed and its data, the master key and member.json go, and
// the worker's agent starts. A crash anywhere converges at the next start
// (convergeRoleFiles, demotedWhileDown).
func (d *Daemon) demoteSelf(ctx context.Context, v syncView) error {
	v.addrs = slices.DeleteFunc(v.addrs, func(a string) bool { return a == v.listen.Advertise })
	if len(v.addrs) == 0 {
		return errdefs.Unavailable("no other manager to certify this node's demotion")
	}
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	ans, err := d.callSync(ctx, v, &syncRequest{CSR: csr})
	if err != nil {
		return err
	}
	cert, err := d.checkNodeCert(v, ans, key, pki.RoleWorker)
	if err != nil {
		return err
	}
	// The join/CA service stops before the store is replaced: its
	// handlers read d.store unlocked. d.mu is released meanwhile, hence
	// the checks after.
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopJoinServiceLocked()
	if d.member == nil {
		return nil
	}
	ws := &workerState{ClusterID: v.clusterID, CertPEM: string(ans.CertPEM), CAPEM: v.caPEM,
		Managers: ans.Managers, Listen: d.member.Listen, Epoch: d.member.Epoch + 1}
	if err := d.writeWorkerFiles(ws, key); err != nil {
		// Still a manager: it serves again until the next round demotes it.
		if serr := d.startJoinServiceLocked(); serr != nil {
			d.log.Warn("join service not restarted after a failed demotion", "err", serr)
		}
		return err
	}
	d.stopRuntime()
	d.closeStoreLocked()
	if err := d.injected(fpDemoteWipe); err != nil {
		return err
	}
	if err := d.wipeManagerFiles(); err != nil {
		return err
	}
	d.dropKeyring()
	d.mk.Destroy()
	d.mk = keyring.MasterKey{}
	d.member, d.worker, d.nodeKey = nil, ws, key
	d.cert.Store(cert)
	if err := d.openStoreLocked(ctx, nil); err != nil {
		return err
	}
	d.state = swarm.LocalNodeStateActive
	d.log.Info("demoted: this node is now a worker", "managers", ws.Managers)
	if err := d.startWorkerAgentLocked(); err != nil {
		d.log.Error("worker agent not started", "err", err)
	}
	return nil
}

// writeWorkerFiles writes node.key, then worker.json (the commit point).
func (d *Daemon) writeWorkerFiles(ws *workerState, key *ecdsa.PrivateKey) error {
	if err := d.injected(fpDemoteWriteWorker); err != nil {
		return err
	}
	if err := d.saveWorkerKey(key); err != nil {
		return err
	}
	return d.saveWorker(ws)
}

// wipeManagerFiles removes what only a manager holds, member.json last:
// while it exists a restart knows there is more to wipe.
func (d *Daemon) wipeManagerFiles() error {
	if err := os.RemoveAll(filepath.Join(d.cfg.DataDir, "etcd")); err != nil {
		return fmt.Errorf("wiping the store of a demoted manager: %w", err)
	}
	if err := d.removePlainKey(); err != nil {
		return fmt.Errorf("master key: %w", err)
	}
	if err := os.Remove(d.memberPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("member state: %w", err)
	}
	return nil
}

// wipeWorkerFiles removes what only a worker holds, once a promoted node's
// member.json is written: the empty local store (the joining member starts
// from nothing), worker.json and the unsealed node key.
func (d *Daemon) wipeWorkerFiles() error {
	if err := os.RemoveAll(filepath.Join(d.cfg.DataDir, "etcd")); err != nil {
		return fmt.Errorf("clearing the store for the promotion: %w", err)
	}
	if err := os.Remove(d.workerPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("worker state: %w", err)
	}
	if err := os.Remove(d.nodeKeyPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("node key: %w", err)
	}
	return nil
}

// promoteSelf makes this worker a manager: a manager certifies a fresh
// key as a manager, adds a learner and wraps the master key to the
// certified key (the join's path); member.json is written (the commit
// point), the worker's files and empty store go, and the node starts its
// member from the initial cluster, waits until it is promoted, and
// activates as a manager.
func (d *Daemon) promoteSelf(ctx context.Context, v syncView) error {
	if !v.listen.enabled() {
		return errdefs.BadRequest(msgPromoteNoListen, d.nodeID)
	}
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	peerURL, _ := v.listen.peerURLs()
	ans, err := d.callSync(ctx, v, &syncRequest{CSR: csr, PeerURL: peerURL, External: d.externalRef()})
	if err != nil {
		return err
	}
	if err := d.checkSwarmStore(ans.External); err != nil {
		return err
	}
	if ans.External == nil && len(ans.InitialCluster) == 0 || ans.External == nil && !slices.ContainsFunc(ans.InitialCluster, func(p store.Peer) bool { return p.PeerURL == peerURL }) {
		return errdefs.Unavailable("a manager sent a promotion without this node in its initial cluster")
	}
	cert, err := d.checkNodeCert(v, ans, key, pki.RoleManager)
	if err != nil {
		return err
	}
	mk, err := unwrapMasterKey(key, d.nodeID, ans)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			mk.Destroy()
		}
	}()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.worker == nil {
		return nil
	}
	if err := d.injected(fpPromoteWriteMbr); err != nil {
		return err
	}
	d.stopRuntime()
	// A crash from here until member.json is written leaves a worker with
	// a master key file: convergeRoleFiles removes it.
	if err := d.plainKey.Store(mk); err != nil {
		return fmt.Errorf("master key: %w", err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		return err
	}
	d.keys.Set(kr)
	ms := &memberState{Listen: v.listen, ClusterID: v.clusterID, CertPEM: string(ans.CertPEM), CAPEM: v.caPEM,
		Join: true, InitialCluster: ans.InitialCluster, Managers: ans.Managers, Epoch: d.worker.Epoch + 1, External: ans.External}
	if err := pki.SaveNodeKey(ctx, d.sealNodeKey(&ms.Key), key); err != nil {
		return err
	}
	if err := d.saveMember(ms); err != nil {
		return err
	}
	d.closeStoreLocked()
	if err := d.injected(fpPromoteWipe); err != nil {
		return err
	}
	if err := d.wipeWorkerFiles(); err != nil {
		return err
	}
	mc, err := d.memberConfig(ms, key)
	if err != nil {
		return err
	}
	d.useListen(ms.Listen)
	d.member, d.worker, d.nodeKey = ms, nil, key
	d.cert.Store(cert)
	// The sync answer carries no spec: the member starts on the default
	// spec's raft timing, and the cluster's from its next start.
	d.startWithSpecTuning(nil)
	if err := d.openStoreLocked(ctx, mc); err != nil {
		return err
	}
	// From here a failed wait (a learner slow to catch up, a quorum away)
	// is retried by the next sync rounds rather than left half done until
	// a restart.
	ok = true
	d.promoting = &pendingPromotion{mk: mk, kr: kr, member: ans.MemberID}
	return d.finishPromotionLocked(ctx)
}

// pendingPromotion is a promotion whose member.json is written and whose
// member is started, waiting to activate: the master key and the keyring
// the store reads with meanwhile.
type pendingPromotion struct {
	mk     keyring.MasterKey
	kr     *keyring.Keyring
	member string
}

func (p *pendingPromotion) destroy() {
	if p != nil {
		p.kr.Destroy()
		p.mk.Destroy()
	}
}

// finishPromotionLocked waits (bounded) for the quorum and this member's
// vote, then activates the node as a manager and starts its join/CA
// service; a failure leaves d.promoting for the next sync round.
func (d *Daemon) finishPromotionLocked(ctx context.Context) error {
	p := d.promoting
	if err := d.injected(fpPromoteActivate); err != nil {
		return err
	}
	if err := d.awaitQuorum(ctx); err != nil {
		return err
	}
	if err := d.awaitVoter(ctx); err != nil {
		return err
	}
	if err := d.activateLocked(p.mk); err != nil {
		return err
	}
	d.promoting = nil
	p.kr.Destroy()
	d.log.Info("promoted: this node is now a manager", "member", p.member)
	return d.startJoinServiceLocked()
}

// convergeRoleFiles finishes, at start, a role change a crash
// interrupted: with both member.json and worker.json present, the one of
// the higher role epoch was written last and wins; what belongs to the
// other role is removed (see demoteSelf, promoteSelf).
func (d *Daemon) convergeRoleFiles() error {
	mb, merr := os.ReadFile(d.memberPath())
	wb, werr := os.ReadFile(d.workerPath())
	if werr == nil && errors.Is(merr, os.ErrNotExist) {
		// A worker never holds the master key: one here is a promotion
		// that stopped before its member.json.
		if err := d.removePlainKey(); err != nil {
			return fmt.Errorf("master key: %w", err)
		}
		return nil
	}
	if merr == nil && errors.Is(werr, os.ErrNotExist) {
		// A manager's key is sealed in member.json: an unsealed node.key
		// here is a worker's (certified) key that a promotion stopped
		// while wiping, or an uncertified one a demotion stopped before
		// its worker.json.
		if err := os.Remove(d.nodeKeyPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("node key: %w", err)
		}
		return nil
	}
	if merr != nil || werr != nil {
		return nil
	}
	var ms memberState
	var ws workerState
	if json.Unmarshal(mb, &ms) != nil || json.Unmarshal(wb, &ws) != nil || ms.Epoch == ws.Epoch {
		return fmt.Errorf("both %s and %s exist and neither is newer: remove the stale one", d.memberPath(), d.workerPath())
	}
	if ws.Epoch > ms.Epoch {
		d.log.Warn("finishing an interrupted demotion")
		return d.wipeManagerFiles()
	}
	d.log.Warn("finishing an interrupted promotion")
	return d.wipeWorkerFiles()
}

// demotedWhileDown handles a manager restarting after its member was
// removed but before it recorded its demotion: its etcd member would not
// start (a removed member must not restart from its old data). Before
// opening the store it asks the other managers (bounded) its role; a
// worker answer carries out the demotion's file steps. No answer (a whole
// cluster restarting): the member starts as before.
func (d *Daemon) demotedWhileDown(ctx context.Context) (bool, error) {
	d.mu.Lock()
	ms, key := d.member, d.nodeKey
	cert, err := pki.TLSCertificate([]byte(ms.CertPEM), key)
	d.mu.Unlock()
	if err != nil {
		return false, err
	}
	if ms.ForceNew {
		// This manager is the new cluster (forcenew.go).
		return false, nil
	}
	var addrs []string
	for _, a := range ms.Managers {
		if a != ms.Listen.Advertise {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return false, nil
	}
	v := syncView{cert: cert, clusterID: ms.ClusterID, caPEM: ms.CAPEM, addrs: addrs, listen: ms.Listen}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	ans, err := d.callSync(qctx, v, &syncRequest{})
	cancel()
	if err == nil && ans.Dropped != "" {
		return false, droppedErr(ans.Dropped)
	}
	if err != nil || ans.Role != roleWorker {
		return false, nil
	}
	d.log.Warn("this manager was demoted while it was down: becoming a worker")
	nkey, csr, err := newKeyAndCSR()
	if err != nil {
		return false, err
	}
	ans, err = d.callSync(ctx, v, &syncRequest{CSR: csr})
	if err != nil {
		return false, err
	}
	if _, err := d.checkNodeCert(v, ans, nkey, pki.RoleWorker); err != nil {
		return false, err
	}
	ws := &workerState{ClusterID: ms.ClusterID, CertPEM: string(ans.CertPEM), CAPEM: ms.CAPEM, Managers: ans.Managers,
		Listen: ms.Listen, Epoch: ms.Epoch + 1}
	if err := d.writeWorkerFiles(ws, nkey); err != nil {
		return false, err
	}
	if err := d.wipeManagerFiles(); err != nil {
		return false, err
	}
	d.member, d.nodeKey = nil, nil
	return true, nil
}

func (d *Daemon) saveWorker(ws *workerState) error {
	b, err := json.Marshal(ws)
	if err != nil {
		return err
	}
	if err := writeFileSync(d.workerPath(), b, 0o600); err != nil {
		return fmt.Errorf("worker state: %w", err)
	}
	return nil
}

func (d *Daemon) removePlainKey() error {
	// Under autolock the master key is in the locked files: a worker
	// keeps none of them (Swarm does not lock workers' keys). Nor the
	// files of a rotation: a manager demoted in the middle of one (while
	// down) holds the new key in its rotating file, sealed under the old
	// key the rotation retires.
	if err := d.rotatingKey().Remove(); err != nil {
		return err
	}
	if err := d.oldPlainKey().Remove(); err != nil {
		return err
	}
	if err := d.nextKey().Remove(); err != nil {
		return err
	}
	if err := d.lockedKey.Remove(); err != nil {
		return err
	}
	if !d.plainKey.Exists() {
		return nil
	}
	return d.plainKey.Remove()
}
