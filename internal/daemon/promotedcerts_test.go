package daemon

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

// A worker certificate is refused once its node has taken into use
// (held) a manager certificate issued after it: its promotion is
// complete. Until then (the manager certificate issued but its answer
// lost, or the node still starting its member) it is served, so that the
// node can ask again; a worker certificate issued after (the node demoted
// again) is served, also when it looks older by the clock (managers'
// clocks differ) or is of the same second: the record's key tells the
// node's current certificate. The dispatcher's check (cached) and the
// join/CA service's (read afresh for a CSR) agree.
func TestWorkerCertSupersededByPromotion(t *testing.T) {
	ctx := context.Background()
	base := time.Date(2026, 12, 8, 1, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return base.Add(time.Duration(s) * time.Second) }
	type rec struct {
		node          string
		notBefore     int
		held, demoted bool
	}
	const node, other = "node-w", "node-o"
	for _, tt := range []struct {
		name    string
		recs    []rec
		issued  int    // the worker certificate's NotBefore
		keyFP   string // the node record's key: "own" is the certificate's
		refused bool
	}{
		{name: "never promoted", issued: 0},
		{name: "promotion answered, not held yet", recs: []rec{{node, 10, false, false}}, issued: 0},
		{name: "promotion complete", recs: []rec{{node, 10, true, false}}, issued: 0, refused: true},
		{name: "renewed manager certificate held", recs: []rec{{node, 10, false, false}, {node, 50, true, false}}, issued: 0, refused: true},
		{name: "demoted again: the worker certificate issued since", recs: []rec{{node, 10, true, true}}, issued: 20},
		{name: "promoted again: the certificate between", recs: []rec{{node, 10, true, true}, {node, 30, true, false}}, issued: 20, refused: true},
		{name: "promoted again, not held yet", recs: []rec{{node, 10, true, true}, {node, 30, false, false}}, issued: 20},
		{name: "another node's promotion", recs: []rec{{other, 10, true, false}}, issued: 0},
		{name: "same second, the record's key", recs: []rec{{node, 10, true, false}}, issued: 10, keyFP: "own"},
		{name: "same second, another key", recs: []rec{{node, 10, true, false}}, issued: 10, keyFP: "other", refused: true},
		{name: "demoted again through a manager whose clock is behind", recs: []rec{{node, 10, true, true}}, issued: 5, keyFP: "own"},
		{name: "a manager now: a worker certificate seemingly issued since (a clock ahead)", recs: []rec{{node, 10, true, false}}, issued: 20, keyFP: "other", refused: true},
		{name: "node record gone", recs: []rec{{node, 10, true, false}}, issued: 0, keyFP: "none", refused: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := storetest.New(t)
			d := &Daemon{nodeID: "manager-1", log: slog.New(slog.DiscardHandler), store: st}
			d.cur.Store(st)
			leaf := &x509.Certificate{SerialNumber: big.NewInt(0x77), NotBefore: at(tt.issued), RawSubjectPublicKeyInfo: []byte("worker key")}
			fp := tt.keyFP
			if fp == "own" {
				fp = keyFP(leaf)
			}
			if fp != "none" {
				if _, err := nodes.Record(ctx, st, nodes.Node{ID: node, Spec: swarm.NodeSpec{Role: swarm.NodeRoleManager}, KeyFP: fp}); err != nil {
					t.Fatal(err)
				}
			}
			for i, r := range tt.recs {
				val, _ := json.Marshal(managerCertRecord{Node: r.node, NotBefore: at(r.notBefore), NotAfter: at(r.notBefore).Add(90 * 24 * time.Hour), Held: r.held, Demoted: r.demoted})
				if _, err := st.Table(managerCertsTable).Create(ctx, big.NewInt(int64(0x100+i)).Text(16), "", val); err != nil {
					t.Fatal(err)
				}
			}
			id := pki.Identity{NodeID: node, Role: pki.RoleWorker}
			for _, check := range []struct {
				name string
				err  error
			}{
				{"dispatcher", d.refuseWorkerCert(ctx, node, leaf)},
				{"join/CA service, role query", d.supersededByPromotion(ctx, id, leaf, false)},
				{"join/CA service, CSR", d.supersededByPromotion(ctx, id, leaf, true)},
			} {
				switch {
				case tt.refused && (!errors.Is(check.err, errdefs.ErrUnauthorized) || !strings.Contains(check.err.Error(), "superseded")):
					t.Errorf("%s: %v, want the certificate refused as superseded", check.name, check.err)
				case !tt.refused && check.err != nil:
					t.Errorf("%s: %v, want the certificate served", check.name, check.err)
				}
			}
			// The join/CA service checks worker certificates only.
			if err := d.supersededByPromotion(ctx, pki.Identity{NodeID: node, Role: pki.RoleManager}, leaf, true); err != nil {
				t.Errorf("a manager certificate checked as a worker's: %v", err)
			}
		})
	}
}

// A manager records the certificate it is active under as held: its
// record made at issue is marked, one never recorded is created held,
// and recording it again changes nothing.
func TestRecordHeldCert(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	now := time.Now().UTC().Truncate(time.Second)
	issued := &x509.Certificate{SerialNumber: big.NewInt(0xa1), NotBefore: now, NotAfter: now.Add(time.Hour)}
	unrecorded := &x509.Certificate{SerialNumber: big.NewInt(0xa2), NotBefore: now, NotAfter: now.Add(time.Hour)}
	if err := recordManagerCert(ctx, st, "node-m", issued); err != nil {
		t.Fatal(err)
	}
	get := func(serial string) managerCertRecord {
		t.Helper()
		o, err := st.Table(managerCertsTable).Get(ctx, serial)
		if err != nil {
			t.Fatal(err)
		}
		var r managerCertRecord
		if err := json.Unmarshal(o.Value, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	if get("a1").Held {
		t.Fatal("a certificate held on its issue")
	}
	for range 2 {
		for _, c := range []*x509.Certificate{issued, unrecorded} {
			if err := recordHeldCert(ctx, st, "node-m", c); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range []string{"a1", "a2"} {
		if r := get(s); !r.Held || r.Node != "node-m" || !r.NotBefore.Equal(now) {
			t.Fatalf("record %s: %+v, want held by node-m", s, r)
		}
	}
	if err := recordHeldCert(ctx, st, "node-x", issued); err == nil {
		t.Fatal("another node recorded as holding a node's certificate")
	}
}

// Once a promoted worker is active as a manager, the worker certificate
// it held before is refused: a dispatcher session (its tasks' secrets)
// and, at the join/CA service, a renewal (a fresh certificate) and a role
// query. Demoted again, the node's new worker certificate opens a
// session, and the one held before the promotion stays refused.
func TestWorkerCertificateRefusedAfterPromotion(t *testing.T) {
	ctx := context.Background()
	m, w, c := managerAndWorker(t)
	pre := *w.cert.Load()
	if err := openSessionWith(t, m, pre); err != nil {
		t.Fatalf("a session under the worker's certificate: %v", err)
	}
	promoted(t, m, w, "the promoted node votes")
	waitUntil(t, "the worker certificate held before the promotion is refused a session", func() bool {
		return errors.Is(openSessionWith(t, m, pre), errdefs.ErrUnauthorized)
	})
	stale := syncView{cert: &pre, clusterID: c.ID, caPEM: c.CACert, addrs: []string{m.cfg.ListenAddr}}
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
		{"promotion again", syncRequest{CSR: csr, PeerURL: "https://127.0.0.1:1"}},
		{"role query", syncRequest{}},
	} {
		ans, err := w.callSync(ctx, stale, &tt.req)
		if !errors.Is(err, errdefs.ErrUnauthorized) || !strings.Contains(err.Error(), "superseded") {
			t.Fatalf("%s under the worker certificate held before the promotion: %v (certificate issued: %t), want it refused", tt.name, err, ans != nil && len(ans.CertPEM) > 0)
		}
	}

	demoted(t, m, w, "the demoted node is a worker")
	// Eventually: the manager's cache may be from before the demotion for
	// its second.
	waitUntil(t, "a session under the demoted node's worker certificate", func() bool {
		return openSessionWith(t, m, *w.cert.Load()) == nil
	})
	if err := openSessionWith(t, m, pre); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("a session under the worker certificate held before the promotion: %v, want it refused", err)
	}
}

// The dispatcher's check does not serve on a failed read what it has
// never read: a manager whose first read of the held certificates fails
// (its store unavailable) answers Unavailable, not the worker certificate
// a completed promotion superseded; once read, a failed read keeps the
// last copy.
func TestHeldCacheFirstReadFailsClosed(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	d := &Daemon{nodeID: "manager-1", log: slog.New(slog.DiscardHandler), store: st}
	d.cur.Store(st)
	const node = "node-w"
	leaf := &x509.Certificate{SerialNumber: big.NewInt(0x77), NotBefore: time.Now().Add(-time.Hour), RawSubjectPublicKeyInfo: []byte("worker key")}
	if _, err := nodes.Record(ctx, st, nodes.Node{ID: node, Spec: swarm.NodeSpec{Role: swarm.NodeRoleManager}, KeyFP: "manager key"}); err != nil {
		t.Fatal(err)
	}
	val, _ := json.Marshal(managerCertRecord{Node: node, NotBefore: time.Now(), NotAfter: time.Now().Add(24 * time.Hour), Held: true})
	if _, err := st.Table(managerCertsTable).Create(ctx, "100", "", val); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	err := d.refuseWorkerCert(ctx, node, leaf)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("first read failed: %v, want Unavailable", err)
	}
	id := pki.Identity{NodeID: node, Role: pki.RoleWorker}
	if err := d.supersededByPromotion(ctx, id, leaf, false); err == nil {
		t.Fatal("join/CA role query: served on a failed first read")
	}
	// A read that succeeded is kept through a failure.
	d.held.mu.Lock()
	d.held.v, d.held.loaded, d.held.read = map[string]heldNode{node: {at: time.Now(), active: true, keyFP: "manager key"}}, true, time.Time{}
	d.held.mu.Unlock()
	if err := d.refuseWorkerCert(ctx, node, leaf); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("with a copy, a failed read: %v, want the copy's refusal", err)
	}
}

// A node demoted once (its held manager certificates marked demoted) and
// promoted again asks again under the worker certificate its demotion
// gave when the promotion's answer is lost: that certificate stays served
// until the promotion completes, also when a manager's clock behind made
// it look issued before the manager certificate the node last held. The
// promotion's issue does not make the node record's key the new manager
// certificate's: only its completion (held) does.
func TestPromotionRetryAfterDemotionServed(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t, hourlySyncBurst2())
	w.syncStop()
	w.syncDone.Wait()
	leaf := w.cert.Load().Leaf
	// Held before the demotion, by a manager's clock an hour ahead of
	// the one that issued the demotion's worker certificate.
	val, _ := json.Marshal(managerCertRecord{Node: w.nodeID, NotBefore: leaf.NotBefore.Add(time.Hour), NotAfter: leaf.NotAfter.Add(time.Hour), Held: true, Demoted: true})
	if _, err := m.store.Table(managerCertsTable).Create(ctx, "feedface", "", val); err != nil {
		t.Fatal(err)
	}
	if err := setRole(ctx, m, w.nodeID, swarm.NodeRoleManager); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		// The answer is lost: the node asks again under the same
		// worker certificate, for a fresh key.
		v, _ := syncViewAndCSR(t, w)
		_, csr, err := newKeyAndCSR()
		if err != nil {
			t.Fatal(err)
		}
		ans, err := w.callSync(ctx, v, &syncRequest{CSR: csr, PeerURL: "https://" + nextPort(w.listen.Advertise)})
		if err != nil || len(ans.CertPEM) == 0 {
			t.Fatalf("promotion %d asked under the demotion's worker certificate: %v", i, err)
		}
	}
	if err := m.supersededByPromotion(ctx, pki.Identity{NodeID: w.nodeID, Role: pki.RoleWorker}, leaf, true); err != nil {
		t.Fatalf("the node's worker certificate after its promotion's issue: %v", err)
	}
	if err := m.refuseWorkerCert(ctx, w.nodeID, leaf); err != nil {
		t.Fatalf("the dispatcher's check of it: %v", err)
	}
}
