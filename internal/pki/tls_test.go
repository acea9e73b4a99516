package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// params is a node's TLS view: its certificate, the roots it trusts now,
// its cluster and its refusal list.
func params(cluster string, n node, roots []*x509.Certificate, r *Refusals, now func() time.Time) TLSParams {
	p := TLSParams{
		ClusterID: cluster,
		Cert:      func() (*tls.Certificate, error) { return n.cert, nil },
		Roots:     func() *x509.CertPool { return TrustPool(roots...) },
		Now:       now,
	}
	if r != nil {
		p.Refuse = r.Check
	}
	return p
}

type result struct {
	srvErr, cliErr     error
	srvState, cliState tls.ConnectionState
}

// handshake runs one TLS connection over loopback between a server with
// srv and a client with cli; the server writes a byte once it accepted the
// client, so a refusal on either side shows as cliErr.
func handshake(t *testing.T, srv, cli TLSParams) result {
	t.Helper()
	scfg, err := srv.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := cli.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return handshakeConfigs(t, scfg, ccfg)
}

func handshakeConfigs(t testing.TB, scfg, ccfg *tls.Config) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var res result
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			res.srvErr = err
			return
		}
		defer c.Close()
		tc := tls.Server(c, scfg)
		if res.srvErr = tc.HandshakeContext(ctx); res.srvErr == nil {
			res.srvState = tc.ConnectionState()
			_, res.srvErr = tc.Write([]byte{1})
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, ccfg)
	if res.cliErr = tc.HandshakeContext(ctx); res.cliErr == nil {
		res.cliState = tc.ConnectionState()
		_, res.cliErr = tc.Read(make([]byte, 1))
	}
	<-done
	return res
}

func TestMutualTLS(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now.Add(-48*time.Hour))
	foreign := newTestCA(t, now.Add(-48*time.Hour))
	cluster := newID(t)
	mgr := issueNode(t, ca.CA, cluster, RoleManager, 0, now)
	wrk := issueNode(t, ca.CA, cluster, RoleWorker, 0, now)
	gone := issueNode(t, ca.CA, cluster, RoleWorker, 0, now)
	stranger := issueNode(t, foreign.CA, cluster, RoleWorker, 0, now)
	strangeMgr := issueNode(t, foreign.CA, cluster, RoleManager, 0, now)
	otherCluster := issueNode(t, ca.CA, newID(t), RoleWorker, 0, now)
	otherClusterMgr := issueNode(t, ca.CA, newID(t), RoleManager, 0, now)
	expired := issueNode(t, ca.CA, cluster, RoleWorker, time.Hour, now.Add(-3*time.Hour))
	var refusals Refusals
	if err := refusals.Remove(gone.id, now); err != nil {
		t.Fatal(err)
	}
	roots := []*x509.Certificate{ca.Root()}
	at := func(d time.Duration) func() time.Time { return func() time.Time { return now.Add(d) } }

	for _, tc := range []struct {
		name      string
		srv, cli  node
		srvClock  func() time.Time
		srvRoots  []*x509.Certificate
		refusedBy string // "" both accept; "server" or "client"
		errHas    string
	}{
		{name: "worker to manager", srv: mgr, cli: wrk},
		{name: "manager to manager", srv: mgr, cli: mgr},
		{name: "client from another CA", srv: mgr, cli: stranger, refusedBy: "server", errHas: "certificate signed by unknown authority"},
		{name: "server from another CA", srv: strangeMgr, cli: wrk, refusedBy: "client", errHas: "certificate signed by unknown authority"},
		{name: "client expired", srv: mgr, cli: expired, refusedBy: "server", errHas: "expired"},
		{name: "client expired by the server's clock", srv: mgr, cli: wrk, srvClock: at(91 * 24 * time.Hour), refusedBy: "server", errHas: "expired"},
		{name: "removed node", srv: mgr, cli: gone, refusedBy: "server", errHas: "was removed from the cluster"},
		{name: "client of another cluster", srv: mgr, cli: otherCluster, refusedBy: "server", errHas: "another cluster"},
		{name: "server of another cluster", srv: otherClusterMgr, cli: wrk, refusedBy: "client", errHas: "another cluster"},
		{name: "server is a worker", srv: wrk, cli: mgr, refusedBy: "client", errHas: "swarm-manager"},
		{name: "server trusts only another CA", srv: mgr, cli: wrk, srvRoots: []*x509.Certificate{foreign.Root()}, refusedBy: "server", errHas: "unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sr := roots
			if tc.srvRoots != nil {
				sr = tc.srvRoots
			}
			srv := params(cluster, tc.srv, sr, &refusals, tc.srvClock)
			cli := params(cluster, tc.cli, roots, &refusals, nil)
			res := handshake(t, srv, cli)
			switch tc.refusedBy {
			case "":
				if res.srvErr != nil || res.cliErr != nil {
					t.Fatalf("refused: server %v, client %v", res.srvErr, res.cliErr)
				}
				// Each side knows the other only from its certificate.
				got, err := PeerIdentity(res.srvState, cluster)
				if err != nil || got != (Identity{NodeID: tc.cli.id, Role: tc.cli.role, ClusterID: cluster}) {
					t.Fatalf("server sees %+v, %v", got, err)
				}
				got, err = PeerIdentity(res.cliState, cluster)
				if err != nil || got != (Identity{NodeID: tc.srv.id, Role: RoleManager, ClusterID: cluster}) {
					t.Fatalf("client sees %+v, %v", got, err)
				}
				if res.srvState.Version != tls.VersionTLS13 {
					t.Fatalf("version %x", res.srvState.Version)
				}
			case "server":
				if res.srvErr == nil || !strings.Contains(res.srvErr.Error(), tc.errHas) {
					t.Fatalf("server: %v, want %q", res.srvErr, tc.errHas)
				}
				if res.cliErr == nil {
					t.Fatal("the client thinks it got in")
				}
			case "client":
				if res.cliErr == nil || !strings.Contains(res.cliErr.Error(), tc.errHas) {
					t.Fatalf("client: %v, want %q", res.cliErr, tc.errHas)
				}
				if res.srvState.HandshakeComplete {
					t.Fatal("the server completed a handshake the client refused")
				}
			}
		})
	}
}

// A node whose certificate names it a manager of this cluster only
// because its CSR said so is still what the CA decided: a worker.
func TestForgedCSRSubjectIgnoredOverTLS(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	cluster := newID(t)
	mgr := issueNode(t, ca.CA, cluster, RoleManager, 0, now)
	key, _ := NewNodeKey()
	self := newID(t)
	forged := csrWith(t, key, &x509.CertificateRequest{
		Subject:  pkixName(mgr.id, "swarm-manager", cluster),
		DNSNames: []string{"swarm-manager"},
	})
	iss, err := ca.Issue(IssueRequest{CSR: forged, NodeID: self, ClusterID: cluster, Role: RoleWorker, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := TLSCertificate(iss.PEM, key)
	if err != nil {
		t.Fatal(err)
	}
	forger := node{id: self, role: RoleWorker, cert: cert}
	roots := []*x509.Certificate{ca.Root()}
	res := handshake(t, params(cluster, mgr, roots, nil, nil), params(cluster, forger, roots, nil, nil))
	if res.srvErr != nil || res.cliErr != nil {
		t.Fatal(res.srvErr, res.cliErr)
	}
	got, err := PeerIdentity(res.srvState, cluster)
	if err != nil || got.NodeID != self || got.Role != RoleWorker {
		t.Fatalf("server sees %+v (%v), want worker %s", got, err, self)
	}
	// Serving with that certificate, the forger is no manager to clients.
	res = handshake(t, params(cluster, forger, roots, nil, nil), params(cluster, mgr, roots, nil, nil))
	if res.cliErr == nil {
		t.Fatal("a client accepted a worker as a manager")
	}
}

// Identity comes from the verified chain only: a state with peer
// certificates that were not verified names nobody.
func TestPeerIdentityNeedsVerifiedChain(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	cluster := newID(t)
	n := issueNode(t, ca.CA, cluster, RoleManager, 0, now)
	for _, tc := range []struct {
		name string
		cs   tls.ConnectionState
		want string
	}{
		{"no handshake", tls.ConnectionState{}, "peer certificate not verified"},
		{"unverified peer certificate", tls.ConnectionState{PeerCertificates: []*x509.Certificate{n.cert.Leaf}}, "peer certificate not verified"},
		{"empty chain", tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{}}}, "peer certificate not verified"},
		{"a root as peer", tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{ca.Root()}}}, "peer certificate is not a node certificate"},
		{"verified, this cluster", tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{n.cert.Leaf, ca.Root()}}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := PeerIdentity(tc.cs, cluster)
			if tc.want == "" {
				if err != nil || id.NodeID != n.id {
					t.Fatalf("%+v %v", id, err)
				}
				return
			}
			if err == nil || err.Error() != tc.want || !errdefs.Is(err, errdefs.ErrUnauthorized) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := PeerIdentity(tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{n.cert.Leaf}}}, newID(t)); err == nil {
		t.Fatal("a certificate of another cluster accepted")
	}
}

// A root rotation as Swarm does it: the new root, cross-signed by the old,
// issues; nodes on either certificate talk while both are trusted; once it
// completes, old certificates are refused.
func TestRootRotation(t *testing.T) {
	now := time.Now()
	old := newTestCA(t, now.Add(-48*time.Hour))
	next := newTestCA(t, now.Add(-time.Hour))
	cluster := newID(t)
	cross, err := CrossSign(old.CA, next.Root(), now)
	if err != nil {
		t.Fatal(err)
	}
	rotating, err := NewCA(next.Root(), next.key, cross)
	if err != nil {
		t.Fatal(err)
	}
	oldMgr := issueNode(t, old.CA, cluster, RoleManager, 0, now.Add(-24*time.Hour))
	oldWrk := issueNode(t, old.CA, cluster, RoleWorker, 0, now.Add(-24*time.Hour))
	start := now
	newMgr := issueNode(t, rotating, cluster, RoleManager, 0, now)
	newWrk := issueNode(t, rotating, cluster, RoleWorker, 0, now)
	if len(newWrk.cert.Certificate) != 2 {
		t.Fatalf("a certificate issued during rotation carries %d certificates, want leaf and cross-signed root", len(newWrk.cert.Certificate))
	}
	oldOnly := []*x509.Certificate{old.Root()}
	both := []*x509.Certificate{old.Root(), next.Root()}
	newOnly := []*x509.Certificate{next.Root()}
	var done Refusals
	done.RefuseIssuedBefore(start)

	for _, tc := range []struct {
		name               string
		srv, cli           node
		srvRoots, cliRoots []*x509.Certificate
		srvRefusals        *Refusals
		ok                 bool
	}{
		{"new worker to a manager that trusts only the old root", oldMgr, newWrk, oldOnly, both, nil, true},
		{"old worker to a new manager", newMgr, oldWrk, both, oldOnly, nil, true},
		{"new worker to new manager, both trusting only the new root", newMgr, newWrk, newOnly, newOnly, nil, true},
		{"old worker once the old root is dropped", newMgr, oldWrk, newOnly, oldOnly, nil, false},
		{"old worker to a manager still trusting both, after completion", newMgr, oldWrk, both, oldOnly, &done, false},
		{"new worker to a manager still trusting both, after completion", newMgr, newWrk, both, both, &done, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := handshake(t, params(cluster, tc.srv, tc.srvRoots, tc.srvRefusals, nil), params(cluster, tc.cli, tc.cliRoots, nil, nil))
			if ok := res.srvErr == nil && res.cliErr == nil; ok != tc.ok {
				t.Fatalf("accepted %v, want %v (server %v, client %v)", ok, tc.ok, res.srvErr, res.cliErr)
			}
		})
	}
}

// The trust and certificate are read per handshake: a rotation or a
// renewal takes effect without a new listener.
func TestServerReadsCurrentState(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	other := newTestCA(t, now)
	cluster := newID(t)
	mgr := issueNode(t, ca.CA, cluster, RoleManager, 0, now)
	wrk := issueNode(t, ca.CA, cluster, RoleWorker, 0, now)
	trust := []*x509.Certificate{other.Root()}
	srv := TLSParams{
		ClusterID: cluster,
		Cert:      func() (*tls.Certificate, error) { return mgr.cert, nil },
		Roots:     func() *x509.CertPool { return TrustPool(trust...) },
	}
	scfg, err := srv.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	ccfg, _ := params(cluster, wrk, []*x509.Certificate{ca.Root()}, nil, nil).ClientConfig()
	if res := handshakeConfigs(t, scfg, ccfg); res.srvErr == nil {
		t.Fatal("accepted under a root it does not trust")
	}
	trust = []*x509.Certificate{ca.Root()}
	if res := handshakeConfigs(t, scfg, ccfg); res.srvErr != nil || res.cliErr != nil {
		t.Fatalf("the new trust was not read: %v %v", res.srvErr, res.cliErr)
	}
	certErr := errors.New("no certificate yet")
	srv.Cert = func() (*tls.Certificate, error) { return nil, certErr }
	scfg, _ = srv.ServerConfig()
	if res := handshakeConfigs(t, scfg, ccfg); !errors.Is(res.srvErr, certErr) {
		t.Fatalf("server error %v", res.srvErr)
	}
}

func TestTLSVersionFloor(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	cluster := newID(t)
	mgr := issueNode(t, ca.CA, cluster, RoleManager, 0, now)
	wrk := issueNode(t, ca.CA, cluster, RoleWorker, 0, now)
	roots := []*x509.Certificate{ca.Root()}
	scfg, _ := params(cluster, mgr, roots, nil, nil).ServerConfig()
	ccfg, _ := params(cluster, wrk, roots, nil, nil).ClientConfig()
	ccfg.MinVersion, ccfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if res := handshakeConfigs(t, scfg, ccfg); res.srvErr == nil || !strings.Contains(res.srvErr.Error(), "version") {
		t.Fatalf("a TLS 1.2 client got in: %v", res.srvErr)
	}
	if _, err := (TLSParams{ClusterID: cluster}).ServerConfig(); err == nil {
		t.Fatal("a server config without certificate or roots")
	}
}
