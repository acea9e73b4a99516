package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/identity"
)

// testCA is a root CA with its signer, as a manager holds it.
type testCA struct {
	*CA
	pem []byte
	key *ecdsa.PrivateKey
}

func newTestCA(t testing.TB, now time.Time) testCA {
	t.Helper()
	certPEM, keyDER, err := NewRootCA(now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParseECPrivateKey(keyDER)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseRootBundle(certPEM, now)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := NewCA(certs[0], key, nil)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{CA: ca, pem: certPEM, key: key}
}

func newID(t testing.TB) string {
	t.Helper()
	id, err := identity.NewID()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// node is a node's key and certificate as the CA issued them.
type node struct {
	id   string
	role Role
	cert *tls.Certificate
}

func issueNode(t testing.TB, ca *CA, cluster string, role Role, expiry time.Duration, now time.Time) node {
	t.Helper()
	key, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	id := newID(t)
	iss, err := ca.Issue(IssueRequest{CSR: csr, NodeID: id, ClusterID: cluster, Role: role, Expiry: expiry, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	c, err := TLSCertificate(iss.PEM, key)
	if err != nil {
		t.Fatal(err)
	}
	return node{id: id, role: role, cert: c}
}

// csrWith makes a CSR for key with the given template (subject, names,
// extensions a forger might ask for).
func csrWith(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// selfSignedCA makes a root for key valid from nb to na.
func selfSignedCA(t *testing.T, key crypto.Signer, nb, na time.Time) *x509.Certificate {
	t.Helper()
	return selfSigned(t, key, &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: RootCN}, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	})
}

// selfSigned signs tmpl with key, as its own issuer.
func selfSigned(t *testing.T, key crypto.Signer, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pkixName(cn, ou, o string) pkix.Name {
	return pkix.Name{CommonName: cn, OrganizationalUnit: []string{ou}, Organization: []string{o}}
}
