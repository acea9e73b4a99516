package pki

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

// FuzzParseToken: the parser never panics; what it accepts has Swarm's
// shape and its digest re-encodes to the token's digest text; everything
// it refuses gets the one text.
func FuzzParseToken(f *testing.F) {
	f.Add("SWMTKN-1-" + swarmDigest + "-" + someSecret)
	f.Add("SWMTKN-1-" + strings.Repeat("z", 50) + "-" + someSecret)
	f.Add("SWMTKN-1-" + strings.Repeat("0", 50) + "-" + strings.Repeat("0", 25))
	f.Add("SWMTKN-1-" + swarmDigest + "-" + someSecret + "-f")
	f.Add("SWMKEY-1-abc")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if err.Error() != "invalid join token" {
				t.Fatalf("refusal text %q", err)
			}
			return
		}
		if !tokenRE.MatchString(s) {
			t.Fatalf("accepted %q", s)
		}
		text := new(big.Int).SetBytes(tok.CADigest[:]).Text(36)
		if strings.Repeat("0", 50-len(text))+text != s[9:59] {
			t.Fatalf("digest of %q does not round-trip", s)
		}
	})
}

// FuzzIssueCSR: whatever bytes arrive as a CSR, the CA either refuses them
// or issues a certificate whose subject, names and CA flag are its own
// and whose key is the CSR's self-signed key; it never panics.
func FuzzIssueCSR(f *testing.F) {
	now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	certPEM, keyDER, err := NewRootCA(now.Add(-time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	key, _ := x509.ParseECPrivateKey(keyDER)
	roots, _ := ParseRootBundle(certPEM, now)
	ca, err := NewCA(roots[0], key, nil)
	if err != nil {
		f.Fatal(err)
	}
	nk, _ := NewNodeKey()
	good, _ := NewCSR(nk)
	f.Add(good)
	f.Add(certPEM)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"))
	blk, _ := pem.Decode(good)
	f.Add(blk.Bytes)
	const nodeID, clusterID = "0123456789abcdefghijklmno", "onmlkjihgfedcba9876543210"
	f.Fuzz(func(t *testing.T, csr []byte) {
		iss, err := ca.Issue(IssueRequest{CSR: csr, NodeID: nodeID, ClusterID: clusterID, Role: RoleWorker, Now: now})
		if err != nil {
			return
		}
		leaf := iss.Leaf
		if leaf.Subject.CommonName != nodeID || len(leaf.Subject.OrganizationalUnit) != 1 || leaf.Subject.OrganizationalUnit[0] != "swarm-worker" ||
			len(leaf.Subject.Organization) != 1 || leaf.Subject.Organization[0] != clusterID || leaf.IsCA ||
			len(leaf.DNSNames) != 2 || len(leaf.IPAddresses)+len(leaf.URIs)+len(leaf.EmailAddresses) != 0 {
			t.Fatalf("issued %v %v CA=%v", leaf.Subject, leaf.DNSNames, leaf.IsCA)
		}
		b, _ := pem.Decode(csr)
		req, err := x509.ParseCertificateRequest(b.Bytes)
		if err != nil || req.CheckSignature() != nil {
			t.Fatal("issued for a CSR that does not verify")
		}
		if sum, want := sha256.Sum256(leaf.RawSubjectPublicKeyInfo), sha256.Sum256(req.RawSubjectPublicKeyInfo); sum != want {
			t.Fatal("issued for another key than the CSR's")
		}
		if _, ok := req.PublicKey.(*ecdsa.PublicKey); !ok && CheckKey(req.PublicKey) != nil {
			t.Fatal("issued for a weak key")
		}
	})
}
