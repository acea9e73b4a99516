package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
)

// TLSParams is what the mutual-TLS configurations read, as functions so
// that a renewed certificate, a rotated root and a removal take effect on
// the next handshake without rebuilding listeners.
type TLSParams struct {
	// ClusterID is the cluster a peer's certificate must belong to.
	ClusterID string
	// Cert is this node's current certificate and key.
	Cert func() (*tls.Certificate, error)
	// Roots is the current trust: the root CA; during a rotation the old
	// root (new certificates reach it through the cross-signed
	// intermediate) and the new one.
	Roots func() *x509.CertPool
	// Refuse rejects a verified peer anyway (see Refusals.Check); nil
	// refuses nothing.
	Refuse func(nodeID string, leaf *x509.Certificate) error
	// Now is the clock certificates are checked against (nil: time.Now).
	Now func() time.Time
}

func (p TLSParams) check() error {
	if !identity.Valid(p.ClusterID) || p.Cert == nil || p.Roots == nil {
		return errors.New("pki: TLSParams needs a cluster ID, a certificate and roots")
	}
	return nil
}

// ServerConfig is a node's listener configuration: TLS 1.3 only, a client
// certificate required and verified under the current roots, and the
// client's identity checked (cluster, refusals) before any byte of the
// application protocol. Every role is let in; what a role may ask is the
// server's business after PeerIdentity.
func (p TLSParams) ServerConfig() (*tls.Config, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	base := &tls.Config{MinVersion: tls.VersionTLS13}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, err := p.Cert()
		if err != nil {
			return nil, err
		}
		return &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{*cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    p.Roots(),
			Time:         p.Now,
			// A resumed session would skip the certificate a removal
			// refuses; every connection shows its certificate again.
			SessionTicketsDisabled: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				_, err := p.verifyPeer(cs, "")
				return err
			},
		}, nil
	}
	return base, nil
}

// ClientConfig is a node's dialling configuration: TLS 1.3 only, its own
// certificate shown, and the server verified under the current roots as a
// manager of this cluster. As in Swarm the server name checked is the
// manager role (a DNS name of every manager certificate), not the address
// dialled: which managers exist is the cluster's to say, not DNS's. The
// roots are read when the config is built (crypto/tls has no per-dial
// hook for them), so build one per dial; the certificate is read per
// handshake.
func (p TLSParams) ClientConfig() (*tls.Config, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return p.Cert()
		},
		RootCAs:    p.Roots(),
		ServerName: string(RoleManager),
		Time:       p.Now,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := p.verifyPeer(cs, RoleManager)
			return err
		},
	}, nil
}

func (p TLSParams) verifyPeer(cs tls.ConnectionState, want Role) (Identity, error) {
	id, err := PeerIdentity(cs, p.ClusterID)
	if err != nil {
		return Identity{}, err
	}
	if want != "" && id.Role != want {
		return Identity{}, errdefs.Unauthorized("peer %s is not a %s", id.NodeID, want)
	}
	if p.Refuse != nil {
		if err := p.Refuse(id.NodeID, cs.VerifiedChains[0][0]); err != nil {
			return Identity{}, err
		}
	}
	return id, nil
}

// Identity is who a peer is, as its verified certificate says.
type Identity struct {
	NodeID    string
	Role      Role
	ClusterID string
}

// PeerIdentity derives a peer's identity from the certificate the TLS
// handshake verified, and nothing else: with no verified chain (a config
// that does not verify, a connection not yet handshaken) there is no
// identity. The certificate must name one node ID, one role and one
// organisation, which must be clusterID.
func PeerIdentity(cs tls.ConnectionState, clusterID string) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, errdefs.Unauthorized("peer certificate not verified")
	}
	leaf := cs.VerifiedChains[0][0]
	s := leaf.Subject
	if !identity.Valid(s.CommonName) || len(s.OrganizationalUnit) != 1 || len(s.Organization) != 1 {
		return Identity{}, errdefs.Unauthorized("peer certificate is not a node certificate")
	}
	role := Role(s.OrganizationalUnit[0])
	if !role.Valid() {
		return Identity{}, errdefs.Unauthorized("peer certificate has no node role")
	}
	if s.Organization[0] != clusterID {
		return Identity{}, errdefs.Unauthorized("peer certificate is for another cluster")
	}
	return Identity{NodeID: s.CommonName, Role: role, ClusterID: s.Organization[0]}, nil
}

// TLSCertificate pairs an issued PEM chain (leaf first) with the node key.
func TLSCertificate(chainPEM []byte, key crypto.Signer) (*tls.Certificate, error) {
	var c tls.Certificate
	for rest := chainPEM; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, errdefs.InvalidArgument("certificate chain holds a %s block", blk.Type)
		}
		c.Certificate = append(c.Certificate, blk.Bytes)
	}
	if len(c.Certificate) == 0 {
		return nil, errdefs.InvalidArgument("no certificate in the chain")
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil, errdefs.InvalidArgument("malformed node certificate")
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return nil, errdefs.InvalidArgument(MsgKeyMismatch)
	}
	c.Leaf, c.PrivateKey = leaf, key
	return &c, nil
}

// TrustPool builds the pool of roots a node verifies peers under.
func TrustPool(roots ...*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	return pool
}
