package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
)

// SealKeyFunc keeps a node key at rest. The daemon supplies it: it seals
// keyDER (with the keyring, under the master key, so autolock covers it)
// and stores only the sealed form. keyDER is wiped when it returns, so it
// must not be kept.
type SealKeyFunc func(ctx context.Context, keyDER []byte) error

// OpenKeyFunc returns the node key SealKeyFunc kept, opened; the slice
// is handed over and wiped after parsing.
type OpenKeyFunc func(ctx context.Context) ([]byte, error)

// NodeKeyAAD binds a sealed node key to its node, so a sealed key copied
// into another node's record does not open there.
func NodeKeyAAD(nodeID string) []byte { return []byte("hush/pki/node-key/" + nodeID) }

// SaveNodeKey hands key to seal as PKCS #8 DER and wipes that DER. The
// package never writes a key itself.
func SaveNodeKey(ctx context.Context, seal SealKeyFunc, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode node key: %w: %w", errdefs.ErrInternal, err)
	}
	defer keyring.Wipe(der)
	return seal(ctx, der)
}

// LoadNodeKey opens the kept node key and wipes the opened DER. The key
// must be ECDSA P-256, as NewNodeKey makes. The parsed key's scalar lives
// in crypto/ecdsa's own memory, which Go gives no way to wipe.
func LoadNodeKey(ctx context.Context, open OpenKeyFunc) (*ecdsa.PrivateKey, error) {
	der, err := open(ctx)
	if err != nil {
		return nil, err
	}
	defer keyring.Wipe(der)
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse node key: %w", errdefs.ErrInternal)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("node key is not ECDSA P-256: %w", errdefs.ErrInternal)
	}
	return ek, nil
}
