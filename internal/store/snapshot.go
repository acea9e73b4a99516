package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	etcdsnapshot "go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// embeddedPeerURL is the peer URL every embedded member advertises (it only
// seeds the member ID: the member listens on no socket).
const embeddedPeerURL = "http://127.0.0.1:2380"

// Snapshot returns a consistent copy of the whole store as of the call, in
// the form RestoreSnapshot takes (etcd's database snapshot followed by its
// SHA-256). The caller must read it to the end or close it; while it is
// open, the store keeps the pages it needs, so it should be read promptly.
//
// The copy is taken before Snapshot returns: writes that complete after the
// return are not in it, and writes that completed before it are. The
// reader checks the trailing hash itself and returns io.EOF only for a
// complete snapshot, so a stream that ends early is an error, never a
// shorter snapshot.
func (s *Store) Snapshot(ctx context.Context) (io.ReadCloser, error) {
	if s.external {
		return nil, errExternalSnapshot
	}
	rc, err := s.cli.Snapshot(ctx)
	if err != nil {
		return nil, wrapEtcd(err)
	}
	// The server opens its read transaction before it sends the first
	// bytes, so waiting for them pins the point in time.
	br := bufio.NewReaderSize(rc, 64<<10)
	if _, err := br.Peek(1); err != nil {
		rc.Close()
		return nil, fmt.Errorf("store: snapshot: %w", wrapEtcd(err))
	}
	return &snapshotReader{ctx: ctx, r: br, c: rc, h: sha256.New()}, nil
}

// snapshotReader passes the snapshot through while hashing all but its
// last sha256.Size bytes, which must be that hash.
type snapshotReader struct {
	ctx  context.Context
	r    io.Reader
	c    io.Closer
	h    hash.Hash
	tail []byte
	err  error
}

func (r *snapshotReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.r.Read(p)
	r.hold(p[:n])
	if err == nil {
		return n, nil
	}
	// The in-process client ends a finished stream with "canceled" rather
	// than EOF; the hash tells a finished stream from a cut one.
	if errors.Is(err, io.EOF) || (errors.Is(err, context.Canceled) && r.ctx.Err() == nil) {
		if len(r.tail) != sha256.Size || !bytes.Equal(r.h.Sum(nil), r.tail) {
			r.err = errors.New("store: snapshot stream ended early or its hash does not match")
		} else {
			r.err = io.EOF
		}
		return n, r.err
	}
	r.err = fmt.Errorf("store: snapshot: %w", wrapEtcd(err))
	return n, r.err
}

// hold hashes b except the last sha256.Size bytes seen so far, kept back
// in tail as the candidate hash.
func (r *snapshotReader) hold(b []byte) {
	if len(b) >= sha256.Size {
		r.h.Write(r.tail)
		r.h.Write(b[:len(b)-sha256.Size])
		r.tail = append(r.tail[:0], b[len(b)-sha256.Size:]...)
		return
	}
	r.tail = append(r.tail, b...)
	if extra := len(r.tail) - sha256.Size; extra > 0 {
		r.h.Write(r.tail[:extra])
		r.tail = append(r.tail[:0], r.tail[extra:]...)
	}
}

func (r *snapshotReader) Close() error { return r.c.Close() }

// RestoreConfig says where and as which member a snapshot is restored.
type RestoreConfig struct {
	// Snapshot is the path of a file holding what Snapshot returned.
	Snapshot string
	// Dir is the new member's directory (EmbeddedConfig.Dir); it must not
	// exist or be empty.
	Dir string
	// Name is the member name OpenEmbedded will be given (EmbeddedConfig.Name).
	Name string
	// EtcdLogLevel is etcd's zap level ("error" when empty).
	EtcdLogLevel string
}

// RestoreSnapshot writes a new member directory from a snapshot, as etcd's
// own restore does: the data is the snapshot's, the membership is new (a
// fresh cluster token gives a fresh cluster and member ID, so the restored
// member can never be taken for the one the snapshot came from), and
// OpenEmbedded then starts it like any existing member. The snapshot's
// integrity hash is checked; a damaged snapshot is refused.
func RestoreSnapshot(c RestoreConfig) error {
	if c.Snapshot == "" || c.Dir == "" || c.Name == "" {
		return errors.New("store: restore needs a snapshot, a directory and a name")
	}
	if _, err := os.Stat(c.Snapshot); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	var tok [8]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	lvl, err := zapcore.ParseLevel(orDefault(c.EtcdLogLevel, "error"))
	if err != nil {
		return fmt.Errorf("store: etcd log level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.OutputPaths = []string{"stderr"}
	zc.ErrorOutputPaths = []string{"stderr"}
	zl, err := zc.Build()
	if err != nil {
		return fmt.Errorf("store: etcd logger: %w", err)
	}
	err = etcdsnapshot.NewV3(zl).Restore(etcdsnapshot.RestoreConfig{
		SnapshotPath:        c.Snapshot,
		Name:                c.Name,
		OutputDataDir:       c.Dir,
		PeerURLs:            []string{embeddedPeerURL},
		InitialCluster:      c.Name + "=" + embeddedPeerURL,
		InitialClusterToken: "hush-" + c.Name + "-restored-" + hex.EncodeToString(tok[:]),
	})
	if err != nil {
		return fmt.Errorf("store: restore snapshot: %w", err)
	}
	return nil
}
