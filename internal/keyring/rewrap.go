package keyring

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

// CurrentID returns the ID of the master key that new seals use.
func (k *Keyring) CurrentID() (string, error) {
	id, _, err := k.currentKEK()
	return id, err
}

// Holds reports whether the master key id is loaded.
func (k *Keyring) Holds(id string) bool {
	if k == nil {
		return false
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.keys[id] != nil
}

// Add loads m so that values sealed under it open, without sealing under
// it: a manager taking part in a cluster-wide rotation holds the new key
// before every other manager does, and must not seal under it until they
// all do. Adding a key already held (same ID and bytes) does nothing; the
// same ID with other bytes is refused, as Rotate refuses it.
func (k *Keyring) Add(m MasterKey) error {
	if k == nil {
		return errNotInit
	}
	kk, err := newKEK(m)
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if existing, ok := k.keys[m.ID]; ok {
		Free(kk.raw)
		if subtle.ConstantTimeCompare(existing.raw, m.Key) != 1 {
			return errors.New("keyring: add rejected: master key ID already in use with different key bytes")
		}
		return nil
	}
	if k.keys == nil {
		k.keys = make(map[string]*kek)
	}
	k.keys[m.ID] = kk
	delete(k.retired, m.ID)
	return nil
}

// Forget drops the master key id and wipes its bytes, so that nothing
// sealed under it opens any more. The current key cannot be forgotten.
func (k *Keyring) Forget(id string) error {
	if k == nil {
		return errNotInit
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if id == k.current {
		return errors.New("keyring: the current master key cannot be forgotten")
	}
	if kk := k.keys[id]; kk != nil {
		Free(kk.raw)
		kk.raw = nil
		delete(k.keys, id)
		if k.retired == nil {
			k.retired = map[string]bool{}
		}
		k.retired[id] = true
	}
	return nil
}

// Retired reports whether the master key id was held and then forgotten:
// a value sealed under it, written now, could never be opened.
func (k *Keyring) Retired(id string) bool {
	if k == nil {
		return false
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.retired[id]
}

// Rewrap returns s with its data key wrapped under the current master key
// instead of the one s names; the value's ciphertext is unchanged, so a
// master-key rotation costs two small AEAD operations per value whatever
// its size. A value already under the current key is returned as it is.
// aad must be the value's associated data, as for Open.
func (k *Keyring) Rewrap(s Sealed, aad []byte) (Sealed, error) {
	if len(aad) == 0 {
		return Sealed{}, errNoAAD
	}
	id, cur, err := k.currentKEK()
	if err != nil {
		return Sealed{}, err
	}
	if s.KeyID == id {
		return s, nil
	}
	k.mu.RLock()
	old := k.keys[s.KeyID]
	k.mu.RUnlock()
	if old == nil {
		if validID(s.KeyID) {
			return Sealed{}, fmt.Errorf("%w: %w %q", ErrDecrypt, ErrUnknownKey, s.KeyID)
		}
		return Sealed{}, fmt.Errorf("%w: %w (malformed key ID)", ErrDecrypt, ErrUnknownKey)
	}
	if len(s.WrappedKey) != wrappedKeySize {
		return Sealed{}, fmt.Errorf("%w: malformed sealed value", ErrDecrypt)
	}
	dek, err := old.aead.Open(make([]byte, 0, keySize), s.WrappedKey[:nonceSize], s.WrappedKey[nonceSize:], wrapAAD(s.KeyID, aad))
	if err != nil {
		return Sealed{}, fmt.Errorf("%w: wrapped key rejected", ErrDecrypt)
	}
	defer Wipe(dek)
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return Sealed{}, fmt.Errorf("keyring: reading random bytes: %w", err)
	}
	wrapped := make([]byte, nonceSize, wrappedKeySize)
	copy(wrapped, nonce[:])
	wrapped = cur.aead.Seal(wrapped, nonce[:], dek, wrapAAD(id, aad))
	return Sealed{KeyID: id, WrappedKey: wrapped, Nonce: s.Nonce, Ciphertext: s.Ciphertext}, nil
}

// Binary form of a Sealed value, for stores that keep bytes (etcd) and
// should not pay base64 on top of the value's own encoding:
//
//	version(1) | len(KeyID)(1) | KeyID | WrappedKey(60) | Nonce(12) | Ciphertext
const binaryVersion = 1

// AppendBinary appends the binary form of s to b.
func (s Sealed) AppendBinary(b []byte) ([]byte, error) {
	if !validID(s.KeyID) || len(s.WrappedKey) != wrappedKeySize || len(s.Nonce) != nonceSize {
		return nil, errors.New("keyring: sealed value is malformed")
	}
	b = append(b, binaryVersion, byte(len(s.KeyID)))
	b = append(b, s.KeyID...)
	b = append(b, s.WrappedKey...)
	b = append(b, s.Nonce...)
	return append(b, s.Ciphertext...), nil
}

// BinarySize is the length of s's binary form.
func (s Sealed) BinarySize() int {
	return 2 + len(s.KeyID) + len(s.WrappedKey) + len(s.Nonce) + len(s.Ciphertext)
}

var errMalformedBinary = fmt.Errorf("%w: malformed sealed value", ErrDecrypt)

// ParseBinary reads the binary form. The result's slices alias b.
func ParseBinary(b []byte) (Sealed, error) {
	bad := errMalformedBinary
	if len(b) < 2 || b[0] != binaryVersion {
		return Sealed{}, bad
	}
	n := int(b[1])
	rest := b[2:]
	if len(rest) < n+wrappedKeySize+nonceSize+tagSize {
		return Sealed{}, bad
	}
	id := string(rest[:n])
	if !validID(id) {
		return Sealed{}, bad
	}
	rest = rest[n:]
	return Sealed{
		KeyID:      id,
		WrappedKey: rest[:wrappedKeySize:wrappedKeySize],
		Nonce:      rest[wrappedKeySize : wrappedKeySize+nonceSize : wrappedKeySize+nonceSize],
		Ciphertext: rest[wrappedKeySize+nonceSize:],
	}, nil
}

// Keyring returns the loaded keyring (nil when locked).
func (h *Holder) Keyring() *Keyring { return h.p.Load() }

// Rewrap re-wraps with the loaded keyring.
func (h *Holder) Rewrap(s Sealed, aad []byte) (Sealed, error) {
	k := h.p.Load()
	if k == nil {
		return Sealed{}, ErrLocked
	}
	return k.Rewrap(s, aad)
}

// CurrentID is the loaded keyring's current master key ID.
func (h *Holder) CurrentID() (string, error) {
	k := h.p.Load()
	if k == nil {
		return "", ErrLocked
	}
	return k.CurrentID()
}

// SealKey seals a master key under the current one, so that a key being
// introduced (a rotation in progress) can be kept on disk under the key it
// replaces: whoever can open the old key's file can open the new one, and
// no one else. The result is bound to the new key's ID.
func (k *Keyring) SealKey(m MasterKey) (Sealed, error) {
	if err := m.Validate(); err != nil {
		return Sealed{}, err
	}
	return k.Seal(m.Key, keyAAD(m.ID))
}

// OpenKey opens a master key sealed by SealKey.
func (k *Keyring) OpenKey(id string, s Sealed) (MasterKey, error) {
	b, err := k.Open(s, keyAAD(id))
	if err != nil {
		return MasterKey{}, err
	}
	m := MasterKey{ID: id, Key: b}
	if err := m.Validate(); err != nil {
		Wipe(b)
		return MasterKey{}, err
	}
	return m, nil
}

func keyAAD(id string) []byte {
	// Length-prefixed like wrapAAD, though nothing follows the ID yet.
	b := binary.BigEndian.AppendUint32([]byte("hush/keyring/v1/master-key\x00"), uint32(len(id)))
	return append(b, id...)
}
