package pki

import (
	"crypto/x509"
	"testing"
	"time"
)

// BenchmarkIssue is a manager's cost per join or renewal: CSR parse and
// signature check, key check, signing.
func BenchmarkIssue(b *testing.B) {
	now := time.Now()
	certPEM, keyDER, err := NewRootCA(now)
	if err != nil {
		b.Fatal(err)
	}
	key, _ := x509.ParseECPrivateKey(keyDER)
	roots, _ := ParseRootBundle(certPEM, now)
	ca, err := NewCA(roots[0], key, nil)
	if err != nil {
		b.Fatal(err)
	}
	nk, _ := NewNodeKey()
	csr, _ := NewCSR(nk)
	req := IssueRequest{CSR: csr, NodeID: "0123456789abcdefghijklmno", ClusterID: "onmlkjihgfedcba9876543210", Role: RoleWorker, Now: now}
	for b.Loop() {
		if _, err := ca.Issue(req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMutualHandshake is one mutual-TLS connection over loopback,
// both sides verifying.
func BenchmarkMutualHandshake(b *testing.B) {
	t := b
	now := time.Now()
	ca := newTestCA(t, now)
	cluster := "onmlkjihgfedcba9876543210"
	mgr := issueNode(t, ca.CA, cluster, RoleManager, 0, now)
	wrk := issueNode(t, ca.CA, cluster, RoleWorker, 0, now)
	roots := []*x509.Certificate{ca.Root()}
	scfg, _ := params(cluster, mgr, roots, nil, nil).ServerConfig()
	ccfg, _ := params(cluster, wrk, roots, nil, nil).ClientConfig()
	for b.Loop() {
		if res := handshakeConfigs(t, scfg, ccfg); res.srvErr != nil || res.cliErr != nil {
			b.Fatal(res.srvErr, res.cliErr)
		}
	}
}
