package keyring

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Replace installs key in f's file in place of the key it holds: the new
// content goes to a synced temp file that is renamed over the path, so the
// file holds the old key or the new one, never neither. The old key's
// bytes are not overwritten by this call: a rotation first links the old
// file to a second name and destroys it from there (FileKeyStore.Remove)
// once the new key is in place.
func (f FileKeyStore) Replace(key MasterKey) error {
	if err := key.Validate(); err != nil {
		return err
	}
	if len(key.ID) != fileIDLen || !isLowerHex([]byte(key.ID)) {
		return errors.New("keyring: master key ID not storable in key file")
	}
	buf := make([]byte, 0, fileSize)
	buf = append(buf, fileMagic...)
	buf = append(buf, key.ID...)
	buf = append(buf, ':')
	buf = hex.AppendEncode(buf, key.Key)
	buf = append(buf, '\n')
	defer Wipe(buf)
	return writeReplacing(f.Path, buf)
}

// writeReplacing writes b to path through a synced temp file (mode 0600)
// and a rename, then syncs the directory.
func writeReplacing(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := mkdirAllSynced(dir); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, tempPattern)
	if err != nil {
		return fmt.Errorf("keyring: writing key file: %w", err)
	}
	name := tmp.Name()
	defer os.Remove(name)
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("keyring: writing key file: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("keyring: writing key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("keyring: syncing key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keyring: writing key file: %w", err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("keyring: installing key file: %w", err)
	}
	return syncDir(dir)
}

// NextKeyStore keeps the master key a rotation is introducing, sealed under
// the key it replaces (see Keyring.SealKey): in the clear and under
// autolock alike, whoever can load the current key can load the next one
// and finish the rotation after a crash, and a copy of this file alone
// reveals nothing.
type NextKeyStore struct{ Path string }

const nextMagic = "hush-mk-next-v1"

// Store writes next sealed by kr's current key, replacing any earlier file.
func (n NextKeyStore) Store(kr *Keyring, next MasterKey) error {
	s, err := kr.SealKey(next)
	if err != nil {
		return err
	}
	b, err := s.AppendBinary(nil)
	if err != nil {
		return err
	}
	line := nextMagic + ":" + next.ID + ":" + base64.RawStdEncoding.EncodeToString(b) + "\n"
	return writeReplacing(n.Path, []byte(line))
}

// ErrNoNextKey means no rotation is in progress.
var ErrNoNextKey = errors.New("keyring: no next master key")

// ID returns the ID of the key the file introduces, without opening it.
func (n NextKeyStore) ID() (string, error) {
	id, _, err := n.read()
	return id, err
}

func (n NextKeyStore) read() (string, Sealed, error) {
	b, err := os.ReadFile(n.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", Sealed{}, ErrNoNextKey
	}
	if err != nil {
		return "", Sealed{}, fmt.Errorf("keyring: reading next master key: %w", err)
	}
	parts := strings.Split(strings.TrimSuffix(string(b), "\n"), ":")
	if len(parts) != 3 || parts[0] != nextMagic || !validID(parts[1]) {
		return "", Sealed{}, errors.New("keyring: next master key file is corrupt")
	}
	raw, err := base64.RawStdEncoding.DecodeString(parts[2])
	if err != nil {
		return "", Sealed{}, errors.New("keyring: next master key file is corrupt")
	}
	s, err := ParseBinary(raw)
	if err != nil {
		return "", Sealed{}, errors.New("keyring: next master key file is corrupt")
	}
	return parts[1], s, nil
}

// Load opens the next key with kr (which must hold the key it was sealed
// under).
func (n NextKeyStore) Load(kr *Keyring) (MasterKey, error) {
	id, s, err := n.read()
	if err != nil {
		return MasterKey{}, err
	}
	return kr.OpenKey(id, s)
}

// Remove deletes the file (a missing file is not an error).
func (n NextKeyStore) Remove() error {
	if err := os.Remove(n.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("keyring: removing next master key: %w", err)
	}
	return syncDir(filepath.Dir(n.Path))
}
