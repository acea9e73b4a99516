package keyring

import (
	"bytes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Autolock keeps the master key on disk only wrapped by a key derived from
// an unlock key that an operator holds (Swarm's SWMKEY-1-… format). The
// unlock key carries 256 random bits, so HKDF is a sufficient derivation; a
// slow password hash would add nothing but start-up latency.

const (
	unlockKeyPrefix = "SWMKEY-1-"
	lockedMagic     = "hush-mk-locked-v1"
	unlockInfo      = "hush autolock v1"
)

// ErrBadUnlockKey means the unlock key is malformed or does not open the
// locked master key. Its text never contains the key.
var ErrBadUnlockKey = errors.New("keyring: invalid unlock key")

// GenerateUnlockKey returns a fresh unlock key in Swarm's format.
func GenerateUnlockKey() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("keyring: generating unlock key: %w", err)
	}
	defer Wipe(b[:])
	return unlockKeyPrefix + base64.RawStdEncoding.EncodeToString(b[:]), nil
}

func parseUnlockKey(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), unlockKeyPrefix)
	if !ok {
		return nil, ErrBadUnlockKey
	}
	b, err := base64.RawStdEncoding.DecodeString(rest)
	if err != nil || len(b) != 32 {
		return nil, ErrBadUnlockKey
	}
	return b, nil
}

func unlockAEAD(unlockKey string, salt []byte) (cipher.AEAD, error) {
	raw, err := parseUnlockKey(unlockKey)
	if err != nil {
		return nil, err
	}
	defer Wipe(raw)
	k, err := hkdf.Key(sha256.New, raw, salt, unlockInfo, keySize)
	if err != nil {
		return nil, fmt.Errorf("keyring: deriving unlock key: %w", err)
	}
	defer Wipe(k)
	return newGCM(k)
}

// LockedKeyStore keeps the master key wrapped by an unlock key.
type LockedKeyStore struct{ Path string }

// Exists reports whether a locked key file is present.
func (l LockedKeyStore) Exists() bool {
	_, err := os.Lstat(l.Path)
	return err == nil
}

// Store writes key wrapped by unlockKey, replacing any previous file
// atomically (rotation re-wraps in place; the old key stops working once
// the rename is durable).
func (l LockedKeyStore) Store(key MasterKey, unlockKey string) error {
	if err := key.Validate(); err != nil {
		return err
	}
	salt := make([]byte, 16)
	nonce := make([]byte, 12)
	if _, err := rand.Read(salt); err != nil {
		return err
	}
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	aead, err := unlockAEAD(unlockKey, salt)
	if err != nil {
		return err
	}
	ct := aead.Seal(nil, nonce, key.Key, []byte(lockedMagic+":"+key.ID))
	line := fmt.Sprintf("%s:%s:%s:%s:%s\n", lockedMagic, key.ID,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(nonce),
		base64.RawStdEncoding.EncodeToString(ct))
	return replaceFileSync(l.Path, []byte(line))
}

// Load opens the locked master key with unlockKey.
func (l LockedKeyStore) Load(unlockKey string) (MasterKey, error) {
	b, err := os.ReadFile(l.Path)
	if err != nil {
		return MasterKey{}, fmt.Errorf("keyring: reading locked key: %w", err)
	}
	parts := strings.Split(strings.TrimSuffix(string(b), "\n"), ":")
	if len(parts) != 5 || parts[0] != lockedMagic || !validID(parts[1]) {
		return MasterKey{}, errors.New("keyring: locked key file is corrupt")
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[2])
	nonce, err2 := base64.RawStdEncoding.DecodeString(parts[3])
	ct, err3 := base64.RawStdEncoding.DecodeString(parts[4])
	if err1 != nil || err2 != nil || err3 != nil || len(nonce) != 12 {
		return MasterKey{}, errors.New("keyring: locked key file is corrupt")
	}
	aead, err := unlockAEAD(unlockKey, salt)
	if err != nil {
		return MasterKey{}, err
	}
	pt, err := aead.Open(nil, nonce, ct, []byte(lockedMagic+":"+parts[1]))
	if err != nil {
		return MasterKey{}, ErrBadUnlockKey
	}
	mk := MasterKey{ID: parts[1], Key: pt}
	if err := mk.Validate(); err != nil {
		Wipe(pt)
		return MasterKey{}, errors.New("keyring: locked key file holds an invalid key")
	}
	return mk, nil
}

// Remove deletes the locked key file.
func (l LockedKeyStore) Remove() error { return removeSynced(l.Path) }

// Load reads the plaintext master key file without creating one.
func (f FileKeyStore) Load() (MasterKey, error) { return loadKeyFile(f.Path) }

// Store writes key to the plaintext key file (0600); the file must not
// exist yet.
func (f FileKeyStore) Store(key MasterKey) error {
	won, err := createKeyFile(f.Path, key)
	if err != nil {
		return err
	}
	if !won {
		return fmt.Errorf("keyring: %s exists already", f.Path)
	}
	return nil
}

// Exists reports whether the plaintext key file is present.
func (f FileKeyStore) Exists() bool {
	_, err := os.Lstat(f.Path)
	return err == nil
}

// Remove deletes the plaintext key file after overwriting its bytes. On a
// journaling or copy-on-write file system the overwrite is best effort;
// what it guarantees is that the live file no longer holds the key.
func (f FileKeyStore) Remove() error {
	if fh, err := os.OpenFile(f.Path, os.O_WRONLY, 0); err == nil {
		if st, err := fh.Stat(); err == nil {
			_, _ = fh.WriteAt(bytes.Repeat([]byte{0}, int(st.Size())), 0)
			_ = fh.Sync()
		}
		fh.Close()
	}
	return removeSynced(f.Path)
}

func removeSynced(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("keyring: removing %s: %w", filepath.Base(path), err)
	}
	return syncDir(filepath.Dir(path))
}

// replaceFileSync writes b to path via a synced temp file and rename.
func replaceFileSync(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := mkdirAllSynced(dir); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, tempPattern)
	if err != nil {
		return err
	}
	name := tmp.Name()
	defer os.Remove(name)
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(name, path); err != nil {
		return err
	}
	return syncDir(dir)
}
