// Package identity generates object IDs in Docker Swarm's format.
//
// IDs are 25 lowercase base-36 characters taken from a 136-bit random number
// whose top bit is set, so the text always has 27 digits and no padding is
// needed; the first digit (always the same few values) and the last are
// dropped. Clients such as the docker CLI truncate and prefix-match these IDs,
// so the format is part of the wire contract.
package identity

import (
	"crypto/rand"
	"io"
	"math/big"
)

// Length of an ID in characters.
const Length = 25

// entropyBytes gives 136 bits; with the top bit forced the base-36 text is
// exactly 27 digits long.
const entropyBytes = 17

// NewID returns a fresh random ID from crypto/rand.
func NewID() (string, error) { return NewIDFrom(rand.Reader) }

// NewIDFrom returns an ID drawn from r; tests pass a deterministic reader.
func NewIDFrom(r io.Reader) (string, error) {
	var p [entropyBytes]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return "", err
	}
	p[0] |= 0x80
	s := new(big.Int).SetBytes(p[:]).Text(36)
	return s[1 : Length+1], nil
}

// Valid reports whether s has the shape of an ID (length and alphabet).
func Valid(s string) bool {
	if len(s) != Length {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}
