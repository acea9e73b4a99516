package daemon

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

// noteNoEffect warns only about settings hush does not act on: a changed
// CAConfig.NodeCertExpiry is honoured (the certificates issued from then
// on carry it), so it is not one of them.
func TestNoteNoEffectFields(t *testing.T) {
	base := func() *cluster.Cluster {
		c := &cluster.Cluster{Spec: cluster.DefaultSpec()}
		c.Network = cluster.Network{ListenAddr: "0.0.0.0:2377", DataPathPort: cluster.DefaultDataPathPort}
		return c
	}
	for _, tt := range []struct {
		name   string
		change func(c *cluster.Cluster)
		warned string // "" when nothing may be logged
	}{
		{"node certificate expiry", func(c *cluster.Cluster) { c.Spec.CAConfig.NodeCertExpiry = 48 * time.Hour }, ""},
		{"external CA", func(c *cluster.Cluster) {
			c.Spec.CAConfig.ExternalCAs = []*swarm.ExternalCA{{Protocol: "cfssl", URL: "https://ca.example"}}
		}, "CAConfig.ExternalCAs"},
		{"nothing", func(*cluster.Cluster) {}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			d := &Daemon{log: slog.New(slog.NewTextHandler(&buf, nil))}
			before, after := base(), base()
			tt.change(after)
			d.noteNoEffect(before, after)
			got := buf.String()
			if tt.warned == "" && got != "" {
				t.Fatalf("warned about an honoured setting: %s", got)
			}
			if tt.warned != "" && !strings.Contains(got, "field="+tt.warned) {
				t.Fatalf("no warning naming %s: %q", tt.warned, got)
			}
		})
	}
}

// life is a certificate's validity from its issue (NotBefore is backdated).
func life(leafNotBefore, leafNotAfter time.Time) time.Duration {
	return leafNotAfter.Sub(leafNotBefore.Add(pki.Backdate))
}

// CAConfig.NodeCertExpiry set by an update is what the certificates
// issued afterwards carry: a join's and a renewal's.
func TestNodeCertExpiryHonoured(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t, beforeJoin(func(m *Daemon) {
		c := getCluster(t, m)
		spec := c.Spec
		spec.CAConfig.NodeCertExpiry = 48 * time.Hour
		if err := m.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
			t.Fatal(err)
		}
	}))
	joined := w.cert.Load()
	if got := life(joined.Leaf.NotBefore, joined.Leaf.NotAfter); got != 48*time.Hour {
		t.Fatalf("joined worker's certificate lives %s, want 48h", got)
	}
	// The manager's own certificate, issued before the update, is renewed
	// with the new lifetime.
	renewed(t, m, m.cfg.ListenAddr)
	if got := life(m.cert.Load().Leaf.NotBefore, m.cert.Load().Leaf.NotAfter); got != 48*time.Hour {
		t.Fatalf("renewed manager certificate lives %s, want 48h", got)
	}
	c := getCluster(t, m)
	spec := c.Spec
	spec.CAConfig.NodeCertExpiry = 36 * time.Hour
	if err := m.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	w.skew.Store(int64(renewSkew(joined)))
	waitUntil(t, "the worker renews", func() bool { return w.cert.Load().Leaf.SerialNumber.Cmp(joined.Leaf.SerialNumber) != 0 })
	w.skew.Store(0)
	if got := life(w.cert.Load().Leaf.NotBefore, w.cert.Load().Leaf.NotAfter); got != 36*time.Hour {
		t.Fatalf("renewed worker certificate lives %s, want 36h", got)
	}
}

// A manager issues a node at most IssueBurst certificates at once
// through the node's sync, keyed by the node ID of the certificate it
// calls with; beyond that the node is told, by name, that it is rate
// limited and when to retry, while its role queries are still answered.
func TestRenewalRateLimited(t *testing.T) {
	ctx := context.Background()
	_, w, _ := managerAndWorker(t, hourlySyncBurst2())
	v, csr := syncViewAndCSR(t, w)
	// Refused requests (a CSR that does not parse) give their issue back:
	// retries of a failing request do not use up the node's renewals.
	for range 3 {
		if _, err := w.callSync(ctx, v, &syncRequest{CSR: []byte("not a CSR")}); err == nil || strings.Contains(err.Error(), "rate limited") {
			t.Fatalf("a malformed CSR: %v, want its own refusal", err)
		}
	}
	for i := range 2 {
		if _, err := w.callSync(ctx, v, &syncRequest{CSR: csr}); err != nil {
			t.Fatalf("renewal %d within the burst: %v", i, err)
		}
	}
	_, err := w.callSync(ctx, v, &syncRequest{CSR: csr})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "rate limited") || !strings.Contains(err.Error(), w.nodeID) {
		t.Fatalf("a renewal beyond the burst: %v, want a precondition naming the node and the rate limit", err)
	}
	if ans, err := w.callSync(ctx, v, &syncRequest{}); err != nil || ans.Role != roleWorker {
		t.Fatalf("the role query of a rate-limited node: %+v %v", ans, err)
	}
}

// A promotion refused after its certificate was signed (here: another
// learner is catching up, so the learner add is refused) has cost a
// signature and a stored manager-certificate record: it keeps its issue,
// so a node retrying such a request is rate limited like any other, and
// the records it leaves stay bounded by the burst.
func TestPromotionRefusedAfterIssueKeepsItsIssue(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t, hourlySyncBurst2())
	// The worker's own sync loop would promote it too: the test calls.
	w.syncStop()
	w.syncDone.Wait()
	// A learner that never starts: etcd admits one learner at a time.
	if _, _, err := m.store.Members().AddLearner(ctx, "blocker", "https://127.0.0.1:1"); err != nil {
		t.Fatalf("adding the blocking learner: %v", err)
	}
	if err := setRole(ctx, m, w.nodeID, swarm.NodeRoleManager); err != nil {
		t.Fatal(err)
	}
	v, csr := syncViewAndCSR(t, w)
	req := &syncRequest{CSR: csr, PeerURL: "https://" + nextPort(w.listen.Advertise)}
	for i := range 2 {
		_, err := w.callSync(ctx, v, req)
		if err == nil || strings.Contains(err.Error(), "rate limited") {
			t.Fatalf("promotion %d behind another learner: %v, want the learner refusal", i, err)
		}
	}
	_, err := w.callSync(ctx, v, req)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "rate limited") {
		t.Fatalf("a third signed-then-refused promotion within a burst of 2: %v, want rate limited", err)
	}
	recs, err := m.store.Table(managerCertsTable).List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) > 3 { // m's own and the two refused promotions'
		t.Fatalf("%d manager certificate records after a burst of 2", len(recs))
	}
}

// expire gives d a certificate of its own key that expired an hour ago,
// signed by the cluster CA of m, as a node down past its certificate's
// end would hold.
func expire(t *testing.T, m, d *Daemon) *x509.Certificate {
	t.Helper()
	return holdIssued(t, m, d, time.Now().Add(-2*time.Hour), pki.MinNodeCertExpiry)
}

// holdIssued gives d a certificate of its own key and role issued at
// issuedAt for life by the cluster CA of m (capped at the root's end).
func holdIssued(t *testing.T, m, d *Daemon, issuedAt time.Time, life time.Duration) *x509.Certificate {
	t.Helper()
	c := getCluster(t, m)
	roots, err := pki.ParseRootBundle([]byte(c.CACert), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := c.CASigner(&m.keys)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(roots[0], signer, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	csr, err := pki.NewCSR(d.nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.Issue(pki.IssueRequest{CSR: csr, NodeID: d.nodeID, ClusterID: c.ID, Role: certRole(d.cert.Load().Leaf),
		Expiry: life, Now: issuedAt})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.TLSCertificate(iss.PEM, d.nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	d.cert.Store(cert)
	return iss.Leaf
}

// A node whose certificate expired cannot ask a manager (their TLS
// refuses it). A manager whose store answers reissues its own; a worker
// stops asking and reports why, by name, in docker info's Swarm.Error
// (Swarm's node only logs "failed to renew the certificate" and fails at
// its next start), and the managers list it Down.
func TestExpiredCertificate(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t, beforeJoin(func(m *Daemon) {
		c := getCluster(t, m)
		spec := c.Spec
		spec.Dispatcher.HeartbeatPeriod = time.Second
		if err := m.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
			t.Fatal(err)
		}
	}))

	dead := expire(t, m, m)
	waitUntil(t, "the manager reissues its expired certificate", func() bool {
		return m.cert.Load().Leaf.NotAfter.After(time.Now()) && m.cert.Load().Leaf.SerialNumber.Cmp(dead.SerialNumber) != 0
	})
	var ms memberState
	readJSON(t, m.memberPath(), &ms)
	if !sameSerial(t, ms.CertPEM, m.cert.Load()) || m.CertProblem() != "" {
		t.Fatalf("member.json does not hold the reissued certificate, or a problem is reported: %q", m.CertProblem())
	}

	dead = expire(t, m, w)
	waitUntil(t, "the worker reports its expired certificate", func() bool { return w.CertProblem() != "" })
	si, ok := w.WorkerInfo()
	if !ok || si.Error != w.CertProblem() || !strings.Contains(si.Error, "expired at") || !strings.Contains(si.Error, "docker swarm leave --force") {
		t.Fatalf("docker info's Swarm.Error on the worker: %q", si.Error)
	}
	if w.cert.Load().Leaf.SerialNumber.Cmp(dead.SerialNumber) != 0 {
		t.Fatal("the worker's expired certificate was replaced although no manager may renew it")
	}
	waitUntil(t, "node ls shows the worker Down", func() bool {
		_, others, _, err := clusterNodes{m}.Managers(ctx)
		return err == nil && len(others) == 1 && others[0].ID == w.nodeID && others[0].Status.State == swarm.NodeStateDown
	})
}

// A certificate's renewal point is drawn for that certificate: one
// renewed into a certificate of the same end (a lifetime reaching past
// the root's, so both end with the root) gets a point of its own, not
// the previous one's, which had passed, so the node renews once, not at
// every sync round.
func TestRenewalPointPerCertificate(t *testing.T) {
	ctx := context.Background()
	m, w, c := managerAndWorker(t)
	c = getCluster(t, m)
	spec := c.Spec
	spec.CAConfig.NodeCertExpiry = 30 * 365 * 24 * time.Hour // past the root's 20 years
	if err := m.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	roots, err := pki.ParseRootBundle([]byte(c.CACert), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// Issued a century ago and ending with the root: past its renewal
	// point, whichever is drawn.
	old := holdIssued(t, m, w, time.Now().Add(-100*365*24*time.Hour), 150*365*24*time.Hour)
	if !old.NotAfter.Equal(roots[0].NotAfter) {
		t.Fatalf("the held certificate ends %s, want the root's end %s", old.NotAfter, roots[0].NotAfter)
	}
	waitUntil(t, "the worker renews", func() bool { return w.cert.Load().Leaf.SerialNumber.Cmp(old.SerialNumber) != 0 })
	renewed := w.cert.Load().Leaf
	if !renewed.NotAfter.Equal(old.NotAfter) {
		t.Fatalf("the renewed certificate ends %s, want the root's end %s", renewed.NotAfter, old.NotAfter)
	}
	deadline := time.Now().Add(20 * fastSync)
	for time.Now().Before(deadline) {
		if cur := w.cert.Load().Leaf; cur.SerialNumber.Cmp(renewed.SerialNumber) != 0 {
			t.Fatalf("the worker renewed again (serial %x after %x), its new certificate years from its renewal point", cur.SerialNumber, renewed.SerialNumber)
		}
		time.Sleep(fastSync / 2)
	}
}

// The expired certificate's problem is about that certificate: once the
// node leaves (the way out it names) and joins again, docker info shows
// none, without waiting for a sync round.
func TestCertProblemClearedByRejoin(t *testing.T) {
	ctx := context.Background()
	// No sync round but the test's: the loop waits an hour after its
	// first, at start.
	m, w, c := managerAndWorker(t, withWorker(func(cfg *Config) { cfg.RoleSyncPeriod = time.Hour }))
	expire(t, m, w)
	if err := w.syncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if w.CertProblem() == "" {
		t.Fatal("no problem reported for the expired certificate")
	}
	if err := w.Leave(ctx, true); err != nil {
		t.Fatalf("leave: %v", err)
	}
	if p := w.CertProblem(); p != "" {
		t.Fatalf("a node that left reports its old certificate's problem: %q", p)
	}
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{m.cfg.ListenAddr}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join again: %v", err)
	}
	if si, ok := w.WorkerInfo(); !ok || si.Error != "" {
		t.Fatalf("docker info's Swarm.Error after the node joined again: %q", si.Error)
	}
}
