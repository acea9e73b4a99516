package cluster

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/moby/moby/api/types/swarm"
)

// testCA makes a self-signed CA certificate for key, valid from nb to na,
// and returns it and the key in PEM.
func testCA(t *testing.T, key crypto.Signer, cn string, nb, na time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func validCA(t *testing.T) ([]byte, []byte) {
	now := time.Now()
	return testCA(t, ecKey(t), "spec-test-ca", now.Add(-time.Hour), now.Add(10*365*24*time.Hour))
}

// digestOf is the CA digest a join token carries: base36 SHA-256 of the
// PEM bundle as served, as Swarm's (its token matches `docker swarm ca |
// sha256sum`).
func digestOf(t *testing.T, certPEM string) string {
	t.Helper()
	sum := sha256.Sum256([]byte(certPEM))
	d := new(big.Int).SetBytes(sum[:]).Text(36)
	return strings.Repeat("0", 50-len(d)) + d
}

// memCluster is a cluster object that was never stored (the CA logic
// needs no store).
func memCluster(t *testing.T) (Cluster, *keyring.Keyring) {
	t.Helper()
	mk, _ := keyring.GenerateMasterKey()
	kr, _ := keyring.New(mk)
	c := Cluster{ID: "speccluster", Spec: DefaultSpec()}
	cert, der, err := newRootCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.installRoot(kr, cert, der); err != nil {
		t.Fatal(err)
	}
	return c, kr
}

func tokenDigest(tok string) string { return strings.Split(tok, "-")[2] }

func TestForceRotate(t *testing.T) {
	c, kr := memCluster(t)
	before := c
	cfg := c.Spec.CAConfig
	if rotated, err := c.ApplyCAConfig(kr, cfg, nil, time.Now()); err != nil || rotated {
		t.Fatalf("an unchanged ForceRotate rotated (%v, %v)", rotated, err)
	}
	cfg.ForceRotate++
	rotated, err := c.ApplyCAConfig(kr, cfg, nil, time.Now())
	if err != nil || !rotated {
		t.Fatalf("ForceRotate+1: rotated %v, %v", rotated, err)
	}
	if c.CACert == before.CACert || c.LastForcedRotation != 1 {
		t.Fatal("no new root CA")
	}
	for _, tok := range []string{c.JoinTokens.Worker, c.JoinTokens.Manager} {
		if tokenDigest(tok) != digestOf(t, c.CACert) {
			t.Fatalf("token %s does not pin the new CA", tok)
		}
	}
	if _, ok := c.ValidateJoinToken(before.JoinTokens.Worker); ok {
		t.Fatal("the old worker token still admits after a CA rotation")
	}
	// The new key is the new certificate's.
	sg, err := c.CASigner(kr)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := c.rootCert()
	if err := certKeyMatch(cert, sg.Public()); err != nil {
		t.Fatalf("sealed key does not match the new root: %v", err)
	}
	// Applying the same counter again changes nothing.
	again := c
	if rotated, _ := c.ApplyCAConfig(kr, cfg, nil, time.Now()); rotated || c.CACert != again.CACert {
		t.Fatal("the same ForceRotate rotated twice")
	}
}

func TestRotateToGivenCA(t *testing.T) {
	c, kr := memCluster(t)
	oldTokens := c.JoinTokens
	certPEM, keyPEM := validCA(t)
	cfg := swarm.CAConfig{SigningCACert: string(certPEM), ForceRotate: 4}
	rotated, err := c.ApplyCAConfig(kr, cfg, keyPEM, time.Now())
	if err != nil || !rotated {
		t.Fatalf("rotate: %v %v", rotated, err)
	}
	if c.CACert != string(normalizePEMs(certPEM)) || c.Info().TLSInfo.TrustRoot != c.CACert {
		t.Fatal("the given certificate is not the trust root")
	}
	if c.LastForcedRotation != 4 {
		t.Fatalf("LastForcedRotation %d, want the spec's 4", c.LastForcedRotation)
	}
	if c.JoinTokens == oldTokens || tokenDigest(c.JoinTokens.Worker) != digestOf(t, c.CACert) {
		t.Fatal("join tokens do not pin the given CA")
	}
	sg, err := c.CASigner(kr)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(keyPEM)
	given, _ := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if !sg.Public().(*ecdsa.PublicKey).Equal(given.(*ecdsa.PrivateKey).Public()) {
		t.Fatal("the sealed key is not the given key")
	}
	// The key is only sealed: nowhere in the record in any form.
	rec, _ := json.Marshal(&c)
	assertNoKey(t, rec, keyPEM)
	info, _ := json.Marshal(c.Info())
	assertNoKey(t, info, keyPEM)

	// The same certificate again with its key: the root stays, so do the
	// tokens; only the key is re-sealed.
	tokens := c.JoinTokens
	rotated, err = c.ApplyCAConfig(kr, cfg, keyPEM, time.Now())
	if err != nil || rotated || c.JoinTokens != tokens {
		t.Fatalf("re-giving the current root: rotated %v err %v tokens changed %v", rotated, err, c.JoinTokens != tokens)
	}
}

// assertNoKey fails if b holds keyPEM, its DER, or their base64.
func assertNoKey(t *testing.T, b, keyPEM []byte) {
	t.Helper()
	blk, _ := pem.Decode(keyPEM)
	for name, needle := range map[string][]byte{
		"PEM":            keyPEM,
		"DER":            blk.Bytes,
		"base64 DER":     []byte(base64.StdEncoding.EncodeToString(blk.Bytes)),
		"base64 PEM":     []byte(base64.StdEncoding.EncodeToString(keyPEM)),
		"PEM body line":  bytes.Split(keyPEM, []byte("\n"))[1],
		"JSON-escaped":   bytes.ReplaceAll(keyPEM, []byte("\n"), []byte(`\n`)),
		"DER key scalar": blk.Bytes[len(blk.Bytes)-32:],
	} {
		if bytes.Contains(b, needle) {
			t.Fatalf("the signing key (%s) is in %.80q", name, b)
		}
	}
}

func TestCARefusals(t *testing.T) {
	now := time.Now()
	goodCert, goodKey := validCA(t)
	_, otherKey := validCA(t)
	expired, expiredKey := testCA(t, ecKey(t), "old", now.Add(-48*time.Hour), now.Add(-time.Hour))
	soon, soonKey := testCA(t, ecKey(t), "soon", now.Add(-time.Hour), now.Add(30*24*time.Hour))
	two := append(append([]byte{}, goodCert...), soon...)
	rsaSmall, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallCert, smallKey := testCA(t, rsaSmall, "small", now.Add(-time.Hour), now.Add(5*365*24*time.Hour))
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	edCert, edKey := testCA(t, edPriv, "ed", now.Add(-time.Hour), now.Add(5*365*24*time.Hour))
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384Cert, p384Key := testCA(t, p384, "p384", now.Add(-time.Hour), now.Add(5*365*24*time.Hour))
	keyBlock, _ := pem.Decode(goodKey)
	notACert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})

	for _, tc := range []struct {
		name       string
		cert, key  []byte
		want       string // "" accepts
		wantPrefix bool
	}{
		{"key without cert", nil, goodKey, msgKeyWithoutCert, false},
		{"garbage cert is no cert", []byte("garbage"), []byte("garbage"), msgKeyWithoutCert, false},
		{"cert without key", goodCert, nil, msgNeedsExternalCA, false},
		{"mismatch", goodCert, otherKey, "certificate key mismatch", false},
		{"malformed key", goodCert, []byte("garbage"), msgMalformedKey, false},
		{"key of wrong PEM", goodCert, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("x")}), msgMalformedKey, false},
		{"bad certificate DER", notACert, goodKey, msgBadRootCerts, false},
		{"expired", expired, expiredKey, "error while validating Root CA Certificate: x509: certificate has expired or is not yet valid", true},
		{"expires within a year", soon, soonKey, "CA certificate expires too soon", false},
		{"two certificates", two, goodKey, "the desired CA certificate cannot contain multiple certificates", false},
		{"RSA under 2048 bits", smallCert, smallKey, "unsupported RSA key parameters", false},
		{"ed25519", edCert, edKey, "unsupported signature algorithm: Ed25519", false},
		{"P-384 accepted", p384Cert, p384Key, "", false},
		{"SEC 1 key accepted", goodCert, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: mustSEC1(t, keyBlock.Bytes)}), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, kr := memCluster(t)
			before, _ := json.Marshal(&c)
			_, err := c.ApplyCAConfig(kr, swarm.CAConfig{SigningCACert: string(tc.cert)}, tc.key, now)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want 400 %q", err, tc.want)
			}
			if got := err.Error(); got != tc.want && !(tc.wantPrefix && strings.HasPrefix(got, tc.want)) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			after, _ := json.Marshal(&c)
			if !bytes.Equal(before, after) {
				t.Fatal("a refused CA change changed the cluster")
			}
		})
	}
}

func mustSEC1(t *testing.T, pkcs8 []byte) []byte {
	t.Helper()
	k, err := x509.ParsePKCS8PrivateKey(pkcs8)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// A root re-issued with the current key cannot be rotated to (swarmkit's
// rule, for the chain validation it would break).
func TestIdenticalKeyRefused(t *testing.T) {
	c, kr := memCluster(t)
	k := ecKey(t)
	now := time.Now()
	certA, keyPEM := testCA(t, k, "a", now.Add(-time.Hour), now.Add(5*365*24*time.Hour))
	if _, err := c.ApplyCAConfig(kr, swarm.CAConfig{SigningCACert: string(certA)}, keyPEM, now); err != nil {
		t.Fatal(err)
	}
	certB, _ := testCA(t, k, "b", now.Add(-time.Hour), now.Add(6*365*24*time.Hour))
	_, err := c.ApplyCAConfig(kr, swarm.CAConfig{SigningCACert: string(certB)}, keyPEM, now)
	if err == nil || err.Error() != msgIdenticalKey {
		t.Fatalf("got %v, want %q", err, msgIdenticalKey)
	}
}

// Init with a given CA uses it from the start and stores no key in the spec.
func TestCreateWithGivenCA(t *testing.T) {
	mk, _ := keyring.GenerateMasterKey()
	kr, _ := keyring.New(mk)
	certPEM, keyPEM := validCA(t)
	spec := DefaultSpec()
	spec.CAConfig.SigningCACert = string(certPEM)
	spec.CAConfig.SigningCAKey = string(keyPEM) // must be ignored: Params carries the key
	st := newStore(t)
	c, err := Create(t.Context(), st, kr, Params{Spec: spec, SigningCAKey: keyPEM})
	if err != nil {
		t.Fatal(err)
	}
	if c.CACert != string(certPEM) {
		t.Fatal("the given root CA is not the cluster's")
	}
	if c.Spec.CAConfig.SigningCAKey != "" || c.Spec.CAConfig.SigningCACert != "" {
		t.Fatal("the signing certificate or key is kept in the spec")
	}
	o, _ := st.Table(table).Get(t.Context(), key)
	assertNoKey(t, o.Value, keyPEM)
}
