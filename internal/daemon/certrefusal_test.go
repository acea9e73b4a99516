package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/dispatchnet"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/testutil/etcdtest"
	"github.com/moby/moby/api/types/swarm"
)

// peerGet asks m's etcd peer port /version under cert: nil when etcd's
// listener accepted the connection.
func peerGet(t *testing.T, m *Daemon, cert tls.Certificate) error {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(getCluster(t, m).CACert))
	cli := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "swarm-manager", MinVersion: tls.VersionTLS13}}}
	defer cli.CloseIdleConnections()
	adv, _ := m.listen.peerURLs()
	resp, err := cli.Get(adv + "/version")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// A promoted node's manager certificate is accepted by the other
// manager's etcd; once the node is demoted, that certificate is refused
// there (the revocation list), and it stays refused after the node is
// removed; the remaining manager's own certificate is still accepted.
func TestEtcdRefusesDemotedCertificate(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t)
	promoted(t, m, w, "the promoted node votes")
	old := *w.cert.Load()
	own := *m.cert.Load()
	if err := peerGet(t, m, old); err != nil {
		t.Fatalf("a current manager certificate refused: %v", err)
	}

	demoted(t, m, w, "the demoted node is a worker")
	waitUntil(t, "the demoted node's manager certificate refused by etcd", func() bool { return peerGet(t, m, old) != nil })
	if err := peerGet(t, m, own); err != nil {
		t.Fatalf("the remaining manager's certificate refused: %v", err)
	}

	if _, err := (clusterNodes{m}).RemoveNode(ctx, w.nodeID, true); err != nil {
		t.Fatalf("node rm: %v", err)
	}
	serials, err := refusedManagerSerials(ctx, m.store, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(serials, func(s *big.Int) bool { return s.Text(16) == old.Leaf.SerialNumber.Text(16) }) {
		t.Fatalf("the removed node's manager certificate is not refused: %v", serials)
	}
	if err := peerGet(t, m, old); err == nil {
		t.Fatal("the removed node's manager certificate accepted by etcd")
	}
	// The list is kept for the member's next start.
	crl, err := x509.ParseRevocationList(m.savedCRL())
	if err != nil {
		t.Fatalf("saved list: %v", err)
	}
	if !slices.ContainsFunc(crl.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(old.Leaf.SerialNumber) == 0 }) {
		t.Fatal("the saved list does not name the refused certificate")
	}
	roots, err := pki.ParseRootBundle([]byte(getCluster(t, m).CACert), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(roots[0]); err != nil {
		t.Fatalf("the list is not signed by the cluster CA: %v", err)
	}
}

// On a manager of the user's etcd there is no member of hush's to give a
// revocation list (etcd's TLS is the user's): keepEtcdCRL signs and
// keeps none, but still tends the manager certificate records, which
// every manager certificate issued adds (and the join/CA service and the
// dispatcher read): an expired one is pruned, and it returns when
// stopped.
func TestKeepEtcdCRLExternal(t *testing.T) {
	srv := etcdtest.Start(t)
	m, _ := externalManager(t, srv, "/crl-ext", false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tbl := m.store.Table(managerCertsTable)
	val, _ := json.Marshal(managerCertRecord{Node: m.nodeID, NotBefore: time.Now().Add(-72 * time.Hour), NotAfter: time.Now().Add(-certPruneGrace - time.Hour)})
	if _, err := tbl.Create(ctx, "dead", "", val); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		m.keepEtcdCRL(ctx)
		close(done)
	}()
	waitUntil(t, "the expired record is pruned on an external manager", func() bool {
		ok, err := tbl.Exists(ctx, "dead")
		return err == nil && !ok
	})
	if _, err := os.Stat(m.crlPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an external manager kept a revocation list: %v", err)
	}
	cancel()
	waitUntil(t, "keepEtcdCRL returns once stopped", func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
}

// A manager a force-new-cluster dropped is no member of the new cluster:
// etcd refuses the manager certificates it held when it was dropped (as
// a removed node's), and accepts one issued after (it joined again).
func TestRefusedSerialsDroppedManager(t *testing.T) {
	ctx := context.Background()
	m := startWith(t, Config{DataDir: t.TempDir()})
	now := time.Now().UTC().Truncate(time.Second)
	put := func(serial string, notBefore time.Time) {
		t.Helper()
		val, _ := json.Marshal(managerCertRecord{Node: "dropped-node", NotBefore: notBefore, NotAfter: now.Add(24 * time.Hour)})
		if _, err := m.store.Table(managerCertsTable).Create(ctx, serial, "", val); err != nil {
			t.Fatal(err)
		}
	}
	put("a1", now.Add(-time.Hour))
	put("b2", now.Add(time.Hour))
	val, _ := json.Marshal(droppedRecord{By: m.nodeID, At: now})
	if _, err := m.store.Table(droppedTable).Create(ctx, "dropped-node", "", val); err != nil {
		t.Fatal(err)
	}
	serials, err := refusedManagerSerials(ctx, m.store, now)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, len(serials))
	for i, s := range serials {
		got[i] = s.Text(16)
	}
	if !slices.Equal(got, []string{"a1"}) {
		t.Fatalf("refused %v, want [a1] (the certificate held when dropped, not the later one)", got)
	}
}

// The manager certificate records are pruned once their certificates
// have been expired for the grace, at most maxCertWritesPerPass writes a
// pass; a record within the grace or unexpired stays, and a record of a
// node recorded as a worker is marked demoted (refused by serial).
func TestTendManagerCerts(t *testing.T) {
	ctx := context.Background()
	m := startWith(t, Config{DataDir: t.TempDir()})
	now := time.Now().UTC().Truncate(time.Second)
	tbl := m.store.Table(managerCertsTable)
	put := func(serial, node string, notAfter time.Time) {
		t.Helper()
		val, _ := json.Marshal(managerCertRecord{Node: node, NotBefore: notAfter.Add(-48 * time.Hour), NotAfter: notAfter})
		if _, err := tbl.Create(ctx, serial, "", val); err != nil {
			t.Fatal(err)
		}
	}
	const expired = maxCertWritesPerPass + 10
	for i := range expired {
		put(big.NewInt(int64(0x1000+i)).Text(16), m.nodeID, now.Add(-certPruneGrace-time.Minute))
	}
	put("a1", m.nodeID, now.Add(-time.Minute)) // expired, within the grace
	put("a2", m.nodeID, now.Add(time.Hour))    // valid
	ids := func() []string {
		t.Helper()
		objs, err := tbl.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, o := range objs {
			out = append(out, o.ID)
		}
		return out
	}
	pruned, marked, err := tendManagerCerts(ctx, m.store, now)
	if err != nil || pruned != maxCertWritesPerPass || marked != 0 {
		t.Fatalf("first pass: pruned %d marked %d (%v), want %d 0", pruned, marked, err, maxCertWritesPerPass)
	}
	if got := len(ids()); got != expired+2-maxCertWritesPerPass {
		t.Fatalf("%d records after the first pass, want %d", got, expired+2-maxCertWritesPerPass)
	}
	pruned, _, err = tendManagerCerts(ctx, m.store, now)
	if err != nil || pruned != expired-maxCertWritesPerPass {
		t.Fatalf("second pass pruned %d (%v), want %d", pruned, err, expired-maxCertWritesPerPass)
	}
	if got := ids(); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Fatalf("records left %v, want [a1 a2]", got)
	}
	// The records are of this node, a manager: nothing to mark, and a
	// further pass writes nothing.
	if pruned, marked, err := tendManagerCerts(ctx, m.store, now); err != nil || pruned+marked != 0 {
		t.Fatalf("an idle pass wrote %d %d (%v)", pruned, marked, err)
	}
}

// A node demoted and promoted again holds a new manager certificate,
// which etcd accepts; the one it held before its demotion stays refused
// (by serial), not accepted again because its node is a manager again.
func TestEtcdRefusesCertificateAfterRepromotion(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t)
	promoted(t, m, w, "the promoted node votes")
	first := *w.cert.Load()
	demoted(t, m, w, "the demoted node is a worker")
	promoted(t, m, w, "the node promoted again votes")
	second := *w.cert.Load()
	if second.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatal("the promotion kept the first manager certificate")
	}
	serials, err := refusedManagerSerials(ctx, m.store, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	has := func(c tls.Certificate) bool {
		return slices.ContainsFunc(serials, func(s *big.Int) bool { return s.Cmp(c.Leaf.SerialNumber) == 0 })
	}
	if !has(first) || has(second) {
		t.Fatalf("refused %v: the first manager certificate must be, the second not", serials)
	}
	waitUntil(t, "etcd refuses the certificate held before the demotion", func() bool { return peerGet(t, m, first) != nil })
	if err := peerGet(t, m, second); err != nil {
		t.Fatalf("the current manager certificate refused: %v", err)
	}
}

// The manager certificate a node held before its demotion stays refused
// after it is promoted again by the join/CA service too, not only by
// etcd: renewed there, it would buy a manager certificate of a new
// serial, which etcd accepts (the revocation undone), and its leave
// request would remove the node's member. The node's current
// certificate is still served.
func TestJoinServiceRefusesCertificateAfterRepromotion(t *testing.T) {
	ctx := context.Background()
	m, w, c := managerAndWorker(t)
	promoted(t, m, w, "the promoted node votes")
	first := w.cert.Load()
	demoted(t, m, w, "the demoted node is a worker")
	promoted(t, m, w, "the node promoted again votes")

	stale := syncView{cert: first, clusterID: c.ID, caPEM: c.CACert, addrs: []string{m.cfg.ListenAddr}}
	key, err := pki.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		req  syncRequest
	}{
		{"renewal", syncRequest{CSR: csr}},
		{"leave", syncRequest{Leave: true}},
		{"role query", syncRequest{}},
	} {
		ans, err := w.callSync(ctx, stale, &tt.req)
		if !errors.Is(err, errdefs.ErrUnauthorized) || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("%s with the certificate held before the demotion: %v (certificate issued: %t), want it refused as revoked", tt.name, err, ans != nil && len(ans.CertPEM) > 0)
		}
	}
	if !w.isVoter(ctx) {
		t.Fatal("the node's member is no voter any more")
	}
	w.mu.Lock()
	v, ok := w.syncViewLocked()
	w.mu.Unlock()
	if !ok {
		t.Fatal("the node has no sync view")
	}
	if ans, err := w.callSync(ctx, v, &syncRequest{}); err != nil || ans.Role != string(swarm.NodeRoleManager) {
		t.Fatalf("the node's current certificate: %+v %v", ans, err)
	}
}

// relayWith asks manager m's dispatcher, under cert, to relay the logs of
// a task of node: what another manager does for `service logs`.
func relayWith(t *testing.T, m *Daemon, cert tls.Certificate, node string) error {
	t.Helper()
	c := getCluster(t, m)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(c.CACert))
	params := pki.TLSParams{ClusterID: c.ID, Cert: func() (*tls.Certificate, error) { return &cert, nil },
		Roots: func() *x509.CertPool { return pool }}
	addr, err := dispatchAddr(m.listen.Advertise)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := dispatchnet.NewRelayer(params.ClientConfig, m.log).Logs(ctx, addr, node, "no-such-task", agent.LogOptions{})
	if rc != nil {
		rc.Close()
	}
	return err
}

// Relaying logs is for managers: the dispatcher refuses it under a
// manager certificate etcd refuses by serial — a demoted node's, also
// once the node is promoted again — and serves it under a current one.
func TestRelayRefusesRevokedManagerCertificate(t *testing.T) {
	m, w, _ := managerAndWorker(t)
	promoted(t, m, w, "the promoted node votes")
	first := *w.cert.Load()
	if err := relayWith(t, m, first, w.nodeID); errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("a current manager certificate refused: %v", err)
	}
	demoted(t, m, w, "the demoted node is a worker")
	if err := relayWith(t, m, first, w.nodeID); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("a demoted node's manager certificate relays logs: %v, want it refused", err)
	}
	promoted(t, m, w, "the node promoted again votes")
	if err := relayWith(t, m, first, w.nodeID); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("the manager certificate held before the demotion relays logs: %v, want it refused", err)
	}
	if err := relayWith(t, m, *w.cert.Load(), w.nodeID); errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("the node's current manager certificate refused: %v", err)
	}
}

// openSessionWith opens a dispatcher session at manager m under cert, as
// a worker agent does.
func openSessionWith(t *testing.T, m *Daemon, cert tls.Certificate) error {
	t.Helper()
	return openSessionFrom(t, m, cert, nil)
}

// openSessionFrom is openSessionWith over connections dial opens (nil:
// net.Dialer's).
func openSessionFrom(t *testing.T, m *Daemon, cert tls.Certificate, dial func(ctx context.Context, network, addr string) (net.Conn, error)) error {
	t.Helper()
	c := getCluster(t, m)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(c.CACert))
	params := pki.TLSParams{ClusterID: c.ID, Cert: func() (*tls.Certificate, error) { return &cert, nil },
		Roots: func() *x509.CertPool { return pool }}
	addr, err := dispatchAddr(m.listen.Advertise)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := dispatchnet.NewConnector(dispatchnet.ClientConfig{Managers: []string{addr}, TLS: params.ClientConfig, Logger: m.log, Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := conn.Open(ctx)
	if c, ok := s.(interface{ Close() }); err == nil && ok {
		c.Close()
	}
	return err
}

// A demoted node's old manager certificate is refused by etcd by serial;
// the dispatcher refuses it a session too: under it the session was the
// node's, its assignments (its tasks' secrets) sent to whoever held the
// old key, and the node's own session replaced. The node's worker
// certificate still opens one.
func TestDispatcherSessionRefusesRevokedManagerCertificate(t *testing.T) {
	m, w, _ := managerAndWorker(t)
	promoted(t, m, w, "the promoted node votes")
	first := *w.cert.Load()
	demoted(t, m, w, "the demoted node is a worker")
	if err := openSessionWith(t, m, first); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("a session under the demoted node's manager certificate: %v, want it refused", err)
	}
	if err := openSessionWith(t, m, *w.cert.Load()); err != nil {
		t.Fatalf("a session under the node's worker certificate: %v", err)
	}
}
