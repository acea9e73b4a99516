package keyring

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// MasterKey is a cluster key-encryption key. ID is stored next to every
// value it wraps, so it must be stable and is not secret; Key is.
type MasterKey struct {
	ID  string
	Key []byte // 32 bytes
}

const maxIDLen = 64

// Validate reports whether m can be used by New or Rotate. The error never
// contains key bytes.
func (m MasterKey) Validate() error {
	if !validID(m.ID) {
		return fmt.Errorf("keyring: invalid master key ID: want 1-%d characters from [A-Za-z0-9._-]", maxIDLen)
	}
	if len(m.Key) != keySize {
		return fmt.Errorf("keyring: master key %q: want %d bytes, got %d", m.ID, keySize, len(m.Key))
	}
	// An all-zero key is almost always an uninitialised or wiped buffer, not
	// an unlucky draw; sealing under it would be sealing in the clear.
	var acc byte
	for _, b := range m.Key {
		acc |= b
	}
	if acc == 0 {
		return fmt.Errorf("keyring: master key %q is all zeros", m.ID)
	}
	return nil
}

// validID restricts IDs to a charset that is safe to echo in errors and to
// store in file names or JSON without escaping surprises.
func validID(id string) bool {
	if len(id) == 0 || len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// GenerateMasterKey returns a new random 256-bit master key with a random
// 16-hex-character ID.
func GenerateMasterKey() (MasterKey, error) {
	var idb [8]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return MasterKey{}, fmt.Errorf("keyring: reading random bytes: %w", err)
	}
	key := NewLocked(keySize)
	if _, err := rand.Read(key); err != nil {
		Free(key)
		return MasterKey{}, fmt.Errorf("keyring: reading random bytes: %w", err)
	}
	return MasterKey{ID: hex.EncodeToString(idb[:]), Key: key}, nil
}

// Destroy wipes the key bytes and returns their locked memory; m must not
// be used afterwards (its Key is nil).
func (m *MasterKey) Destroy() {
	Free(m.Key)
	m.Key = nil
}

// FileKeyStore keeps one master key in a file readable only by its owner.
// The key is stored unencrypted; protecting it is the job of the file
// system (and, later, of an autolock layer wrapping this store).
type FileKeyStore struct {
	Path string
}

// File format: a single line "hush-mk-v1:<16 hex id>:<64 hex key>\n". A fixed
// layout lets a truncated or hand-edited file be rejected outright instead
// of yielding a different key.
const (
	fileMagic   = "hush-mk-v1:"
	fileIDLen   = 16
	fileSize    = len(fileMagic) + fileIDLen + 1 + 2*keySize + 1
	tempPattern = ".hush-master-key-*.tmp"
)

// LoadOrCreate returns the master key in f.Path, creating it (and missing
// parent directories, mode 0700) if the file does not exist. created reports
// whether this call generated the key.
//
// An existing file is refused if it is not a regular file, has any group or
// other permission bit set, or is not exactly in the expected format: a key
// file that others could read may already be compromised, and a damaged one
// must not be "repaired" by generating a new key, which would orphan every
// value sealed under the old one.
func (f FileKeyStore) LoadOrCreate() (key MasterKey, created bool, err error) {
	if f.Path == "" {
		return MasterKey{}, false, errors.New("keyring: key store path is empty")
	}
	path := filepath.Clean(f.Path)

	key, err = loadKeyFile(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return MasterKey{}, false, err
	}

	key, err = GenerateMasterKey()
	if err != nil {
		return MasterKey{}, false, err
	}
	won, err := createKeyFile(path, key)
	if err != nil {
		key.Destroy()
		return MasterKey{}, false, err
	}
	if !won {
		// Another process created the file first; its key is the one that
		// will be used from now on, so adopt it rather than ours.
		key.Destroy()
		key, err = loadKeyFile(path)
		if err != nil {
			return MasterKey{}, false, err
		}
		return key, false, nil
	}
	return key, true, nil
}

// loadKeyFile returns an error wrapping fs.ErrNotExist only when nothing is
// at path, so the caller never overwrites something it could not read.
func loadKeyFile(path string) (MasterKey, error) {
	lfi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return MasterKey{}, err
		}
		return MasterKey{}, fmt.Errorf("keyring: master key file: %w", err)
	}
	// Refusing symlinks keeps the key where the operator put it and stops a
	// link from redirecting us to a file with weaker protection.
	if !lfi.Mode().IsRegular() {
		return MasterKey{}, fmt.Errorf("keyring: master key file %s is not a regular file", path)
	}

	file, err := os.Open(path)
	if err != nil {
		return MasterKey{}, fmt.Errorf("keyring: master key file: %w", noNotExist(err))
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return MasterKey{}, fmt.Errorf("keyring: master key file: %w", err)
	}
	// The file might have been swapped between Lstat and Open.
	if !os.SameFile(lfi, fi) {
		return MasterKey{}, fmt.Errorf("keyring: master key file %s changed while opening", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return MasterKey{}, fmt.Errorf("keyring: master key file %s has mode %04o; want no group/other access (0600)", path, perm)
	}

	// The hex key is read into locked memory too: it is the key.
	buf := NewLocked(fileSize + 1)
	defer Free(buf)
	n, err := io.ReadFull(file, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return MasterKey{}, fmt.Errorf("keyring: reading master key file: %w", err)
	}
	key, ok := parseKeyFile(buf[:n])
	if !ok {
		return MasterKey{}, fmt.Errorf("keyring: master key file %s is malformed or truncated (want %d bytes, %q format)", path, fileSize, fileMagic+"<id>:<key>")
	}
	return key, nil
}

// noNotExist stops a file vanishing between Lstat and Open from being read as
// "no key yet", which would make us create a second, different key.
func noNotExist(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return errors.New("file disappeared while opening")
	}
	return err
}

func parseKeyFile(buf []byte) (MasterKey, bool) {
	if len(buf) != fileSize || !bytes.HasPrefix(buf, []byte(fileMagic)) || buf[fileSize-1] != '\n' {
		return MasterKey{}, false
	}
	rest := buf[len(fileMagic) : fileSize-1]
	id, hexKey := rest[:fileIDLen], rest[fileIDLen+1:]
	if rest[fileIDLen] != ':' || !isLowerHex(id) || !isLowerHex(hexKey) {
		return MasterKey{}, false
	}
	key := NewLocked(keySize)
	if _, err := hex.Decode(key, hexKey); err != nil {
		Free(key)
		return MasterKey{}, false
	}
	m := MasterKey{ID: string(id), Key: key}
	if m.Validate() != nil {
		Free(key)
		return MasterKey{}, false
	}
	return m, true
}

// isLowerHex insists on one canonical spelling so the file has exactly one
// valid encoding per key.
func isLowerHex(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// createKeyFile writes key to path atomically and without clobbering: the
// content goes to a synced temp file that is then hard-linked into place.
// Unlike rename, link fails if path already exists, so two processes racing
// to create the key cannot each walk away with a different one. won is false
// if path appeared in the meantime.
func createKeyFile(path string, key MasterKey) (won bool, err error) {
	if len(key.ID) != fileIDLen || !isLowerHex([]byte(key.ID)) {
		return false, errors.New("keyring: master key ID not storable in key file")
	}
	dir := filepath.Dir(path)
	if err := mkdirAllSynced(dir); err != nil {
		return false, err
	}

	tmp, err := os.CreateTemp(dir, tempPattern) // mode 0600
	if err != nil {
		return false, fmt.Errorf("keyring: creating master key file: %w", err)
	}
	tmpName := tmp.Name()
	linked := false
	defer func() {
		// Until the link, the temp file is the only name of its bytes:
		// overwrite them before unlinking. After it, they are the key
		// file's, and only the temp name goes.
		if !linked {
			wipeFile(tmpName)
		}
		tmp.Close()
		os.Remove(tmpName)
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return false, fmt.Errorf("keyring: creating master key file: %w", err)
	}

	buf := NewLocked(fileSize)[:0]
	buf = append(buf, fileMagic...)
	buf = append(buf, key.ID...)
	buf = append(buf, ':')
	buf = hex.AppendEncode(buf, key.Key)
	buf = append(buf, '\n')
	_, err = tmp.Write(buf)
	Free(buf)
	if err != nil {
		return false, fmt.Errorf("keyring: writing master key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return false, fmt.Errorf("keyring: syncing master key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("keyring: writing master key file: %w", err)
	}

	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, fmt.Errorf("keyring: installing master key file: %w", err)
	}
	linked = true
	// Remove the temp name before syncing so one directory sync makes both
	// the new entry and the removal durable.
	if err := os.Remove(tmpName); err != nil {
		return false, fmt.Errorf("keyring: removing temp key file: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return false, err
	}
	return true, nil
}

// mkdirAllSynced creates dir (mode 0700) and any missing parents, syncing
// each new directory's parent: otherwise a crash could lose the directory
// and with it the key file, and the next start would mint a new key.
func mkdirAllSynced(dir string) error {
	var missing []string
	for d := dir; ; {
		if _, err := os.Lstat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("keyring: key store directory: %w", err)
		}
		missing = append(missing, d)
		parent := filepath.Dir(d)
		if parent == d {
			break
		}
		d = parent
	}
	if len(missing) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keyring: creating key store directory: %w", err)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := syncDir(filepath.Dir(missing[i])); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("keyring: syncing key store directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("keyring: syncing key store directory: %w", err)
	}
	return nil
}
