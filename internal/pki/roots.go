package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// swarmkit's texts for a refused root CA bundle or key.
const (
	MsgBadRootCerts     = `invalid root certificates: {"code":1003,"message":"Failed to parse certificate"}`
	MsgNoRootCerts      = "no valid root CA certificates found"
	MsgUnsupportedRSA   = "unsupported RSA key parameters"
	MsgUnsupportedECDSA = "unsupported ECDSA key parameters"
	MsgUnsupportedKey   = "unknown or unsupported certificate public key algorithm"
	MsgKeyMismatch      = "certificate key mismatch"
)

// ParseRootBundle checks every certificate of certPEM as swarmkit checks a
// root CA bundle (each self-signed, valid at now, with a supported
// signature) and returns them in order; the first is the one that signs.
func ParseRootBundle(certPEM []byte, now time.Time) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := certPEM; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if blk.Type != "CERTIFICATE" || err != nil {
			return nil, errdefs.InvalidArgument(MsgBadRootCerts)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errdefs.InvalidArgument(MsgNoRootCerts)
	}
	for _, cert := range certs {
		switch cert.SignatureAlgorithm {
		case x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA,
			x509.ECDSAWithSHA256, x509.ECDSAWithSHA384, x509.ECDSAWithSHA512:
		default:
			return nil, errdefs.InvalidArgument("unsupported signature algorithm: %s", cert.SignatureAlgorithm)
		}
		self := x509.NewCertPool()
		self.AddCert(cert)
		if _, err := cert.Verify(x509.VerifyOptions{Roots: self, CurrentTime: now}); err != nil {
			return nil, errdefs.InvalidArgument("error while validating Root CA Certificate: %v", err)
		}
	}
	return certs, nil
}

// CheckKey refuses a public key swarmkit would not sign for or with: RSA
// under 2048 bits or with exponent 1, ECDSA off the NIST P-256/384/521
// curves, and any other algorithm.
func CheckKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 || k.E == 1 {
			return errdefs.InvalidArgument(MsgUnsupportedRSA)
		}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return errdefs.InvalidArgument(MsgUnsupportedECDSA)
		}
	default:
		return errdefs.InvalidArgument(MsgUnsupportedKey)
	}
	return nil
}

// RootCN is the subject of the roots hush makes, as Swarm's.
const RootCN = "swarm-ca"

// NewRootCA makes a self-signed ECDSA P-256 root like Swarm's ("swarm-ca",
// 20 years, backdated an hour) and returns its PEM and its private key as
// SEC 1 DER, which the caller seals and wipes.
func NewRootCA(now time.Time) ([]byte, []byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: RootCN},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(20 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyDER, nil
}
