package keyring

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// encodeKeyFile is the key file's one valid encoding of m (as
// createKeyFile writes it).
func encodeKeyFile(m MasterKey) []byte {
	b := append([]byte(fileMagic), m.ID...)
	b = append(b, ':')
	b = hex.AppendEncode(b, m.Key)
	return append(b, '\n')
}

// FuzzParseKeyFile: no input panics; an accepted file holds a valid key
// and is exactly that key's canonical encoding (so a damaged file is never
// read as some other key); every generated key round-trips.
func FuzzParseKeyFile(f *testing.F) {
	mk, err := GenerateMasterKey()
	if err != nil {
		f.Fatal(err)
	}
	good := encodeKeyFile(mk)
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(bytes.ToUpper(good))
	f.Add(append(append([]byte{}, good...), '\n'))
	f.Add([]byte(fileMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, buf []byte) {
		m, ok := parseKeyFile(buf)
		if !ok {
			if m.Key != nil || m.ID != "" {
				t.Fatal("a refused file must yield no key")
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted an invalid key: %v", err)
		}
		if !bytes.Equal(encodeKeyFile(m), buf) {
			t.Fatalf("accepted a non-canonical file %q", buf)
		}
		// The other direction: a fresh key survives encoding.
		fresh, err := GenerateMasterKey()
		if err != nil {
			t.Fatal(err)
		}
		back, ok := parseKeyFile(encodeKeyFile(fresh))
		if !ok || back.ID != fresh.ID || !bytes.Equal(back.Key, fresh.Key) {
			t.Fatal("a generated key does not round-trip")
		}
	})
}

// FuzzParseUnlockKey: no input panics; an accepted key is 32 bytes and
// its canonical spelling parses to the same bytes.
func FuzzParseUnlockKey(f *testing.F) {
	k, err := GenerateUnlockKey()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{k, " " + k + "\n", k[:len(k)-1], strings.ToLower(k), unlockKeyPrefix, "SWMKEY-1-", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := parseUnlockKey(s)
		if err != nil {
			if err != ErrBadUnlockKey {
				t.Fatalf("error %v must be ErrBadUnlockKey", err)
			}
			return
		}
		if len(b) != 32 {
			t.Fatalf("accepted %d bytes", len(b))
		}
		again, err := parseUnlockKey(unlockKeyPrefix + base64.RawStdEncoding.EncodeToString(b))
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("canonical form does not round-trip: %v", err)
		}
	})
}

// FuzzLockedKeyFile: whatever the locked key file holds, Load does not
// panic, refuses it unless it opens with the unlock key, and never returns
// an invalid key. A file Store wrote loads back to the same key.
func FuzzLockedKeyFile(f *testing.F) {
	dir := f.TempDir()
	unlock, err := GenerateUnlockKey()
	if err != nil {
		f.Fatal(err)
	}
	mk, err := GenerateMasterKey()
	if err != nil {
		f.Fatal(err)
	}
	good := LockedKeyStore{Path: filepath.Join(dir, "seed")}
	if err := good.Store(mk, unlock); err != nil {
		f.Fatal(err)
	}
	back, err := good.Load(unlock)
	if err != nil || back.ID != mk.ID || !bytes.Equal(back.Key, mk.Key) {
		f.Fatalf("stored key does not load back: %v", err)
	}
	seed, err := os.ReadFile(good.Path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add(bytes.Replace(seed, []byte(":"), []byte("::"), 1))
	f.Add([]byte(lockedMagic + ":a:b:c:d\n"))
	path := filepath.Join(dir, "fuzz")
	f.Fuzz(func(t *testing.T, content []byte) {
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := LockedKeyStore{Path: path}.Load(unlock)
		if err != nil {
			return
		}
		if verr := m.Validate(); verr != nil {
			t.Fatalf("loaded an invalid key: %v", verr)
		}
		// Only the sealed key under this unlock key opens: the one Store
		// wrote.
		if m.ID != mk.ID || !bytes.Equal(m.Key, mk.Key) {
			t.Fatal("loaded a key Store never wrote")
		}
	})
}
