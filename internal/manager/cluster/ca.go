package cluster

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

// caKeyAAD binds the sealed root CA key to its use.
var caKeyAAD = []byte("hush/cluster/ca-key")

// minRootValidity is how long a given root CA certificate must still be
// valid (swarmkit: a year).
const minRootValidity = 365 * 24 * time.Hour

// swarmkit's texts for a refused CA configuration.
const (
	msgKeyWithoutCert  = "if a signing CA key is provided, the signing CA cert must also be provided"
	msgNeedsExternalCA = "there must be at least one valid, reachable external CA corresponding to the desired CA certificate"
	msgMultipleCerts   = "the desired CA certificate cannot contain multiple certificates"
	msgExpiresTooSoon  = "CA certificate expires too soon"
	msgIdenticalKey    = "Cannot update to a cert with an identical key"
	msgMalformedKey    = `malformed private key: {"code":2002,"message":"Failed to decode private key"}`
	msgBadRootCerts    = pki.MsgBadRootCerts
	msgKeyMismatch     = pki.MsgKeyMismatch
)

// ApplyCAConfig carries out what a spec's CAConfig asks of the root CA, as
// swarmkit does on a cluster update: with neither SigningCACert nor key,
// a changed ForceRotate makes a new root CA; with both, the given ones
// become the root CA (only the key is replaced when the certificate is the
// current one). key is the PEM signing key (cfg.SigningCAKey is ignored:
// the caller passes the key as bytes it can wipe). A new root CA gets new
// join tokens, since a token pins the CA's digest. hush rotates in one
// step: it has no node certificates to reissue, so no rotation is ever in
// progress. It reports whether the root CA changed; on error c is
// unchanged.
func (c *Cluster) ApplyCAConfig(s Sealer, cfg swarm.CAConfig, key []byte, now time.Time) (bool, error) {
	certPEM := normalizePEMs([]byte(cfg.SigningCACert))
	if len(key) > 0 && len(certPEM) == 0 {
		return false, errdefs.InvalidArgument(msgKeyWithoutCert)
	}
	if len(certPEM) == 0 {
		if cfg.ForceRotate == c.LastForcedRotation {
			return false, nil
		}
		newCert, keyDER, err := newRootCA(now)
		if err != nil {
			return false, err
		}
		defer keyring.Wipe(keyDER)
		if err := c.installRoot(s, newCert, keyDER); err != nil {
			return false, err
		}
		c.LastForcedRotation = cfg.ForceRotate
		return true, nil
	}
	cert, err := parseRootCert(certPEM, now)
	if err != nil {
		return false, err
	}
	if len(key) == 0 {
		// The certificate alone would need an external CA to sign with.
		return false, errdefs.InvalidArgument(msgNeedsExternalCA)
	}
	signer, err := parseSigningKey(key)
	if err != nil {
		return false, err
	}
	if err := certKeyMatch(cert, signer.Public()); err != nil {
		return false, err
	}
	if blocks := countPEM(certPEM); blocks != 1 {
		return false, errdefs.InvalidArgument(msgMultipleCerts)
	}
	if cert.NotAfter.Before(now.Add(minRootValidity)) {
		return false, errdefs.InvalidArgument(msgExpiresTooSoon)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return false, errdefs.InvalidArgument(msgMalformedKey)
	}
	defer keyring.Wipe(keyDER)
	if bytes.Equal(normalizePEMs([]byte(c.CACert)), certPEM) {
		// The same root: only who holds its key changes.
		sealed, err := s.Seal(keyDER, caKeyAAD)
		if err != nil {
			return false, err
		}
		c.CAKey = sealed
		c.LastForcedRotation = cfg.ForceRotate
		return false, nil
	}
	if cur, err := c.rootCert(); err == nil && bytes.Equal(cur.RawSubjectPublicKeyInfo, cert.RawSubjectPublicKeyInfo) {
		return false, errdefs.InvalidArgument(msgIdenticalKey)
	}
	if err := c.installRoot(s, string(certPEM), keyDER); err != nil {
		return false, err
	}
	c.LastForcedRotation = cfg.ForceRotate
	return true, nil
}

// installRoot makes certPEM and keyDER the root CA, with new join tokens.
func (c *Cluster) installRoot(s Sealer, certPEM string, keyDER []byte) error {
	sealed, err := s.Seal(keyDER, caKeyAAD)
	if err != nil {
		return err
	}
	worker, err := pki.NewToken([]byte(certPEM))
	if err != nil {
		return err
	}
	manager, err := pki.NewToken([]byte(certPEM))
	if err != nil {
		return err
	}
	c.CACert, c.CAKey = certPEM, sealed
	c.JoinTokens = swarm.JoinTokens{Worker: worker, Manager: manager}
	return nil
}

// CASigner opens the root CA key, for the certificates hush issues.
func (c *Cluster) CASigner(s Sealer) (crypto.Signer, error) {
	der, err := s.Open(c.CAKey, caKeyAAD)
	if err != nil {
		return nil, fmt.Errorf("open CA key: %w: %w", errdefs.ErrInternal, err)
	}
	defer keyring.Wipe(der)
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		if sg, ok := k.(crypto.Signer); ok {
			return sg, nil
		}
	}
	// Root CAs made before keys were stored as PKCS #8.
	k, err := x509.ParseECPrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA key: %w: %w", errdefs.ErrInternal, err)
	}
	return k, nil
}

func (c *Cluster) rootCert() (*x509.Certificate, error) {
	blk, _ := pem.Decode([]byte(c.CACert))
	if blk == nil {
		return nil, errors.New("cluster: CA certificate is not PEM")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// normalizePEMs re-encodes the PEM blocks of b without headers or stray
// space, so equal certificates compare equal; text that holds no PEM block
// normalises to nothing (swarmkit reads it as "no certificate given").
func normalizePEMs(b []byte) []byte {
	var out []byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(bytes.TrimSpace(b))
		if blk == nil {
			return out
		}
		blk.Headers = nil
		out = append(out, pem.EncodeToMemory(blk)...)
	}
}

func countPEM(b []byte) int {
	n := 0
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return n
		}
		n++
	}
}

// parseRootCert checks certPEM as a root CA bundle and returns its first
// certificate, which signs.
func parseRootCert(certPEM []byte, now time.Time) (*x509.Certificate, error) {
	certs, err := pki.ParseRootBundle(certPEM, now)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// parseSigningKey reads an unencrypted PEM private key: PKCS #8, PKCS #1
// or SEC 1, as swarmkit accepts. The decoded DER is wiped.
func parseSigningKey(keyPEM []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		return nil, errdefs.InvalidArgument(msgMalformedKey)
	}
	defer keyring.Wipe(blk.Bytes)
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		if sg, ok := k.(crypto.Signer); ok {
			return sg, nil
		}
		return nil, errdefs.InvalidArgument(msgMalformedKey)
	}
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	return nil, errdefs.InvalidArgument(msgMalformedKey)
}

// certKeyMatch is swarmkit's check that the key is the certificate's, of a
// kind and size it signs with.
func certKeyMatch(cert *x509.Certificate, pub crypto.PublicKey) error {
	if err := pki.CheckKey(cert.PublicKey); err != nil {
		return err
	}
	if k, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); ok && k.Equal(cert.PublicKey) {
		return nil
	}
	return errdefs.InvalidArgument(msgKeyMismatch)
}
