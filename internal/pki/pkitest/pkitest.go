// Package pkitest makes cluster CAs and certified nodes for tests of the
// packages built on internal/pki. Test code only: its keys are fresh and
// never stored.
package pkitest

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/pki"
)

// CA is a fresh cluster root CA and the cluster ID its nodes carry.
type CA struct {
	*pki.CA
	// PEM is the root certificate, as a joining node fetches it.
	PEM     []byte
	Root    *x509.Certificate
	Cluster string
}

// NewCA makes a root CA for a new cluster.
func NewCA(t testing.TB) *CA {
	t.Helper()
	now := time.Now()
	certPEM, keyDER, err := pki.NewRootCA(now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParseECPrivateKey(keyDER)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.ParseRootBundle(certPEM, now)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(roots[0], key, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{CA: ca, PEM: certPEM, Root: roots[0], Cluster: NewID(t)}
}

// NewID is a fresh node, cluster or object ID.
func NewID(t testing.TB) string {
	t.Helper()
	id, err := identity.NewID()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Node is a node's key and the certificate the CA issued for it.
type Node struct {
	ID   string
	Key  *ecdsa.PrivateKey
	PEM  []byte // the certificate chain
	Cert *tls.Certificate
}

// Issue certifies a fresh key as a new node in role, of c's cluster or of
// clusterID when it is not empty.
func (c *CA) Issue(t testing.TB, role pki.Role, clusterID string) Node {
	t.Helper()
	return c.IssueAs(t, NewID(t), role, clusterID)
}

// IssueAs is Issue for node id: another certificate of a known node (a
// renewal, a role change).
func (c *CA) IssueAs(t testing.TB, id string, role pki.Role, clusterID string) Node {
	t.Helper()
	key, err := pki.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	if clusterID == "" {
		clusterID = c.Cluster
	}
	iss, err := c.CA.Issue(pki.IssueRequest{CSR: csr, NodeID: id, ClusterID: clusterID, Role: role, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.TLSCertificate(iss.PEM, key)
	if err != nil {
		t.Fatal(err)
	}
	return Node{ID: id, Key: key, PEM: iss.PEM, Cert: cert}
}
