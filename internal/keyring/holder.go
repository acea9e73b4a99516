package keyring

import (
	"errors"
	"sync/atomic"
)

// ErrLocked means no master key is loaded: the cluster is locked (autolock)
// or not initialised.
var ErrLocked = errors.New("keyring: locked")

// Holder is a Keyring that can be loaded and unloaded while the daemon runs
// (swarm init, unlock, leave); users keep one Holder for their lifetime.
type Holder struct{ p atomic.Pointer[Keyring] }

// Set loads k (nil unloads).
func (h *Holder) Set(k *Keyring) { h.p.Store(k) }

// Swap loads k (nil unloads) and returns the keyring it replaces.
func (h *Holder) Swap(k *Keyring) *Keyring { return h.p.Swap(k) }

// Seal seals with the loaded keyring.
func (h *Holder) Seal(plaintext, aad []byte) (Sealed, error) {
	k := h.p.Load()
	if k == nil {
		return Sealed{}, ErrLocked
	}
	return k.Seal(plaintext, aad)
}

// Open opens with the loaded keyring.
func (h *Holder) Open(s Sealed, aad []byte) ([]byte, error) {
	k := h.p.Load()
	if k == nil {
		return nil, ErrLocked
	}
	return k.Open(s, aad)
}
