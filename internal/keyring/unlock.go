package keyring

import (
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
	"syscall"
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

// parseUnlockKey returns the key's 32 bytes in locked memory (Free them).
func parseUnlockKey(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), unlockKeyPrefix)
	if !ok || len(rest) != base64.RawStdEncoding.EncodedLen(32) {
		return nil, ErrBadUnlockKey
	}
	src := []byte(rest)
	defer Wipe(src)
	b := NewLocked(32)
	if n, err := base64.RawStdEncoding.Decode(b, src); err != nil || n != 32 {
		Free(b)
		return nil, ErrBadUnlockKey
	}
	return b, nil
}

func unlockAEAD(unlockKey string, salt []byte) (cipher.AEAD, error) {
	raw, err := parseUnlockKey(unlockKey)
	if err != nil {
		return nil, err
	}
	defer Free(raw)
	// hkdf returns the derived key on the heap; it lives only until the
	// AES key schedule is built from it (which is on the heap too, see
	// docs/DESIGN.md "Key material in memory").
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
	if err1 != nil || err2 != nil || err3 != nil || len(nonce) != 12 || len(ct) != keySize+tagSize {
		return MasterKey{}, errors.New("keyring: locked key file is corrupt")
	}
	aead, err := unlockAEAD(unlockKey, salt)
	if err != nil {
		return MasterKey{}, err
	}
	// Opened in place into locked memory: the capacity fits the key.
	buf := NewLocked(keySize)
	pt, err := aead.Open(buf[:0], nonce, ct, []byte(lockedMagic+":"+parts[1]))
	if err != nil {
		Free(buf)
		return MasterKey{}, ErrBadUnlockKey
	}
	mk := MasterKey{ID: parts[1], Key: pt}
	if err := mk.Validate(); err != nil {
		Free(buf)
		return MasterKey{}, errors.New("keyring: locked key file holds an invalid key")
	}
	return mk, nil
}

// Opens reports whether unlockKey opens the locked key file.
func (l LockedKeyStore) Opens(unlockKey string) bool {
	mk, err := l.Load(unlockKey)
	if err != nil {
		return false
	}
	mk.Destroy()
	return true
}

// MoveTo renames the locked key file to dst's path, replacing dst's file
// atomically, and makes the change durable. Both must be in one directory.
func (l LockedKeyStore) MoveTo(dst LockedKeyStore) error {
	if filepath.Dir(l.Path) != filepath.Dir(dst.Path) {
		return errors.New("keyring: locked key files must share a directory")
	}
	if err := os.Rename(l.Path, dst.Path); err != nil {
		return fmt.Errorf("keyring: installing locked key: %w", err)
	}
	return syncDir(filepath.Dir(dst.Path))
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
	overwrite(f.Path, true)
	return removeSynced(f.Path)
}

// wipeFile overwrites the bytes of the temp file at path before it is
// unlinked, unless the file has another name: a temp file that was
// already linked into place (a crash between link and unlink) holds the
// installed key file's bytes, which must stay.
func wipeFile(path string) { overwrite(path, false) }

// overwrite zeroes the regular file at path and syncs it, best effort;
// shared says whether a file with other hard links is overwritten too.
func overwrite(path string, shared bool) {
	fh, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !shared {
		return
	}
	// Key files are a few hundred bytes; anything bigger under a key
	// file's name is not ours to spend time on.
	if fi.Size() > 1<<20 {
		return
	}
	_, _ = fh.WriteAt(make([]byte, fi.Size()), 0)
	_ = fh.Sync()
}

// RemoveTempFiles removes the temporary files an interrupted key-file
// write left in dir (a crash between creating and renaming or linking
// one), overwriting each first unless it is another name of an installed
// key file. It returns how many it removed. A missing dir is not an error.
func RemoveTempFiles(dir string) (int, error) {
	matches, err := filepath.Glob(filepath.Join(dir, tempPattern))
	if err != nil {
		return 0, fmt.Errorf("keyring: listing temp key files: %w", err)
	}
	n := 0
	for _, m := range matches {
		fi, err := os.Lstat(m)
		if err != nil {
			continue
		}
		if fi.Mode().IsRegular() {
			wipeFile(m)
		}
		if err := os.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return n, fmt.Errorf("keyring: removing temp key file %s: %w", filepath.Base(m), err)
		}
		n++
	}
	if n > 0 {
		if err := syncDir(dir); err != nil {
			return n, err
		}
	}
	return n, nil
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
	renamed := false
	defer func() {
		if !renamed {
			wipeFile(name)
			os.Remove(name)
		}
	}()
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
	renamed = true
	return syncDir(dir)
}
