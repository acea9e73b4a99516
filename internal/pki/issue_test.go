package pki

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
)

func TestIssueProfile(t *testing.T) {
	now := time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)
	ca := newTestCA(t, now.Add(-time.Hour))
	cluster := newID(t)
	for _, tc := range []struct {
		role   Role
		expiry time.Duration
		life   time.Duration
		names  []string
	}{
		{RoleManager, 0, DefaultNodeCertExpiry, []string{"swarm-manager", "<id>", "swarm-ca"}},
		{RoleWorker, 0, DefaultNodeCertExpiry, []string{"swarm-worker", "<id>"}},
		{RoleWorker, 2 * time.Hour, 2 * time.Hour, []string{"swarm-worker", "<id>"}},
		{RoleManager, MinNodeCertExpiry, MinNodeCertExpiry, []string{"swarm-manager", "<id>", "swarm-ca"}},
	} {
		t.Run(string(tc.role)+"/"+tc.expiry.String(), func(t *testing.T) {
			n := issueNode(t, ca.CA, cluster, tc.role, tc.expiry, now)
			leaf := n.cert.Leaf
			s := leaf.Subject
			if s.CommonName != n.id || !slices.Equal(s.OrganizationalUnit, []string{string(tc.role)}) || !slices.Equal(s.Organization, []string{cluster}) {
				t.Fatalf("subject %v", s)
			}
			names := slices.Clone(tc.names)
			names[1] = n.id
			if !slices.Equal(leaf.DNSNames, names) || len(leaf.IPAddresses) != 0 || len(leaf.URIs) != 0 || len(leaf.EmailAddresses) != 0 {
				t.Fatalf("SANs %v %v, want DNS %v", leaf.DNSNames, leaf.IPAddresses, names)
			}
			if !leaf.NotBefore.Equal(now.Add(-Backdate)) || !leaf.NotAfter.Equal(now.Add(tc.life)) {
				t.Fatalf("validity %v..%v", leaf.NotBefore, leaf.NotAfter)
			}
			if leaf.IsCA || !leaf.BasicConstraintsValid || leaf.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
				t.Fatalf("CA %v, key usage %v", leaf.IsCA, leaf.KeyUsage)
			}
			if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
				t.Fatal("node key is not ECDSA")
			}
			for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: TrustPool(ca.Root()), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{u}, DNSName: names[0]}); err != nil {
					t.Fatalf("usage %v: %v", u, err)
				}
			}
		})
	}
}

// Nothing of a CSR but its key reaches the certificate: a node cannot make
// itself a manager, another node, a member of another cluster, a CA, or
// valid for names of its choosing.
func TestIssueIgnoresCSRSubject(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	cluster, victim, self := newID(t), newID(t), newID(t)
	key, _ := NewNodeKey()
	isCA, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	u, _ := url.Parse("spiffe://evil")
	csr := csrWith(t, key, &x509.CertificateRequest{
		Subject: pkix.Name{
			CommonName: victim, OrganizationalUnit: []string{"swarm-manager"}, Organization: []string{newID(t)},
		},
		DNSNames:        []string{"swarm-manager", "swarm-ca", victim},
		IPAddresses:     []net.IP{net.ParseIP("10.0.0.1")},
		URIs:            []*url.URL{u},
		EmailAddresses:  []string{"a@b"},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: isCA}},
	})
	iss, err := ca.Issue(IssueRequest{CSR: csr, NodeID: self, ClusterID: cluster, Role: RoleWorker, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	leaf := iss.Leaf
	if leaf.Subject.CommonName != self || leaf.Subject.OrganizationalUnit[0] != "swarm-worker" || leaf.Subject.Organization[0] != cluster {
		t.Fatalf("the CSR's subject leaked into %v", leaf.Subject)
	}
	if leaf.IsCA || !slices.Equal(leaf.DNSNames, []string{"swarm-worker", self}) || len(leaf.IPAddresses)+len(leaf.URIs)+len(leaf.EmailAddresses) != 0 {
		t.Fatalf("the CSR's extensions leaked: CA %v, %v %v %v", leaf.IsCA, leaf.DNSNames, leaf.IPAddresses, leaf.URIs)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("not the CSR's key")
	}
}

func TestIssueRefusals(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	cluster, id := newID(t), newID(t)
	p256, _ := NewNodeKey()
	good := csrWith(t, p256, &x509.CertificateRequest{})
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	// A CSR whose signature no longer covers its content: the key of one
	// node and the signature of another request.
	blk, _ := pem.Decode(good)
	tampered := append([]byte{}, blk.Bytes...)
	tampered[len(tampered)-5] ^= 0x55
	tamperedPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered})
	other, _ := NewNodeKey()
	swapped := swapCSRKey(t, good, other)

	for _, tc := range []struct {
		name string
		req  IssueRequest
		want string // "" accepts
	}{
		{"P-256", IssueRequest{CSR: good}, ""},
		{"RSA 2048", IssueRequest{CSR: csrWith(t, rsa2048, &x509.CertificateRequest{})}, ""},
		{"RSA 1024", IssueRequest{CSR: csrWith(t, rsa1024, &x509.CertificateRequest{})}, MsgUnsupportedRSA},
		{"P-224", IssueRequest{CSR: csrWith(t, p224, &x509.CertificateRequest{})}, MsgUnsupportedECDSA},
		{"Ed25519", IssueRequest{CSR: csrWith(t, ed, &x509.CertificateRequest{})}, MsgUnsupportedKey},
		{"signature flipped", IssueRequest{CSR: tamperedPEM}, "CSR signature does not verify"},
		{"key swapped under the signature", IssueRequest{CSR: swapped}, "CSR signature does not verify"},
		{"not PEM", IssueRequest{CSR: []byte("hello")}, "CSR is not a PEM CERTIFICATE REQUEST"},
		{"a certificate, not a CSR", IssueRequest{CSR: ca.pem}, "CSR is not a PEM CERTIFICATE REQUEST"},
		{"garbage DER", IssueRequest{CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("x")})}, "malformed CSR"},
		{"oversized", IssueRequest{CSR: append(good, strings.Repeat(" ", MaxCSRSize)...)}, "CSR larger than"},
		{"no node ID", IssueRequest{CSR: good, NodeID: "-"}, "invalid node or cluster ID"},
		{"bad cluster ID", IssueRequest{CSR: good, ClusterID: "Cluster"}, "invalid node or cluster ID"},
		{"CA role", IssueRequest{CSR: good, Role: "swarm-ca"}, `invalid role "swarm-ca"`},
		{"expiry under an hour", IssueRequest{CSR: good, Expiry: 59 * time.Minute}, "minimum certificate expiry time is: 1h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			if req.NodeID == "" {
				req.NodeID = id
			}
			if req.ClusterID == "" {
				req.ClusterID = cluster
			}
			if req.Role == "" {
				req.Role = RoleWorker
			}
			req.Now = now
			iss, err := ca.Issue(req)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want 400 %q", err, tc.want)
			}
			if iss != nil {
				t.Fatal("a certificate with the refusal")
			}
		})
	}
}

// swapCSRKey re-encodes csrPEM with key's public key in place of its own,
// keeping the original signature.
func swapCSRKey(t *testing.T, csrPEM []byte, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	blk, _ := pem.Decode(csrPEM)
	var req struct {
		Info struct {
			Raw       asn1.RawContent
			Version   int
			Subject   asn1.RawValue
			PublicKey asn1.RawValue
			Attrs     asn1.RawValue `asn1:"tag:0"`
		}
		Algo asn1.RawValue
		Sig  asn1.BitString
	}
	if _, err := asn1.Unmarshal(blk.Bytes, &req); err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	req.Info.Raw = nil
	req.Info.PublicKey = asn1.RawValue{FullBytes: spki}
	der, err := asn1.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509.ParseCertificateRequest(der)
	if err != nil || !parsed.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatalf("swapped CSR does not parse to the new key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// A root that ends before NodeCertExpiry bounds the certificate.
func TestIssueNotAfterRoot(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	key, _ := NewNodeKey()
	root := selfSignedCA(t, key, now.Add(-time.Hour), now.Add(10*24*time.Hour))
	ca, err := NewCA(root, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := issueNode(t, ca, newID(t), RoleWorker, 0, now)
	if !n.cert.Leaf.NotAfter.Equal(root.NotAfter) {
		t.Fatalf("NotAfter %v, root ends %v", n.cert.Leaf.NotAfter, root.NotAfter)
	}
}

// An expired root issues nothing: its certificate would be dead on arrival.
func TestIssueExpiredRoot(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	key, _ := NewNodeKey()
	root := selfSignedCA(t, key, now.Add(-48*time.Hour), now.Add(-time.Hour))
	ca, err := NewCA(root, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	nk, _ := NewNodeKey()
	csr, err := NewCSR(nk)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ca.Issue(IssueRequest{CSR: csr, NodeID: newID(t), ClusterID: newID(t), Role: RoleWorker, Now: now})
	if !errdefs.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Issue under an expired root: %v, want failed precondition", err)
	}
}

func TestNewCARefusals(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	other := newTestCA(t, now)
	leaf := issueNode(t, ca.CA, newID(t), RoleManager, 0, now).cert.Leaf
	for _, tc := range []struct {
		name  string
		fn    func() error
		wants string
	}{
		{"key of another root", func() error { _, err := NewCA(ca.Root(), other.key, nil); return err }, MsgKeyMismatch},
		{"a node certificate as root", func() error { _, err := NewCA(leaf, ca.key, nil); return err }, "the signing certificate is not a CA"},
		{"cross-signed cert of another root", func() error { _, err := NewCA(ca.Root(), ca.key, other.Root()); return err }, "the cross-signed certificate is not this root's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.fn(); err == nil || err.Error() != tc.wants {
				t.Fatalf("got %v, want %q", err, tc.wants)
			}
		})
	}
}

func TestTLSCertificateRefusals(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	key, _ := NewNodeKey()
	csr, _ := NewCSR(key)
	iss, err := ca.Issue(IssueRequest{CSR: csr, NodeID: newID(t), ClusterID: newID(t), Role: RoleWorker, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewNodeKey()
	if _, err := TLSCertificate(iss.PEM, other); err == nil || err.Error() != MsgKeyMismatch {
		t.Fatalf("another key accepted: %v", err)
	}
	if _, err := TLSCertificate(nil, key); err == nil {
		t.Fatal("an empty chain accepted")
	}
	if _, err := TLSCertificate(append(iss.PEM, csr...), key); err == nil {
		t.Fatal("a CSR in the chain accepted")
	}
}

// The cross-signed intermediate is the new root's authority seen from the
// old root: it may grant no more than the new root itself does. An
// imported root limited to signing leaves (path length 0) must not, once
// cross-signed, let its key certify a sub-CA that nodes trusting only the
// old root accept; and only a CA is ever cross-signed.
func TestCrossSignKeepsNewRootLimits(t *testing.T) {
	now := time.Now()
	old := newTestCA(t, now.Add(-time.Hour))
	newKey, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	mk := func(tmpl *x509.Certificate) *x509.Certificate { return selfSigned(t, newKey, tmpl) }
	limited := mk(&x509.Certificate{
		SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: RootCN},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
		MaxPathLen: 0, MaxPathLenZero: true,
	})
	cross, err := CrossSign(old.CA, limited, now)
	if err != nil {
		t.Fatal(err)
	}
	if !cross.MaxPathLenZero || cross.MaxPathLen != 0 {
		t.Fatalf("cross-signed path length %d (zero %v), new root's is 0", cross.MaxPathLen, cross.MaxPathLenZero)
	}
	if cross.NotBefore.Before(limited.NotBefore) || cross.NotAfter.After(limited.NotAfter) {
		t.Fatalf("cross-signed validity %s..%s outside the new root's %s..%s", cross.NotBefore, cross.NotAfter, limited.NotBefore, limited.NotAfter)
	}
	// A sub-CA under the limited key, and a node certificate under it.
	subKey, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	subDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(10), Subject: pkix.Name{CommonName: "sub"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}, limited, subKey.Public(), newKey)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := x509.ParseCertificate(subDER)
	if err != nil {
		t.Fatal(err)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(11), Subject: pkixName(newID(t), string(RoleManager), newID(t)),
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, sub, newKey.Public(), subKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(cross)
	inter.AddCert(sub)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: TrustPool(old.Root()), Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Fatal("a sub-CA of a path-length-0 root verified through its cross-signed certificate")
	}

	notCA := mk(&x509.Certificate{
		SerialNumber: big.NewInt(12), Subject: pkix.Name{CommonName: RootCN},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
	})
	if c, err := CrossSign(old.CA, notCA, now); err == nil {
		t.Fatalf("a certificate that is no CA was cross-signed into one: IsCA %v", c.IsCA)
	}
}
