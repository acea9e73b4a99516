package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
)

// Swarm's join token layout: SWMTKN-1-<digest>-<secret>, with the CA
// digest in 50 base-36 digits (ceil(log36(2^256))) and the secret in 25.
const (
	tokenPrefix     = "SWMTKN-1-"
	digestLen       = 50
	secretLen       = identity.Length
	tokenLen        = len(tokenPrefix) + digestLen + 1 + secretLen
	maxBundleSize   = 64 << 10
	msgInvalidToken = "invalid join token"
	msgCAMismatch   = "remote CA does not match fingerprint. Expected: %s"
)

// Token is a parsed join token. It keeps only the CA digest: the whole
// token, secret included, is what the joining node sends, and the secret
// is never held apart where it could be printed.
type Token struct {
	CADigest [sha256.Size]byte
}

// CADigest is the digest a join token pins: SHA-256 of the CA bundle
// exactly as a manager serves it (PEM). Swarm hashes the PEM bytes, not
// the DER; `docker swarm ca | sha256sum` matches its tokens.
func CADigest(bundlePEM []byte) [sha256.Size]byte { return sha256.Sum256(bundlePEM) }

// NewToken makes a join token pinning bundlePEM with a fresh secret.
func NewToken(bundlePEM []byte) (string, error) {
	if blk, _ := pem.Decode(bundlePEM); blk == nil {
		return "", errdefs.InvalidArgument("CA certificate is not PEM")
	}
	secret, err := identity.NewID()
	if err != nil {
		return "", err
	}
	sum := CADigest(bundlePEM)
	return tokenPrefix + encodeDigest(sum) + "-" + secret, nil
}

func encodeDigest(sum [sha256.Size]byte) string {
	d := new(big.Int).SetBytes(sum[:]).Text(36)
	return strings.Repeat("0", digestLen-len(d)) + d
}

// ParseToken checks a join token's shape and returns its CA digest. Every
// malformation gets Swarm's one text, so the answer says nothing of which
// part was wrong.
func ParseToken(s string) (Token, error) {
	bad := errdefs.InvalidArgument(msgInvalidToken)
	if len(s) != tokenLen || !strings.HasPrefix(s, tokenPrefix) {
		return Token{}, bad
	}
	rest := s[len(tokenPrefix):]
	digest, secret, ok := strings.Cut(rest, "-")
	if !ok || len(digest) != digestLen || !identity.Valid(secret) || !base36(digest) {
		return Token{}, bad
	}
	n, ok := new(big.Int).SetString(digest, 36)
	if !ok || n.BitLen() > 8*sha256.Size {
		// 36^50 exceeds 2^256: some 50-digit texts are no SHA-256.
		return Token{}, bad
	}
	var t Token
	n.FillBytes(t.CADigest[:])
	return t, nil
}

func base36(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

// VerifyCA is a joining node's first step: the CA bundle it fetched from a
// manager without verification is trusted only if it is the one the token
// pins. It returns the bundle's root certificates, checked as roots.
//
// Tokens hush issued before it followed Swarm pinned the DER of a single
// root; such a digest is accepted only for a bundle of exactly that one
// certificate, so no unpinned certificate rides along.
func VerifyCA(t Token, bundlePEM []byte, now time.Time) ([]*x509.Certificate, error) {
	if len(bundlePEM) > maxBundleSize || !pinned(t, bundlePEM) {
		return nil, errdefs.InvalidArgument(msgCAMismatch, hex.EncodeToString(t.CADigest[:]))
	}
	return ParseRootBundle(bundlePEM, now)
}

func pinned(t Token, bundlePEM []byte) bool {
	sum := CADigest(bundlePEM)
	if subtle.ConstantTimeCompare(sum[:], t.CADigest[:]) == 1 {
		return true
	}
	blk, rest := pem.Decode(bundlePEM)
	if blk == nil || blk.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		return false
	}
	sum = sha256.Sum256(blk.Bytes)
	return subtle.ConstantTimeCompare(sum[:], t.CADigest[:]) == 1
}
