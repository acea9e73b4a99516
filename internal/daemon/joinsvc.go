package daemon

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// joinService is a manager's TLS join/CA service on its listen address:
// the CA bundle for anyone (a joining node checks it against its token's
// digest), and admission of a node presenting a join token and a CSR.
type joinService struct {
	srv *http.Server
	ln  net.Listener
	// cancel ends every request's context (the server's base context):
	// a handler waiting on the store (one whose member its cluster just
	// removed answers nothing) returns at stop.
	cancel context.CancelFunc
	// running counts the handshakes and handlers under way; once stopped
	// is set none starts. Both read d.store without d.mu, so none may
	// outlive stop: the store is closed or replaced after it
	// (stopJoinServiceLocked).
	mu      sync.Mutex
	stopped bool
	running sync.WaitGroup
}

// enter admits one handshake or handler, unless the service is stopping;
// the caller calls running.Done when it returns.
func (js *joinService) enter() bool {
	js.mu.Lock()
	defer js.mu.Unlock()
	if js.stopped {
		return false
	}
	js.running.Add(1)
	return true
}

// tracked serves h for as long as the service is not stopping.
func (js *joinService) tracked(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !js.enter() {
			writeJoinError(w, errdefs.Unavailable("this manager's join/CA service is stopping"))
			return
		}
		defer js.running.Done()
		h(w, r)
	}
}

// startJoinServiceLocked listens on d.listen with this manager's own
// certificate. The caller holds d.mu.
func (d *Daemon) startJoinServiceLocked() error {
	if d.joinSvc != nil || d.member == nil {
		return nil
	}
	if d.cert.Load() == nil {
		return errors.New("join service: this manager has no certificate")
	}
	ln, err := net.Listen("tcp", d.listen.Listen)
	if err != nil {
		return fmt.Errorf("join service: %w", err)
	}
	// A joining node has no certificate yet; a certified node shows its
	// own for the node call (roles.go), which takes its identity from it.
	// The certificate and the roots are read per handshake (renewal).
	js := &joinService{}
	roots := d.newRootsCache()
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if !js.enter() {
			return nil, errors.New("the join/CA service is stopping")
		}
		defer js.running.Done()
		cert := d.cert.Load()
		if cert == nil {
			return nil, errors.New("no certificate")
		}
		return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert},
			ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: roots.roots(), SessionTicketsDisabled: true}, nil
	}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+joinCAPath, js.tracked(d.serveCA))
	mux.HandleFunc("POST "+joinPath, js.tracked(d.serveJoin))
	mux.HandleFunc("POST "+nodeSyncPath, js.tracked(d.serveNodeSync))
	base, cancel := context.WithCancel(context.Background())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: joinTimeout,
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelDebug), BaseContext: func(net.Listener) context.Context { return base }}
	tln := tls.NewListener(ln, cfg)
	go func() {
		if err := srv.Serve(tln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("join service stopped", "err", err)
		}
	}()
	js.srv, js.ln, js.cancel = srv, tln, cancel
	d.joinSvc = js
	d.log.Info("join/CA service listening", "addr", d.listen.Listen, "advertised", d.listen.Advertise)
	return nil
}

// close shuts the service down, waiting (bounded) for the requests under
// way: a handler may outlive it. Only stop calls it; the node's paths use
// stopJoinServiceLocked.
func (js *joinService) close() {
	if js == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = js.srv.Shutdown(ctx)
	// A request Shutdown gave up on ends its store calls.
	js.cancel()
}

// stop shuts the service down and returns once no handshake or handler
// of it runs any more: their requests are cancelled, and those not yet
// in a handler are refused. The caller must not hold d.mu (the handlers
// take it).
func (js *joinService) stop() {
	if js == nil {
		return
	}
	js.mu.Lock()
	js.stopped = true
	js.mu.Unlock()
	js.cancel()
	js.close()
	// Whatever Shutdown left (a connection still in its handshake) is cut.
	_ = js.srv.Close()
	js.running.Wait()
}

// stopJoinServiceLocked stops the join/CA service, and any another caller
// is still stopping, and returns once no handler of them runs: from then
// on, for as long as the caller keeps d.mu, none runs and none starts
// (a service starts only under d.mu), so the caller may close or replace
// the store. Every path that does must come through here first.
//
// Why the wait and not handlers that take the store under d.mu: the
// handlers read d.store (and d.bg, through promoteLater) in a score of
// helpers shared with the API, and the store is swapped under d.mu by
// leave, demotion and Close alike; one wait here covers every path and
// every field, where snapshotting would have to be threaded through each.
//
// The caller holds d.mu; it is released while the handlers finish (they
// take it) and held again on return, so the caller decides what to do
// only after this returns, or checks again.
func (d *Daemon) stopJoinServiceLocked() {
	for d.joinSvc != nil || len(d.joinStopping) > 0 {
		if d.joinSvc != nil {
			d.joinStopping = append(d.joinStopping, d.joinSvc)
			d.joinSvc = nil
		}
		pending := slices.Clone(d.joinStopping)
		d.mu.Unlock()
		for _, js := range pending {
			js.stop()
		}
		d.mu.Lock()
		d.joinStopping = slices.DeleteFunc(d.joinStopping, func(js *joinService) bool { return slices.Contains(pending, js) })
	}
}

func (d *Daemon) serveCA(w http.ResponseWriter, r *http.Request) {
	if err := d.CheckServing(); err != nil {
		writeJoinError(w, err)
		return
	}
	c, err := cluster.Get(r.Context(), d.store)
	if err != nil {
		d.log.Warn("join service: reading the cluster", "err", err)
		writeJoinError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = io.WriteString(w, c.CACert)
}

func (d *Daemon) serveJoin(w http.ResponseWriter, r *http.Request) {
	var req joinRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJoinBody)).Decode(&req); err != nil {
		writeJoinError(w, errdefs.BadRequest("invalid join request"))
		return
	}
	resp, err := d.admit(r.Context(), &req, r.RemoteAddr)
	if err != nil {
		// The ID is the request's, unchecked yet, from a client without a
		// certificate: only a bounded prefix is logged.
		d.log.Warn("join refused", "node", truncate(req.NodeID), "remote", r.RemoteAddr, "err", err)
		writeJoinError(w, err)
		return
	}
	d.log.Info("node joined", "node", req.NodeID, "role", cmp.Or(resp.Role, "manager"), "peerURL", req.PeerURL)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func writeJoinError(w http.ResponseWriter, err error) {
	je, code := toJoinError(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(je)
}

// Swarm's texts for a join the manager refuses.
const (
	msgBadJoinToken       = "A valid join token is necessary to join this cluster"
	msgManagerNeedsListen = "a manager needs a listen address to join: start hushd with --listen-addr or run docker swarm join --listen-addr"
)

// admit checks a joining node's token (in constant time), certifies its
// key as a manager, records the node, and adds it as an etcd learner that
// this manager promotes once it has caught up. Every step is idempotent,
// so a node whose answer was lost can ask again. from is the joiner's
// connection address.
func (d *Daemon) admit(ctx context.Context, req *joinRequest, from string) (*joinResponse, error) {
	if err := d.CheckServing(); err != nil {
		return nil, err
	}
	members := d.store.Members()
	if members == nil {
		return nil, errdefs.Unavailable("this manager does not accept joins (it has no listen address)")
	}
	c, err := cluster.Get(ctx, d.store)
	if err != nil {
		return nil, err
	}
	role, ok := c.ValidateJoinToken(req.Token)
	if !ok {
		return nil, errdefs.InvalidArgument(msgBadJoinToken)
	}
	if role != "manager" {
		return d.admitWorker(ctx, req, &c)
	}
	// Before the joiner is recorded as a manager.
	if err := d.refuseWhileForceNew(); err != nil {
		return nil, err
	}
	// Under autolock the joiner stores the master key in the clear, then
	// locks it under the record's unlock key once active
	// (followUnlockKey), as a manager that was down during the enable.
	if err := checkJoinRequest(req); err != nil {
		return nil, err
	}
	if req.PeerURL == "" {
		return nil, errdefs.BadRequest("%s", msgManagerNeedsListen)
	}
	if err := checkAdvertisedReach(from, d.listen.Advertise, req.PeerURL); err != nil {
		return nil, err
	}
	if err := d.checkJoinerStore(req.External); err != nil {
		return nil, err
	}
	if req.NodeID == d.nodeID {
		return nil, errdefs.BadRequest("node ID %s is this manager's", req.NodeID)
	}
	// The etcd member is named by the node ID: an unrecorded ID that names
	// a member is a manager's whose record is gone, never the joiner's.
	if _, err := nodes.Get(ctx, d.store, req.NodeID); errors.Is(err, store.ErrNotFound) {
		if _, ok, err := members.ByName(ctx, req.NodeID, ""); err != nil {
			return nil, err
		} else if ok {
			return nil, errIDTaken(req.NodeID)
		}
	} else if err != nil {
		return nil, err
	}
	iss, pub, err := d.issueManager(&c, req.CSR, req.NodeID)
	if err != nil {
		return nil, err
	}
	rec, err := d.recordJoiner(ctx, nodes.Node{ID: req.NodeID, Hostname: req.Hostname, Addr: req.Addr, Spec: swarm.NodeSpec{
		Role: swarm.NodeRoleManager, Availability: swarm.NodeAvailability(req.Availability),
	}}, iss.Leaf)
	if err != nil {
		return nil, err
	}
	if rec.Spec.Role != swarm.NodeRoleManager {
		// A worker that left keeps its record; the record is what the node
		// converges to, so it would be demoted again at once.
		return nil, errdefs.FailedPrecondition("node %s is recorded as a worker: join it with the worker token and promote it (docker node promote %s)", req.NodeID, req.NodeID)
	}
	a, err := d.admitMember(ctx, members, req.NodeID, req.PeerURL, pub)
	if err != nil {
		return nil, err
	}
	return &joinResponse{ClusterID: c.ID, CertPEM: iss.PEM, CAPEM: []byte(c.CACert), MemberID: a.member.ID,
		InitialCluster: a.peers, KeyID: a.keyID, WrapPub: a.wrapPub, WrappedKey: a.wrapped, External: d.externalRef(), Raft: &c.Spec.Raft}, nil
}

// memberAdmission is what a node admitted as a manager gets besides its
// certificate: its learner, the initial cluster it starts from, and the
// master key wrapped to its certified key.
type memberAdmission struct {
	member           store.Member
	peers            []store.Peer
	keyID            string
	wrapPub, wrapped []byte
}

// admitMember adds nodeID's learner at peerURL, wraps the master key to the
// node's certified key pub, and promotes the learner once it has caught up:
// the steps a manager's join and a worker's promotion share, in one place
// because the wrapping is what hands out the cluster's master key.
func (d *Daemon) admitMember(ctx context.Context, members *store.Members, nodeID, peerURL string, pub *ecdsa.PublicKey) (memberAdmission, error) {
	if err := d.refuseWhileForceNew(); err != nil {
		return memberAdmission{}, err
	}
	// The master key handed out here is the one a rotation in progress
	// is retiring, to a manager it does not count (clusterrotate.go).
	if err := d.awaitNoRotation(ctx, "a manager's join or promotion"); err != nil {
		return memberAdmission{}, err
	}
	m, peers, err := members.AddLearner(ctx, nodeID, peerURL)
	if err != nil {
		return memberAdmission{}, err
	}
	d.mu.Lock()
	mk := d.mk
	wpub, wrapped, err := wrapMasterKey(mk, pub, nodeID)
	d.mu.Unlock()
	if err != nil {
		return memberAdmission{}, err
	}
	if m.Learner {
		d.promoteLater(members, m.ID, nodeID)
	}
	return memberAdmission{member: m, peers: peers, keyID: mk.ID, wrapPub: wpub, wrapped: wrapped}, nil
}

// keyFP is what a node record keeps of the key its certificate was
// issued for: the SHA-256 of the certificate's public key (SPKI), hex.
func keyFP(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// errIDTaken refuses a join under a node ID another node holds. It names
// the ID the joiner sent and nothing of the node that holds it.
func errIDTaken(id string) error {
	return errdefs.AlreadyExists("node ID %s already belongs to a node of this swarm: a node joins again under its ID only with the key it was last certified for (a node that lost it must first be removed with docker node rm %s)", id, id)
}

// recordJoiner records a joining node with the key its certificate was
// just issued for, or finds its record. The node ID is the joiner's own
// claim (its etcd member is named by it before any manager knows it), so
// a recorded ID is admitted only for the key that record was certified
// for: a retried join or a node that left and kept its key. Anything else
// is another node's identity, and its certificate, dropped here, is never
// answered.
func (d *Daemon) recordJoiner(ctx context.Context, n nodes.Node, leaf *x509.Certificate) (nodes.Node, error) {
	n.KeyFP = keyFP(leaf)
	rec, err := nodes.Record(ctx, d.store, n)
	if err != nil {
		return nodes.Node{}, err
	}
	if rec.KeyFP != n.KeyFP {
		return nodes.Node{}, errIDTaken(n.ID)
	}
	return rec, nil
}

// learnerPromoter is what a learner's promotion needs of the membership.
type learnerPromoter interface {
	Promote(context.Context, string) error
	Remove(context.Context, string) error
}

// promoteLater promotes the learner this manager just admitted, in the
// background for as long as the daemon runs (promoteLearner).
func (d *Daemon) promoteLater(members learnerPromoter, id, nodeID string) {
	d.runBG(func(ctx context.Context) { d.promoteLearner(ctx, members, id, nodeID) }, d.bg)
}

// promoteLearner promotes the learner once it has caught up (Promote
// retries until then). A learner that never catches up within
// promoteLimit is removed: etcd admits one learner at a time, and a joiner
// that died would otherwise block every later join. When ctx ends first
// (the daemon stops, or the leadership the sweep ran under is lost) it
// leaves the learner to whoever acts next.
func (d *Daemon) promoteLearner(ctx context.Context, members learnerPromoter, id, nodeID string) {
	pctx, cancel := context.WithTimeout(ctx, promoteLimit)
	defer cancel()
	if err := members.Promote(pctx, id); err != nil {
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("joining manager never caught up: removing its learner", "node", nodeID, "member", id, "err", err)
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		if err := members.Remove(rctx, id); err != nil {
			d.log.Warn("removing a stale learner", "member", id, "err", err)
		}
		return
	}
	d.log.Info("manager promoted to a voter", "node", nodeID, "member", id)
}

// learnerMembers is what the learner sweep needs of the membership.
type learnerMembers interface {
	List(context.Context) ([]store.Member, error)
	Promote(context.Context, string) error
	Remove(context.Context, string) error
}

// learnerSweep is how often the orchestrator's leader looks for learners
// no manager is promoting.
const learnerSweep = 30 * time.Second

// sweepLearners promotes (or, if it never catches up, removes) every
// learner in the cluster while ctx lasts: the manager that admitted one
// drives its promotion, but a crash or restart of that manager would
// leave it a learner for good, and etcd admits one learner at a time, so
// every later join would be refused. Run by the orchestrator's leader
// only, with ctx its leadership: the promotions it starts run under ctx
// too, and it returns once they have ended, so a deposed leader neither
// promotes nor removes a learner its successor's sweep now drives.
// Promoting and removing are idempotent, so a race with the admitting
// manager is harmless.
func (d *Daemon) sweepLearners(ctx context.Context, members learnerMembers, every time.Duration) {
	var running sync.WaitGroup
	defer running.Wait()
	// When each learner was handed to promoteLearner: again only once
	// that attempt must have ended (promoted, or its removal failed).
	tried := map[string]time.Time{}
	for {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		list, err := members.List(lctx)
		cancel()
		if err == nil {
			for _, m := range list {
				if at, ok := tried[m.ID]; m.Learner && (!ok || time.Since(at) > promoteLimit+every) {
					tried[m.ID] = time.Now()
					d.log.Info("promoting a learner found in the cluster", "member", m.ID)
					running.Go(func() { d.promoteLearner(ctx, members, m.ID, m.Name) })
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// checkJoinRequest bounds what a not-yet-certified client says of itself.
func checkJoinRequest(req *joinRequest) error {
	if !identity.Valid(req.NodeID) {
		return errdefs.BadRequest("invalid node ID")
	}
	if len(req.Hostname) > 253 {
		return errdefs.BadRequest("hostname longer than 253 bytes")
	}
	if _, _, err := net.SplitHostPort(req.Addr); err != nil || len(req.Addr) > 300 {
		return errdefs.BadRequest("invalid advertised address %q", truncate(req.Addr))
	}
	// A worker has no peer URL (admit requires one of a manager).
	if u, err := url.Parse(req.PeerURL); req.PeerURL != "" && (err != nil || u.Scheme != "https" || u.Port() == "" || u.Path != "" || len(req.PeerURL) > 300) {
		return errdefs.BadRequest("invalid peer URL %q", truncate(req.PeerURL))
	}
	switch swarm.NodeAvailability(req.Availability) {
	case swarm.NodeAvailabilityActive, swarm.NodeAvailabilityPause, swarm.NodeAvailabilityDrain:
	default:
		return errdefs.BadRequest("invalid Availability: %q", truncate(req.Availability))
	}
	return nil
}

// joinAvailability is the availability a join asks for, checked on the
// joining node before anything is sent, as Swarm's daemon does (with its
// text, and as it, in any case); empty is active.
func joinAvailability(a swarm.NodeAvailability) (string, error) {
	switch v := swarm.NodeAvailability(strings.ToLower(string(a))); v {
	case "":
		return string(swarm.NodeAvailabilityActive), nil
	case swarm.NodeAvailabilityActive, swarm.NodeAvailabilityPause, swarm.NodeAvailabilityDrain:
		return string(v), nil
	}
	return "", errdefs.BadRequest("invalid Availability: %q", truncate(string(a)))
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// ---- the joining side ----

// Join is `docker swarm join` with a manager token: see DESIGN.md "Join
// protocol". Under d.mu, on an inactive node.
func (d *Daemon) Join(ctx context.Context, req swarm.JoinRequest) error {
	ctx = context.WithoutCancel(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != swarm.LocalNodeStateInactive {
		return errdefs.Unavailable("%s", msgJoined)
	}
	if d.member != nil {
		return errdefs.Unavailable("this node already holds a manager's membership (member.json); restart hushd to resume it")
	}
	if len(req.RemoteAddrs) == 0 {
		return errdefs.BadRequest("at least 1 RemoteAddr is required to join")
	}
	if req.DataPathAddr != "" {
		return errdefs.BadRequest("DataPathAddr is not supported by hush: it runs no overlay data path")
	}
	if req.JoinToken == "" {
		// Swarm sends the empty token and its manager refuses it with this
		// text; hush refuses it here, before the CA is fetched unpinned.
		return errdefs.InvalidArgument(msgBadJoinToken)
	}
	tok, err := pki.ParseToken(req.JoinToken)
	if err != nil {
		return err
	}
	avail, err := joinAvailability(req.Availability)
	if err != nil {
		return err
	}
	// Before anything is sent, as dockerd resolves them: an interface's
	// name is its address, and anything else neither IP nor interface is
	// refused rather than replaced by the listen IP.
	reqListen, reqAdv, err := cluster.ResolveJoinAddrs(req.ListenAddr, req.AdvertiseAddr)
	if err != nil {
		return err
	}
	adv := cmp.Or(reqAdv, d.advertiseFlag())
	plan, err := listenPlanFor(d.cfg.ListenAddr, reqListen, adv)
	if err != nil {
		return err
	}
	remote := req.RemoteAddrs[0]
	if _, _, err := net.SplitHostPort(remote); err != nil {
		remote = net.JoinHostPort(remote, "2377")
	}
	// A loopback advertise across hosts is not refused here: the token's
	// role is the manager's to tell, and a worker, dialled by no one, is
	// admitted with it. A manager join is refused by the manager, before
	// anything is admitted (checkAdvertisedReach).
	// Before anything is sent: a manager admitted whose dispatcher port is
	// taken would have its workers Down.
	if err := d.reserveDispatchLocked(plan); err != nil {
		return err
	}
	defer d.releaseUnservedDispatchLocked()
	jctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	// The CA first, unverified, and trusted only once it matches the
	// token's digest: nothing else is sent before.
	bundle, err := fetchCA(jctx, remote)
	if err != nil {
		return err
	}
	roots, err := pki.VerifyCA(tok, bundle, time.Now())
	if err != nil {
		return err
	}
	key, csr, err := d.joinKey()
	if err != nil {
		return err
	}
	// Without a listen address the node can only be a worker: it sends no
	// peer URL, and the manager refuses it a manager token by name.
	peerURL, addr := "", workerAddr(cmp.Or(adv, d.cfg.AdvertiseAddr))
	if plan.enabled() {
		peerURL, _ = plan.peerURLs()
		addr = plan.Advertise
	}
	host, _ := os.Hostname()
	resp, err := callJoin(jctx, remote, roots, &joinRequest{Token: req.JoinToken, CSR: csr, NodeID: d.nodeID, Hostname: host,
		Addr: addr, PeerURL: peerURL, Availability: avail, External: d.externalRef()})
	if err != nil {
		return err
	}
	// The manager decides the role (the token's secret says it, not the
	// joiner); a worker answer carries no master key.
	role := pki.RoleManager
	if resp.Role == roleWorker {
		role = pki.RoleWorker
	}
	if err := checkJoinAnswer(resp, bundle, roots, key, d.nodeID, role); err != nil {
		return err
	}
	if resp.Role == roleWorker {
		return d.enterWorkerLocked(ctx, key, resp, remote, plan)
	}
	if err := d.checkSwarmStore(resp.External); err != nil {
		return err
	}
	mk, err := unwrapMasterKey(key, d.nodeID, resp)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			mk.Destroy()
		}
	}()
	if err := d.plainKey.Store(mk); err != nil {
		return fmt.Errorf("master key: %w", err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		return err
	}
	d.keys.Set(kr)
	ms := &memberState{Listen: plan, ClusterID: resp.ClusterID, CertPEM: string(resp.CertPEM), CAPEM: string(resp.CAPEM),
		Join: true, InitialCluster: resp.InitialCluster, External: resp.External}
	err = d.enterMemberLocked(ctx, ms, key, true, resp.Raft)
	if d.member == ms {
		d.dropJoinKey() // sealed in member.json now
	}
	if err != nil {
		return err
	}
	// As in Swarm, the join answers once the node is a full manager: the
	// manager promotes it when it has caught up, and the next node may
	// join only then (etcd admits one learner at a time).
	if err := d.awaitVoter(ctx); err != nil {
		return err
	}
	if err := d.activateLocked(mk); err != nil {
		return err
	}
	ok = true
	// activateLocked made the keyring the node runs with.
	kr.Destroy()
	d.log.Info("joined the swarm as a manager", "cluster", resp.ClusterID, "member", resp.MemberID)
	if err := d.startJoinServiceLocked(); err != nil {
		return err
	}
	d.awaitSelfReady(ctx)
	return nil
}

// awaitSelfReady waits (bounded by joinReadyWait) until the orchestrator's
// leader has recorded this manager Ready, which its own presence claim
// brings about: as Swarm's, a join answers once the node is Ready.
func (d *Daemon) awaitSelfReady(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, joinReadyWait)
	defer cancel()
	if !d.awaitRecordedReady(ctx, d.nodeID) {
		d.log.Warn("joined, but not recorded Ready yet", "waited", joinReadyWait)
	}
}

// awaitQuorum waits (bounded) until the member has caught up with a
// quorum of the cluster.
func (d *Daemon) awaitQuorum(ctx context.Context) error {
	select {
	case <-d.store.Ready():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(quorumWait):
		return errdefs.Unavailable("The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.")
	}
}

// awaitVoter polls (bounded by quorumWait) until this member votes.
func (d *Daemon) awaitVoter(ctx context.Context) error {
	deadline := time.Now().Add(quorumWait)
	for {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		voter, err := d.store.Members().IsVoter(lctx)
		cancel()
		if voter {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errdefs.Unavailable("this node was not promoted to a voting manager within %s", quorumWait)
			}
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// quorumWait bounds how long a manager waits for its cluster's quorum at
// join and at start.
const quorumWait = 90 * time.Second

// fetchCA reads the manager's CA bundle without verifying its TLS
// certificate (the node has no root to verify it with yet); VerifyCA
// decides whether the bundle is trusted.
func fetchCA(ctx context.Context, remote string) ([]byte, error) {
	cli := &http.Client{CheckRedirect: noRedirect, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, //nolint:gosec // pinned by the token's digest (VerifyCA)
	}}}
	defer cli.CloseIdleConnections()
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+remote+joinCAPath, nil)
	if err != nil {
		return nil, errdefs.BadRequest("invalid remote address %q", remote)
	}
	b, err := joinCall(cli, r, remote, maxCABundle+1)
	if err != nil {
		return nil, err
	}
	if len(b) > maxCABundle {
		return nil, errdefs.Unavailable("the CA bundle from %s exceeds %d bytes", remote, maxCABundle)
	}
	return b, nil
}

// callJoin sends the join request over TLS verified under the pinned
// roots, to a server that must show a manager's certificate.
func callJoin(ctx context.Context, remote string, roots []*x509.Certificate, req *joinRequest) (*joinResponse, error) {
	cli := &http.Client{CheckRedirect: noRedirect, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: pki.TrustPool(roots...), ServerName: string(pki.RoleManager),
	}}}
	defer cli.CloseIdleConnections()
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+remote+joinPath, bytes.NewReader(body))
	if err != nil {
		return nil, errdefs.BadRequest("invalid remote address %q", remote)
	}
	r.Header.Set("Content-Type", "application/json")
	b, err := joinCall(cli, r, remote, 4*maxCABundle)
	if err != nil {
		return nil, err
	}
	var out joinResponse
	if err := json.Unmarshal(b, &out); err != nil || !identity.Valid(out.ClusterID) || out.Role != roleWorker && out.External == nil && (len(out.InitialCluster) == 0 ||
		!slices.ContainsFunc(out.InitialCluster, func(p store.Peer) bool { return p.PeerURL == req.PeerURL })) {
		return nil, errdefs.Unavailable("the manager at %s sent a malformed join answer", remote)
	}
	return &out, nil
}

// checkJoinAnswer accepts only an answer made for this node: its own key
// certified as a manager under the pinned roots, in its node ID and the
// answer's cluster, with the very CA bundle the token pinned (member.json
// keeps it as the roots etcd's peers are verified under).
func checkJoinAnswer(resp *joinResponse, bundle []byte, roots []*x509.Certificate, key *ecdsa.PrivateKey, nodeID string, role pki.Role) error {
	bad := func(what string) error {
		return errdefs.Unavailable("the manager's join answer holds %s: not joining", what)
	}
	if !bytes.Equal(resp.CAPEM, bundle) {
		return bad("a CA bundle other than the one the join token pins")
	}
	cert, err := pki.TLSCertificate(resp.CertPEM, key)
	if err != nil {
		return bad("no certificate of this node's key")
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return bad("a malformed certificate chain")
		}
		inter.AddCert(c)
	}
	chains, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pki.TrustPool(roots...), Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return bad("a certificate the pinned CA did not issue")
	}
	id, err := pki.PeerIdentity(tls.ConnectionState{VerifiedChains: chains}, resp.ClusterID)
	if err != nil || id.NodeID != nodeID || id.Role != role {
		return bad("a certificate that is not this node's " + string(role) + " certificate")
	}
	return nil
}

// noRedirect keeps the join calls on the address the user gave: a
// followed redirect would resend the join token wherever it points, plain
// HTTP included. The redirect answer is then a refusal.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// joinCall sends r to the manager and reads at most limit bytes of its
// answer; a refusal comes back as the manager's error.
func joinCall(cli *http.Client, r *http.Request, remote string, limit int64) ([]byte, error) {
	resp, err := cli.Do(r)
	if err != nil {
		return nil, errdefs.Unavailable("could not reach the manager at %s: %v", remote, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, errdefs.Unavailable("reading the answer of the manager at %s: %v", remote, err)
	}
	if resp.StatusCode != http.StatusOK {
		var je joinError
		if json.Unmarshal(b, &je) == nil && je.Message != "" {
			return nil, je.err()
		}
		return nil, errdefs.Unavailable("the manager at %s answered %s", remote, resp.Status)
	}
	return b, nil
}
