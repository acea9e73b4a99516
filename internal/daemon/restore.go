package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/hush-secrets/hush/internal/backup"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/store"
)

// RestoreConfig is what `hushd restore` is given.
type RestoreConfig struct {
	// DataDir is the data directory to create; it must be absent or empty.
	DataDir string
	// Backup is the path of the backup file.
	Backup string
	// Key is the contents of the key file the backup was taken with; the
	// caller wipes it.
	Key []byte
	// EtcdLogLevel is passed to etcd's restore ("error" when empty).
	EtcdLogLevel string
}

// RestoreResult describes what was restored.
type RestoreResult struct {
	NodeID, ClusterID string
	Autolock          bool
	Created           time.Time
	HushVersion       string
}

// Restore writes a new data directory from a backup, offline.
//
// Nothing is written into DataDir until the whole backup has
// authenticated: the backup is decrypted into a staging directory next to
// DataDir (in its parent, so the final step is a rename on one file
// system), the store is rebuilt there with a fresh etcd member identity,
// and only then is the staging directory renamed into place. A wrong key,
// a changed or truncated file, or a failure at any step removes the
// staging directory and leaves DataDir as it was.
func Restore(ctx context.Context, c RestoreConfig) (RestoreResult, error) {
	if c.DataDir == "" || c.Backup == "" {
		return RestoreResult{}, errors.New("restore: a data directory and a backup file are required")
	}
	dir, err := filepath.Abs(c.DataDir)
	if err != nil {
		return RestoreResult{}, fmt.Errorf("restore: %w", err)
	}
	if err := checkRestoreTarget(dir); err != nil {
		return RestoreResult{}, err
	}
	parent := filepath.Dir(dir)
	if fi, err := os.Stat(parent); err != nil || !fi.IsDir() {
		return RestoreResult{}, fmt.Errorf("restore: the parent directory %s of the data dir does not exist", parent)
	}
	f, err := os.Open(c.Backup)
	if err != nil {
		return RestoreResult{}, fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	rd, _, err := backup.Open(&ctxReader{ctx: ctx, r: f}, c.Key, backup.DefaultLimits)
	if err != nil {
		return RestoreResult{}, err
	}
	defer rd.Wipe()
	m, err := backup.ReadManifest(rd)
	if err != nil {
		return RestoreResult{}, err
	}
	defer m.Wipe()
	res := RestoreResult{NodeID: m.NodeID, ClusterID: m.ClusterID, Autolock: m.Autolock, Created: m.Created, HushVersion: m.HushVersion}
	if err := checkManifest(m); err != nil {
		return RestoreResult{}, err
	}

	// A data dir that is a mount point of its own (a volume, a partition)
	// cannot be renamed over: the staging directory then goes inside it,
	// and its entries are moved up at the end.
	mounted, err := isMountPoint(dir, parent)
	if err != nil {
		return RestoreResult{}, err
	}
	stageIn := parent
	if mounted {
		stageIn = dir
	}
	staging, err := os.MkdirTemp(stageIn, ".hush-restore-*")
	if err != nil {
		return RestoreResult{}, fmt.Errorf("restore: staging directory: %w", err)
	}
	done := false
	defer func() {
		if !done {
			_ = os.RemoveAll(staging)
		}
	}()
	snapPath := filepath.Join(staging, "snapshot.db")
	// The rest of the stream is the snapshot; the reader returns io.EOF
	// only after the final chunk authenticated, so once this copy
	// succeeds, every byte of the file has.
	if err := writeFileFrom(snapPath, rd); err != nil {
		return RestoreResult{}, err
	}
	if err := os.Mkdir(filepath.Join(staging, "keys"), 0o700); err != nil {
		return RestoreResult{}, fmt.Errorf("restore: %w", err)
	}
	for _, file := range m.Files {
		if err := writeFileSync(filepath.Join(staging, filepath.FromSlash(file.Path)), file.Data, 0o600); err != nil {
			return RestoreResult{}, fmt.Errorf("restore: %s: %w", file.Path, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return RestoreResult{}, err
	}
	if err := store.RestoreSnapshot(store.RestoreConfig{
		Snapshot: snapPath, Dir: filepath.Join(staging, "etcd"), Name: m.NodeID, EtcdLogLevel: c.EtcdLogLevel,
	}); err != nil {
		return RestoreResult{}, fmt.Errorf("restore: %w", err)
	}
	if err := os.Remove(snapPath); err != nil {
		return RestoreResult{}, fmt.Errorf("restore: %w", err)
	}
	for _, d := range []string{filepath.Join(staging, "keys"), staging} {
		if err := syncDir(d); err != nil {
			return RestoreResult{}, err
		}
	}
	if err := ctx.Err(); err != nil {
		return RestoreResult{}, err
	}
	// Checked again: a hushd may have started on the directory meanwhile.
	// The rename itself also fails on a directory that is not empty.
	if err := checkRestoreTargetBut(dir, filepath.Base(staging)); err != nil {
		return RestoreResult{}, err
	}
	if mounted {
		if err := moveUp(staging, dir); err != nil {
			return RestoreResult{}, err
		}
		done = true
		return res, nil
	}
	// rename(2) replaces an empty directory; os.Rename refuses to.
	if err := syscall.Rename(staging, dir); err != nil {
		return RestoreResult{}, fmt.Errorf("restore: moving the restored data into %s: %w", dir, err)
	}
	done = true
	if err := syncDir(parent); err != nil {
		return res, err
	}
	return res, nil
}

// checkManifest checks that the backup can bring a node up: a node
// identity that matches the manifest, and a master key file (plain or
// locked).
func checkManifest(m *backup.Manifest) error {
	var ns nodeState
	var haveKey bool
	for _, f := range m.Files {
		switch f.Path {
		case "node.json":
			if err := json.Unmarshal(f.Data, &ns); err != nil {
				return fmt.Errorf("%w: its node.json is not valid", backup.ErrDamaged)
			}
		case "keys/master.key", "keys/master.key.locked", "keys/master.key.locked.next":
			haveKey = true
		}
	}
	if !identity.Valid(ns.NodeID) || ns.NodeID != m.NodeID {
		return fmt.Errorf("%w: its node identity does not match its manifest", backup.ErrDamaged)
	}
	if !haveKey {
		return fmt.Errorf("%w: it holds no master key file", backup.ErrDamaged)
	}
	return nil
}

// checkRestoreTarget refuses a data dir that a hushd holds or that has
// anything in it. Only reads: the directory is not changed.
func checkRestoreTarget(dir string) error { return checkRestoreTargetBut(dir, "") }

// isMountPoint reports whether dir exists and is on another file system
// than its parent (rename(2) cannot replace it).
func isMountPoint(dir, parent string) (bool, error) {
	var ds, ps syscall.Stat_t
	if err := syscall.Lstat(dir, &ds); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("restore: data dir: %w", err)
	}
	if err := syscall.Stat(parent, &ps); err != nil {
		return false, fmt.Errorf("restore: %w", err)
	}
	return ds.Dev != ps.Dev, nil
}

// moveUp moves the entries of staging (inside dir) into dir, the store
// first and the node identity last, then removes staging. Each move is a
// rename on one file system; a crash among them leaves a partial data dir,
// which hushd must not be started on: empty it and restore again.
func moveUp(staging, dir string) error {
	for _, name := range []string{"etcd", "keys", "node.json"} {
		if err := os.Rename(filepath.Join(staging, name), filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("restore: moving the restored data into %s: %w", dir, err)
		}
	}
	if err := os.Remove(staging); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return syncDir(dir)
}

func checkRestoreTargetBut(dir, ignore string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore: data dir: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return conflict("data dir %s is a symbolic link: give the directory it points to", dir)
	}
	if !fi.IsDir() {
		return conflict("data dir %s exists and is not a directory", dir)
	}
	if lf, err := os.OpenFile(filepath.Join(dir, "hushd.lock"), os.O_RDWR, 0); err == nil {
		err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		lf.Close()
		if err != nil {
			return conflict("data dir %s is in use by a running hushd: stop it first", dir)
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("restore: data dir: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(2)
	names = slices.DeleteFunc(names, func(n string) bool { return ignore != "" && n == ignore })
	if len(names) > 0 {
		return conflict("data dir %s is not empty: restore writes only into an empty or absent directory", dir)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("restore: data dir: %w", err)
	}
	return nil
}

func conflict(format string, args ...any) error {
	return &errdefs.Error{Category: errdefs.ErrConflict, Msg: fmt.Sprintf(format, args...)}
}

// writeFileFrom copies r into a new file at path (0600) and syncs it.
func writeFileFrom(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("restore: sync %s: %w", dir, err)
	}
	return nil
}

// ctxReader stops a long copy when the context ends (an interrupted
// restore then cleans up instead of finishing).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
