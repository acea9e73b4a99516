package backup

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// ArchiveFormat is the version of the archive inside the stream.
const ArchiveFormat = 1

// Bounds on the manifest: it carries a few small files (node identity, key
// files), never the store.
const (
	maxManifestBytes = 1 << 20
	MaxFiles         = 32
	MaxFileBytes     = 64 << 10
)

// File is one file of the data directory, by its path relative to it.
type File struct {
	Path string
	Data []byte
}

// Manifest describes a backup and carries the files needed to open its
// store. It is written first in the stream; the store snapshot follows it
// to the end of the stream.
type Manifest struct {
	Format      int
	Created     time.Time
	HushVersion string
	NodeID      string
	ClusterID   string
	// Autolock records whether the node was autolocked: a restored node
	// then starts locked, and the unlock key of the backup's time opens it.
	Autolock bool
	Files    []File
}

// Wipe clears the files' contents (key files among them).
func (m *Manifest) Wipe() {
	for i := range m.Files {
		wipe(m.Files[i].Data)
	}
}

// ValidPath reports whether p may be restored: "node.json" or a plain file
// name under "keys/" that does not start with a dot (temporary files do).
func ValidPath(p string) bool {
	if p == "node.json" {
		return true
	}
	name, ok := strings.CutPrefix(p, "keys/")
	if !ok || name == "" || len(name) > 128 || name[0] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (m *Manifest) validate() error {
	if m.Format != ArchiveFormat {
		return fmt.Errorf("%w: archive format %d is not one this hush reads (it reads %d)", ErrDamaged, m.Format, ArchiveFormat)
	}
	if len(m.Files) > MaxFiles {
		return fmt.Errorf("%w: %d files in the manifest (at most %d)", ErrDamaged, len(m.Files), MaxFiles)
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		if !ValidPath(f.Path) || seen[f.Path] {
			return fmt.Errorf("%w: manifest names a file hush does not restore, or one twice", ErrDamaged)
		}
		if len(f.Data) > MaxFileBytes {
			return fmt.Errorf("%w: file %s is larger than %d bytes", ErrDamaged, f.Path, MaxFileBytes)
		}
		seen[f.Path] = true
	}
	if !seen["node.json"] {
		return fmt.Errorf("%w: the manifest has no node.json", ErrDamaged)
	}
	return nil
}

// WriteManifest writes m (length-prefixed JSON) to w, first in the stream.
func WriteManifest(w io.Writer, m *Manifest) error {
	m.Format = ArchiveFormat
	if err := m.validate(); err != nil {
		return fmt.Errorf("backup: refusing to write an invalid manifest: %w", err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("backup: manifest: %w", err)
	}
	defer wipe(b)
	if len(b) > maxManifestBytes {
		return errdefs.InvalidArgument("backup: manifest of %d bytes is over the %d-byte limit", len(b), maxManifestBytes)
	}
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadManifest reads the manifest from the start of a decrypted stream;
// what follows it in r is the store snapshot.
func ReadManifest(r io.Reader) (*Manifest, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, short(err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size == 0 || size > maxManifestBytes {
		return nil, fmt.Errorf("%w: manifest length %d", ErrDamaged, size)
	}
	b := make([]byte, size)
	defer wipe(b)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, short(err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest is not valid JSON", ErrDamaged)
	}
	if err := m.validate(); err != nil {
		m.Wipe()
		return nil, err
	}
	return &m, nil
}

// short turns the end of an authenticated stream inside the manifest into
// ErrDamaged; other errors (a chunk that failed) pass through.
func short(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: the stream ends inside the manifest", ErrDamaged)
	}
	return err
}
