package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/hush-secrets/hush/internal/backup"
)

// The wire contract of POST /hush/v1/backup (internal/api/backup.go; a
// test keeps these equal).
const (
	backupPath    = "/hush/v1/backup"
	backupTrailer = "Hush-Backup-Error"
)

type backupRequest struct {
	Key []byte
}

func backupCommand() *command {
	return &command{
		name:    "backup",
		summary: "Take an encrypted, consistent backup of hushd",
		args:    "--key-file KEYFILE FILE",
		help: `
Take an online, consistent backup of hushd and write it, encrypted, to FILE.

The backup holds a snapshot of the whole store (secrets, configs, services,
networks, the cluster and its identity) and what is needed to open it: the
node's identity and its master key as it is kept on disk (under autolock,
the locked key file: a restored node comes back locked, and the unlock key
of the time of the backup opens it). It is encrypted and authenticated
under a key derived from the contents of KEYFILE with Argon2id (64 MiB), so
FILE alone reveals nothing; KEYFILE can be a passphrase file or random
bytes, and its exact bytes are the key (a trailing newline included).

hush sends KEYFILE's contents to hushd over its socket; hushd derives the
key and streams the encrypted backup back, so the plaintext never leaves
hushd. hush then checks that the whole backup opens with KEYFILE before it
renames it into place (mode 0600): FILE is either a complete, verified
backup or not written at all (an existing FILE is replaced only then).

Restore it offline with: hushd restore --data-dir DIR --key-file KEYFILE FILE
Keep KEYFILE apart from the backups: either alone opens nothing.`,
		setup: func(fs *flag.FlagSet) runFunc {
			keyFile := fs.String("key-file", "", "file whose contents the backup key is derived from (required)")
			return func(ctx context.Context, c *cli, args []string) error {
				switch {
				case len(args) != 1:
					return usagef("backup takes exactly one FILE, got %d arguments", len(args))
				case *keyFile == "":
					return usagef("--key-file is required")
				case args[0] == "-":
					return usagef("FILE must be a path: writing a backup to standard output is not supported")
				}
				return runBackup(ctx, c, *keyFile, args[0])
			}
		},
	}
}

func runBackup(ctx context.Context, c *cli, keyFile, path string) error {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("%s exists and is not a regular file", path)
	}
	key, err := backup.ReadKeyFile(keyFile)
	if err != nil {
		return err
	}
	defer clear(key)
	cl, err := c.client()
	if err != nil {
		return err
	}
	body, err := json.Marshal(backupRequest{Key: key})
	if err != nil {
		return err
	}
	resp, err := cl.do(ctx, http.MethodPost, backupPath, body)
	clear(body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	m, size, err := saveBackup(resp, path, key)
	if err != nil {
		return err
	}
	lock := "off"
	if m.Autolock {
		lock = "on (the restored node starts locked: keep the unlock key of today)"
	}
	fmt.Fprintf(c.env.stdout, "Backup of cluster %s (node %s) written to %s: %d bytes, verified; autolock %s.\n",
		m.ClusterID, m.NodeID, path, size, lock)
	return nil
}

// saveBackup streams the answer into a temp file next to path while
// checking it opens with key to its final chunk, then renames it into
// place. On any failure the temp file is removed and path is untouched.
func saveBackup(resp *http.Response, path string, key []byte) (*backup.Manifest, int64, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".hush-tmp-*")
	if err != nil {
		return nil, 0, fmt.Errorf("backup file: %w", err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	cw := &countWriter{w: tmp}
	tee := io.TeeReader(resp.Body, cw)
	m, verr := verify(tee, key)
	// Read to the end so the trailer (hushd's error, if it failed while
	// streaming) is there.
	_, derr := io.Copy(cw, resp.Body)
	if msg := resp.Trailer.Get(backupTrailer); msg != "" {
		return nil, 0, fmt.Errorf("hushd: the backup failed: %s; nothing was written", msg)
	}
	if derr != nil {
		return nil, 0, fmt.Errorf("the backup stream from hushd broke off: %v; nothing was written", derr)
	}
	if verr != nil {
		return nil, 0, fmt.Errorf("the backup hushd sent does not verify: %w; nothing was written", verr)
	}
	if err := tmp.Sync(); err != nil {
		return nil, 0, fmt.Errorf("backup file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, 0, fmt.Errorf("backup file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, 0, fmt.Errorf("backup file: %w", err)
	}
	done = true
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return m, cw.n, nil
}

// verify reads the whole stream as a restore would, keeping only the
// manifest's description (its files, key files among them, are wiped).
func verify(r io.Reader, key []byte) (*backup.Manifest, error) {
	rd, _, err := backup.Open(r, key, backup.DefaultLimits)
	if err != nil {
		return nil, err
	}
	defer rd.Wipe()
	m, err := backup.ReadManifest(rd)
	if err != nil {
		return nil, err
	}
	m.Wipe()
	m.Files = nil
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return nil, err
	}
	if m.ClusterID == "" {
		return nil, errors.New("the backup names no cluster")
	}
	return m, nil
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
