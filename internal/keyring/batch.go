package keyring

import (
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// Batch seals the values of one write (an object's record, its name-index
// entry, its version) under one fresh data key, generated and expanded
// once: each value still gets its own random data nonce and its own
// wrapping of the data key, under the value's associated data, so each
// sealed value has exactly the form Seal gives it. Open, Rewrap and
// ParseBinary read it unchanged, a master-key rotation re-wraps each value
// on its own, and a value moved to another place (other associated data)
// fails to open as before. What the shared key changes: whoever learns the
// data key of one value of the write can open the write's other values,
// which belong to the same object.
//
// Random 96-bit nonces under one key are safe far beyond the handful of
// values a write holds. A Batch is for one goroutine; Close wipes the key.
type Batch struct {
	id   string
	kk   *kek
	dek  []byte // locked memory
	aead cipher.AEAD
	// scratch holds the associated data of the value being sealed.
	scratch []byte
}

// NewBatch returns a Batch sealing under the current master key.
func (k *Keyring) NewBatch() (*Batch, error) {
	id, kk, err := k.currentKEK()
	if err != nil {
		return nil, err
	}
	dek := NewLocked(keySize)
	if _, err := rand.Read(dek); err != nil {
		Free(dek)
		return nil, fmt.Errorf("keyring: reading random bytes: %w", err)
	}
	aead, err := newGCM(dek)
	if err != nil {
		Free(dek)
		return nil, err
	}
	return &Batch{id: id, kk: kk, dek: dek, aead: aead}, nil
}

// KeyID is the master key the batch wraps its data key under.
func (b *Batch) KeyID() string { return b.id }

var errBatchClosed = errors.New("keyring: batch is closed")

// AppendSeal seals plaintext bound to aad and appends its binary form (see
// AppendBinary) to dst, sealing in place: no intermediate copies.
func (b *Batch) AppendSeal(dst, plaintext, aad []byte) ([]byte, error) {
	if len(aad) == 0 {
		return nil, errNoAAD
	}
	if b.dek == nil {
		return nil, errBatchClosed
	}
	var nonces [2 * nonceSize]byte
	if _, err := rand.Read(nonces[:]); err != nil {
		return nil, fmt.Errorf("keyring: reading random bytes: %w", err)
	}
	wrapNonce, nonce := nonces[:nonceSize], nonces[nonceSize:]
	need := BinarySizeFor(b.id, len(plaintext))
	if cap(dst)-len(dst) < need {
		grown := make([]byte, len(dst), len(dst)+need)
		copy(grown, dst)
		dst = grown
	}
	dst = append(dst, binaryVersion, byte(len(b.id)))
	dst = append(dst, b.id...)
	dst = append(dst, wrapNonce...)
	var wa, da []byte
	// The scratch buffer serves each value of the batch in turn.
	wa, da, b.scratch = bothAADsIn(b.scratch, b.id, aad)
	dst = b.kk.aead.Seal(dst, wrapNonce, b.dek, wa)
	dst = append(dst, nonce...)
	return b.aead.Seal(dst, nonce, plaintext, da), nil
}

// Close wipes and frees the data key. Closing twice is harmless.
func (b *Batch) Close() {
	if b.dek != nil {
		Free(b.dek)
		b.dek, b.aead = nil, nil
	}
}

// BinarySizeFor is the length of the binary form of a value of n bytes
// sealed under master key id.
func BinarySizeFor(id string, n int) int {
	return 2 + len(id) + wrappedKeySize + nonceSize + n + tagSize
}
