package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
)

// Role is a node's role as its certificate's OU carries it.
type Role string

// Swarm's roles. CARole is an extra DNS name of managers' certificates
// (swarmkit's, for clients that ask a manager to issue).
const (
	RoleManager Role = "swarm-manager"
	RoleWorker  Role = "swarm-worker"
	CARole           = "swarm-ca"
)

// Valid reports whether r is one of the two roles.
func (r Role) Valid() bool { return r == RoleManager || r == RoleWorker }

const (
	// DefaultNodeCertExpiry is swarmkit's node certificate life.
	DefaultNodeCertExpiry = 90 * 24 * time.Hour
	// MinNodeCertExpiry is swarmkit's lower bound on it.
	MinNodeCertExpiry = time.Hour
	// Backdate is how far before issuance a certificate becomes valid, so
	// a peer whose clock is behind accepts it (swarmkit: an hour; Swarm's
	// node certificates show NotBefore an hour before issue).
	Backdate = time.Hour
	// MaxCSRSize bounds the CSR a joining node may send: a P-256 CSR is
	// about 400 bytes of PEM, RSA-4096 under 2 KiB.
	MaxCSRSize = 8 << 10
)

// NewNodeKey makes a node's private key, as Swarm's: ECDSA P-256.
func NewNodeKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// NewCSR makes the PEM CSR a node sends to be certified. Its subject is
// left empty: the CA decides the subject, whatever a CSR says.
func NewCSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// CA signs node certificates with the cluster's root CA key.
type CA struct {
	root   *x509.Certificate
	signer crypto.Signer
	// chain is sent after each issued certificate: during a root rotation,
	// the new root cross-signed by the old one.
	chain []*x509.Certificate
	rand  io.Reader
}

// NewCA makes a signer from the root certificate and its key. crossSigned,
// when given, is the intermediate that lets nodes still trusting only the
// previous root verify what this CA issues (see CrossSign).
func NewCA(root *x509.Certificate, signer crypto.Signer, crossSigned *x509.Certificate) (*CA, error) {
	if !root.IsCA || !root.BasicConstraintsValid {
		return nil, errdefs.InvalidArgument("the signing certificate is not a CA")
	}
	if err := CheckKey(root.PublicKey); err != nil {
		return nil, err
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(root.PublicKey) {
		return nil, errdefs.InvalidArgument(MsgKeyMismatch)
	}
	ca := &CA{root: root, signer: signer, rand: rand.Reader}
	if crossSigned != nil {
		if !bytes.Equal(crossSigned.RawSubject, root.RawSubject) || !bytes.Equal(crossSigned.RawSubjectPublicKeyInfo, root.RawSubjectPublicKeyInfo) {
			return nil, errdefs.InvalidArgument("the cross-signed certificate is not this root's")
		}
		ca.chain = []*x509.Certificate{crossSigned}
	}
	return ca, nil
}

// Root is the certificate the CA signs as.
func (ca *CA) Root() *x509.Certificate { return ca.root }

// IssueRequest is what the CA is asked to certify. Everything but the
// CSR's public key comes from the CA's own records of the node.
type IssueRequest struct {
	// CSR is the node's PEM certificate request; only its key is used.
	CSR       []byte
	NodeID    string
	ClusterID string
	Role      Role
	// Expiry is the cluster spec's CAConfig.NodeCertExpiry (0: default).
	Expiry time.Duration
	Now    time.Time
}

// Issued is a signed node certificate.
type Issued struct {
	Leaf *x509.Certificate
	// PEM is the leaf followed by the chain a peer needs to reach a root
	// it trusts (empty outside a root rotation).
	PEM []byte
}

// Issue signs req's CSR key into a node certificate (see the package doc
// for the profile). A role change is a new Issue with the new role.
func (ca *CA) Issue(req IssueRequest) (*Issued, error) {
	if !identity.Valid(req.NodeID) || !identity.Valid(req.ClusterID) {
		return nil, errdefs.InvalidArgument("invalid node or cluster ID")
	}
	if !req.Role.Valid() {
		return nil, errdefs.InvalidArgument("invalid role %q", req.Role)
	}
	expiry := req.Expiry
	if expiry == 0 {
		expiry = DefaultNodeCertExpiry
	}
	if expiry < MinNodeCertExpiry {
		return nil, errdefs.InvalidArgument("minimum certificate expiry time is: %s", MinNodeCertExpiry)
	}
	pub, err := ParseCSR(req.CSR)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(ca.rand, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	notAfter := req.Now.Add(expiry)
	if notAfter.After(ca.root.NotAfter) {
		// A leaf outliving its root would be refused anyway; saying so
		// in the certificate keeps renewal timing honest.
		notAfter = ca.root.NotAfter
	}
	if !notAfter.After(req.Now) {
		// An expired root would sign a certificate dead on arrival.
		return nil, errdefs.FailedPrecondition("the cluster's root CA expired at %s: rotate it (docker swarm ca --rotate)", ca.root.NotAfter.UTC().Format(time.RFC3339))
	}
	names := []string{string(req.Role), req.NodeID}
	if req.Role == RoleManager {
		names = append(names, CARole)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         req.NodeID,
			OrganizationalUnit: []string{string(req.Role)},
			Organization:       []string{req.ClusterID},
		},
		NotBefore:             req.Now.Add(-Backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              names,
	}
	der, err := x509.CreateCertificate(ca.rand, tmpl, ca.root, pub, ca.signer)
	if err != nil {
		return nil, fmt.Errorf("sign node certificate: %w: %w", errdefs.ErrInternal, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse node certificate: %w: %w", errdefs.ErrInternal, err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for _, c := range ca.chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return &Issued{Leaf: leaf, PEM: out}, nil
}

// ParseCSR returns the public key of a PEM CSR whose self-signature
// verifies and whose key is strong enough; nothing else of it is read.
func ParseCSR(csrPEM []byte) (crypto.PublicKey, error) {
	if len(csrPEM) > MaxCSRSize {
		return nil, errdefs.InvalidArgument("CSR larger than %d bytes", MaxCSRSize)
	}
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errdefs.InvalidArgument("CSR is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, errdefs.InvalidArgument("malformed CSR")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, errdefs.InvalidArgument("CSR signature does not verify")
	}
	if err := CheckKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr.PublicKey, nil
}

// CrossSign certifies newRoot's subject and key under the old CA, for a
// root rotation done as Swarm does it: the new CA issues, and sends this
// intermediate with every certificate, so a node that still trusts only
// the old root verifies new certificates (leaf -> intermediate -> old
// root) while nodes that have the new root verify them directly. It is
// valid while both roots are.
//
// The intermediate grants the new key no more than the new root does: it
// carries the new root's path length, key usages and name constraints
// (an imported root limited to signing leaves stays so when reached
// through the old root), and a certificate that is no CA is refused.
func CrossSign(old *CA, newRoot *x509.Certificate, now time.Time) (*x509.Certificate, error) {
	if !newRoot.IsCA || !newRoot.BasicConstraintsValid {
		return nil, errdefs.InvalidArgument("the certificate to cross-sign is not a CA")
	}
	if newRoot.KeyUsage != 0 && newRoot.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errdefs.InvalidArgument("the certificate to cross-sign may not sign certificates")
	}
	serial, err := rand.Int(old.rand, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:                serial,
		RawSubject:                  newRoot.RawSubject,
		SubjectKeyId:                newRoot.SubjectKeyId,
		NotBefore:                   now.Add(-Backdate),
		NotAfter:                    old.root.NotAfter,
		KeyUsage:                    newRoot.KeyUsage,
		ExtKeyUsage:                 newRoot.ExtKeyUsage,
		UnknownExtKeyUsage:          newRoot.UnknownExtKeyUsage,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  newRoot.MaxPathLen,
		MaxPathLenZero:              newRoot.MaxPathLenZero,
		PermittedDNSDomainsCritical: newRoot.PermittedDNSDomainsCritical,
		PermittedDNSDomains:         newRoot.PermittedDNSDomains,
		ExcludedDNSDomains:          newRoot.ExcludedDNSDomains,
		PermittedIPRanges:           newRoot.PermittedIPRanges,
		ExcludedIPRanges:            newRoot.ExcludedIPRanges,
		PermittedEmailAddresses:     newRoot.PermittedEmailAddresses,
		ExcludedEmailAddresses:      newRoot.ExcludedEmailAddresses,
		PermittedURIDomains:         newRoot.PermittedURIDomains,
		ExcludedURIDomains:          newRoot.ExcludedURIDomains,
	}
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	}
	if newRoot.NotBefore.After(tmpl.NotBefore) {
		tmpl.NotBefore = newRoot.NotBefore
	}
	if newRoot.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = newRoot.NotAfter
	}
	if !tmpl.NotAfter.After(tmpl.NotBefore) {
		return nil, errdefs.InvalidArgument("the roots to cross-sign have no validity in common")
	}
	der, err := x509.CreateCertificate(old.rand, tmpl, old.root, newRoot.PublicKey, old.signer)
	if err != nil {
		return nil, fmt.Errorf("cross-sign root: %w: %w", errdefs.ErrInternal, err)
	}
	return x509.ParseCertificate(der)
}
