package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/backup"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/moby/moby/api/types/swarm"
)

// Backups takes encrypted backups for the API (POST /hush/v1/backup).
//
// The key is derived here, in hushd, from the contents of the client's key
// file, and the backup leaves hushd only encrypted: the snapshot's
// plaintext never crosses the socket. (The socket already grants manager
// access, so the key file's contents crossing it in the other direction
// gives a client nothing it could not otherwise reach; deriving here also
// keeps the KDF parameters hushd's choice, not each client's.)
//
// One backup runs at a time: each derivation holds 64 MiB, and a client
// controls how many requests it sends.
type Backups struct {
	d    *Daemon
	busy chan struct{}
}

func newBackups(d *Daemon) *Backups { return &Backups{d: d, busy: make(chan struct{}, 1)} }

// Backup derives a key from secret and writes an encrypted backup of this
// node to w: a manifest with the node identity and the key files as they
// are on disk (so a restored node opens exactly as this one does, locked
// under autolock), then a snapshot of the store. The caller wipes secret.
//
// Nothing is written to w until the snapshot has been taken, so an error
// before that leaves w untouched.
func (b *Backups) Backup(ctx context.Context, secret []byte, w io.Writer) error {
	select {
	case b.busy <- struct{}{}:
	default:
		return errdefs.Unavailable("another backup is running: try again when it has finished")
	}
	defer func() { <-b.busy }()
	start := time.Now()
	sealer, err := backup.NewSealer(secret, backup.Config{})
	if err != nil {
		return err
	}
	m, snap, err := b.d.backupPoint(ctx)
	if err != nil {
		return err
	}
	defer snap.Close()
	defer m.Wipe()
	cw := &countWriter{w: w}
	bw := sealer.NewWriter(cw)
	if err := backup.WriteManifest(bw, m); err != nil {
		return err
	}
	if _, err := io.Copy(bw, snap); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := bw.Close(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	b.d.log.Info("backup taken", "cluster", m.ClusterID, "autolock", m.Autolock, "bytes", cw.n, "dur", time.Since(start).Round(time.Millisecond))
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// backupPoint reads the key files and takes the store snapshot under the
// lifecycle lock, which every change of the key files holds: the pair is
// what a crash at that instant would leave, and each key change is
// ordered so that such a state opens (see setAutolockLocked). A restore
// therefore comes back exactly as this node would after a crash now.
func (d *Daemon) backupPoint(ctx context.Context) (*backup.Manifest, io.ReadCloser, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != swarm.LocalNodeStateActive {
		return nil, nil, d.CheckServingLocked()
	}
	c, err := cluster.Get(ctx, d.store)
	if err != nil {
		return nil, nil, err
	}
	m := &backup.Manifest{
		Created: time.Now().UTC(), HushVersion: Version, NodeID: d.nodeID,
		ClusterID: c.ID, Autolock: c.Spec.EncryptionConfig.AutoLockManagers,
	}
	ok := false
	defer func() {
		if !ok {
			m.Wipe()
		}
	}()
	node, err := readSmallFile(filepath.Join(d.cfg.DataDir, "node.json"))
	if err != nil {
		return nil, nil, err
	}
	m.Files = append(m.Files, backup.File{Path: "node.json", Data: node})
	keysDir := filepath.Join(d.cfg.DataDir, "keys")
	entries, err := os.ReadDir(keysDir)
	if err != nil {
		return nil, nil, fmt.Errorf("backup: key files: %w", err)
	}
	for _, e := range entries {
		// Temporary files of an interrupted key write start with a dot;
		// they are never what opens the store.
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := "keys/" + e.Name()
		if !e.Type().IsRegular() || !backup.ValidPath(p) {
			return nil, nil, fmt.Errorf("backup: unexpected entry %s in the key directory", p)
		}
		if len(m.Files) == backup.MaxFiles {
			return nil, nil, fmt.Errorf("backup: more than %d files in the key directory", backup.MaxFiles-1)
		}
		data, err := readSmallFile(filepath.Join(keysDir, e.Name()))
		if err != nil {
			return nil, nil, err
		}
		m.Files = append(m.Files, backup.File{Path: p, Data: data})
	}
	snap, err := d.store.Snapshot(ctx)
	if err != nil {
		return nil, nil, err
	}
	ok = true
	return m, snap, nil
}

func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, backup.MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("backup: %s: %w", filepath.Base(path), err)
	}
	if len(b) > backup.MaxFileBytes {
		clear(b)
		return nil, errors.New("backup: " + filepath.Base(path) + " is larger than a key file can be")
	}
	return b, nil
}
