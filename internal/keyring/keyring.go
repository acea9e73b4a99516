package keyring

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// ErrDecrypt is returned (wrapped) by Open for any sealed value that does not
// authenticate. Callers must treat it as "tampered or corrupted", never retry
// with other associated data to find one that works.
var ErrDecrypt = errors.New("keyring: decryption failed")

// ErrUnknownKey is wrapped together with ErrDecrypt when the sealed value
// names a master key this Keyring does not hold. It is separate so an
// operator can tell "master key not loaded" apart from corruption.
var ErrUnknownKey = errors.New("unknown master key")

var errNoAAD = errors.New("keyring: associated data must not be empty")

const (
	keySize   = 32 // AES-256 for both DEK and KEK
	nonceSize = 12 // standard GCM nonce
	tagSize   = 16 // standard GCM tag

	wrappedKeySize = nonceSize + keySize + tagSize

	// Labels give each AEAD use its own domain, so a value produced for one
	// purpose can never authenticate as another, and a future format can
	// change the label instead of guessing from the bytes.
	kekInfo   = "hush/keyring/v1/kek"
	dataLabel = "hush/keyring/v1/data\x00"
	wrapLabel = "hush/keyring/v1/wrap\x00"
)

// Sealed is the at-rest form of one secret version. Every field is public
// information; confidentiality rests on the master key alone.
type Sealed struct {
	KeyID      string `json:"kid"`   // ID of the master key that wrapped the DEK
	WrappedKey []byte `json:"wk"`    // nonce||ciphertext of the DEK under the master key
	Nonce      []byte `json:"nonce"` // GCM nonce of Ciphertext under the DEK
	Ciphertext []byte `json:"ct"`    // value sealed under the DEK, tag included
}

// kek is one master key in usable form.
type kek struct {
	// raw is kept only to recognise a Rotate that reuses an ID with
	// different bytes, which would orphan every value sealed under it.
	raw  []byte
	aead cipher.AEAD
}

// Keyring seals and opens values. It is safe for concurrent use.
type Keyring struct {
	mu      sync.RWMutex
	current string
	keys    map[string]*kek
	// rotateErr holds the reason the last Rotate was rejected. Rotate cannot
	// return an error, and silently sealing under the old key after a
	// requested rotation (often prompted by a suspected compromise) would be
	// worse than refusing to seal, so Seal fails until a good Rotate.
	rotateErr error
	// retired holds the IDs of the master keys Forget dropped.
	retired map[string]bool
}

// New returns a Keyring that seals under master. The key bytes are copied,
// so the caller may Wipe its copy afterwards.
func New(master MasterKey) (*Keyring, error) {
	kk, err := newKEK(master)
	if err != nil {
		return nil, err
	}
	return &Keyring{
		current: master.ID,
		keys:    map[string]*kek{master.ID: kk},
	}, nil
}

// Rotate makes newMaster the key for all future seals while keeping every
// previous master key, so values sealed earlier still open. Rotating to a key
// already held (same ID and bytes) just makes it current again.
//
// An invalid key, or an ID already held with different bytes, is rejected:
// the previous keys stay, and Seal returns an error until a valid Rotate.
// Call MasterKey.Validate first to check a key up front.
func (k *Keyring) Rotate(newMaster MasterKey) {
	if k == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()

	if existing, ok := k.keys[newMaster.ID]; ok {
		if subtle.ConstantTimeCompare(existing.raw, newMaster.Key) != 1 {
			k.rotateErr = errors.New("keyring: rotate rejected: master key ID already in use with different key bytes")
			return
		}
		k.current, k.rotateErr = newMaster.ID, nil
		return
	}
	kk, err := newKEK(newMaster)
	if err != nil {
		k.rotateErr = fmt.Errorf("keyring: rotate rejected: %w", err)
		return
	}
	if k.keys == nil {
		k.keys = make(map[string]*kek)
	}
	k.keys[newMaster.ID] = kk
	k.current, k.rotateErr = newMaster.ID, nil
}

// Seal encrypts plaintext under a fresh DEK and wraps the DEK under the
// current master key. aad must identify the value's place (e.g.
// "secret/<id>/<version>"); the same aad is required to Open. Empty plaintext
// is allowed; empty aad is not, because it would bind the value to nothing.
func (k *Keyring) Seal(plaintext, aad []byte) (Sealed, error) {
	if len(aad) == 0 {
		return Sealed{}, errNoAAD
	}
	id, kk, err := k.currentKEK()
	if err != nil {
		return Sealed{}, err
	}

	buf := NewLocked(keySize + 2*nonceSize) // the DEK, in locked memory
	defer Free(buf)
	if _, err := rand.Read(buf); err != nil {
		return Sealed{}, fmt.Errorf("keyring: reading random bytes: %w", err)
	}
	dek := buf[:keySize]
	nonce := buf[keySize : keySize+nonceSize]
	wrapNonce := buf[keySize+nonceSize:]
	return sealWith(id, kk, dek, nonce, wrapNonce, plaintext, aad)
}

// sealWith is Seal with the randomness supplied, so tests can build a
// deterministic valid seal.
func sealWith(id string, kk *kek, dek, nonce, wrapNonce, plaintext, aad []byte) (Sealed, error) {
	dataAEAD, err := newGCM(dek)
	if err != nil {
		return Sealed{}, err
	}
	ct := dataAEAD.Seal(nil, nonce, plaintext, dataAAD(aad))

	wrapped := make([]byte, nonceSize, wrappedKeySize)
	copy(wrapped, wrapNonce)
	wrapped = kk.aead.Seal(wrapped, wrapNonce, dek, wrapAAD(id, aad))

	return Sealed{
		KeyID:      id,
		WrappedKey: wrapped,
		Nonce:      append([]byte(nil), nonce...),
		Ciphertext: ct,
	}, nil
}

// Open authenticates and decrypts s. aad must equal the aad given to Seal.
// Any mismatch or tampering yields an error wrapping ErrDecrypt; a KeyID the
// Keyring does not hold also wraps ErrUnknownKey.
func (k *Keyring) Open(s Sealed, aad []byte) ([]byte, error) {
	if len(aad) == 0 {
		return nil, errNoAAD
	}
	if k == nil {
		return nil, errNotInit
	}
	k.mu.RLock()
	kk := k.keys[s.KeyID]
	k.mu.RUnlock()
	if kk == nil {
		if validID(s.KeyID) {
			return nil, fmt.Errorf("%w: %w %q", ErrDecrypt, ErrUnknownKey, s.KeyID)
		}
		// The ID is attacker-controlled; do not echo arbitrary bytes.
		return nil, fmt.Errorf("%w: %w (malformed key ID)", ErrDecrypt, ErrUnknownKey)
	}

	// GCM panics on a wrong nonce length, so check shapes before touching it.
	if len(s.WrappedKey) != wrappedKeySize || len(s.Nonce) != nonceSize || len(s.Ciphertext) < tagSize {
		return nil, fmt.Errorf("%w: malformed sealed value", ErrDecrypt)
	}

	dek := NewLocked(keySize) // opened in place: the capacity fits
	defer Free(dek)
	wa, da := bothAADs(s.KeyID, aad)
	if _, err := kk.aead.Open(dek[:0], s.WrappedKey[:nonceSize], s.WrappedKey[nonceSize:], wa); err != nil {
		return nil, fmt.Errorf("%w: wrapped key rejected", ErrDecrypt)
	}

	dataAEAD, err := newGCM(dek)
	if err != nil {
		return nil, err
	}
	pt, err := dataAEAD.Open(make([]byte, 0, len(s.Ciphertext)-tagSize), s.Nonce, s.Ciphertext, da)
	if err != nil {
		return nil, fmt.Errorf("%w: ciphertext rejected", ErrDecrypt)
	}
	return pt, nil
}

var errNotInit = errors.New("keyring: not initialised (use New)")

func (k *Keyring) currentKEK() (string, *kek, error) {
	if k == nil {
		return "", nil, errNotInit
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.rotateErr != nil {
		return "", nil, k.rotateErr
	}
	kk := k.keys[k.current]
	if kk == nil {
		return "", nil, errNotInit
	}
	return k.current, kk, nil
}

func newKEK(m MasterKey) (*kek, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	// Wrap with a derived key rather than the master key itself, so the same
	// master key can later serve other purposes (e.g. the autolock unlock
	// path) without two protocols ever sharing an AES key.
	wk, err := hkdf.Key(sha256.New, m.Key, nil, kekInfo, keySize)
	if err != nil {
		return nil, fmt.Errorf("keyring: deriving wrapping key: %w", err)
	}
	defer Wipe(wk)
	// A cipher.AEAD from crypto/cipher holds only its expanded key after
	// construction, so one instance is shared by concurrent Seal/Open.
	aead, err := newGCM(wk)
	if err != nil {
		return nil, err
	}
	raw := NewLocked(len(m.Key))
	copy(raw, m.Key)
	return &kek{raw: raw, aead: aead}, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		// aes.KeySizeError prints only the length, never the key.
		return nil, fmt.Errorf("keyring: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	return aead, nil
}

// dataAAD is the associated data for the value under its DEK.
func dataAAD(aad []byte) []byte {
	out := make([]byte, 0, len(dataLabel)+len(aad))
	out = append(out, dataLabel...)
	return append(out, aad...)
}

// bothAADs is wrapAAD and dataAAD in one allocation.
func bothAADs(keyID string, aad []byte) (wrap, data []byte) {
	wrap, data, _ = bothAADsIn(nil, keyID, aad)
	return wrap, data
}

// bothAADsIn is bothAADs in buf when it is large enough; it returns the
// buffer used, for the next call.
func bothAADsIn(buf []byte, keyID string, aad []byte) (wrap, data, used []byte) {
	nw := len(wrapLabel) + 4 + len(keyID) + len(aad)
	n := nw + len(dataLabel) + len(aad)
	if cap(buf) < n {
		buf = make([]byte, 0, n)
	}
	wrap = appendWrapAAD(buf[:0], keyID, aad)[:nw:nw]
	data = append(append(buf[nw:nw], dataLabel...), aad...)
	return wrap, data, buf[:0]
}

// wrapAAD binds the wrapped DEK to the master key ID and the caller's aad.
// The ID is length-prefixed so no (id, aad) pair can be re-split into
// another pair with the same encoding.
func wrapAAD(keyID string, aad []byte) []byte {
	return appendWrapAAD(make([]byte, 0, len(wrapLabel)+4+len(keyID)+len(aad)), keyID, aad)
}

func appendWrapAAD(out []byte, keyID string, aad []byte) []byte {
	out = append(out, wrapLabel...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(keyID)))
	out = append(out, keyID...)
	return append(out, aad...)
}

// Wipe zeroes b. Use it on key material once it is no longer needed; Go
// gives no guarantee that copies made elsewhere (GC moves, registers) are
// gone, so this shortens exposure rather than eliminating it.
func Wipe(b []byte) {
	clear(b)
}
