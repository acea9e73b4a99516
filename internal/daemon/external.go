package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// A hushd started with --external-etcd keeps its store in an etcd cluster
// the user runs (see docs/DESIGN.md "External etcd"). It is that hush
// cluster's only manager: the combinations that need more are refused by
// name until the join protocol can skip etcd membership.

// Refusals a user may meet; the flag names are hushd's.
const (
	msgExternalListen = "--listen-addr is not supported with --external-etcd yet: several managers over one external etcd need a join that skips etcd membership (docs/DESIGN.md, \"External etcd\")"
	msgExternalJoin   = "joining a swarm is not supported by a hushd started with --external-etcd: it is the only manager of the hush cluster in that etcd (docs/DESIGN.md, \"External etcd\")"
	msgExternalInit   = "the external etcd already holds a hush cluster under this prefix, and this node has no master key for it (another hushd's, or one whose data dir was lost): give this hushd its own --external-etcd-prefix, or erase that cluster's keys if it is abandoned"
)

// externalMarker records, in the data dir, that its cluster lives in an
// external etcd and under which prefix: the keys beside it are that
// cluster's, and a start without --external-etcd would otherwise make a
// new, empty embedded store and a second cluster under the same keys.
type externalMarker struct {
	Prefix string `json:"prefix"`
	// Cluster says that the etcd has held this data dir's cluster: with
	// a plain key and no cluster there, the etcd is another one (or lost
	// its data), not an init that failed before writing.
	Cluster bool `json:"cluster,omitempty"`
}

// readExternalMarker returns the marker (ok false without one).
func (d *Daemon) readExternalMarker() (m externalMarker, ok bool, err error) {
	b, err := os.ReadFile(d.externalMarkerPath())
	if errors.Is(err, os.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return m, false, fmt.Errorf("external etcd marker: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, false, fmt.Errorf("external etcd marker %s is corrupt", d.externalMarkerPath())
	}
	return m, true, nil
}

// noteExternalCluster records in the marker that the etcd holds this data
// dir's cluster (after an init, and at each start that finds it).
func (d *Daemon) noteExternalCluster() error {
	if d.cfg.External == nil {
		return nil
	}
	m, ok, err := d.readExternalMarker()
	if err != nil || (ok && m.Cluster) {
		return err
	}
	b, _ := json.Marshal(externalMarker{Prefix: d.cfg.External.Prefix, Cluster: true})
	if err := writeFileSync(d.externalMarkerPath(), b, 0o600); err != nil {
		return fmt.Errorf("external etcd marker: %w", err)
	}
	return nil
}

func (d *Daemon) externalMarkerPath() string {
	return filepath.Join(d.cfg.DataDir, "external-etcd.json")
}

// checkStoreKind refuses a data dir used with the other kind of store, and
// the options an external store does not support yet. member says whether
// the data dir holds a manager's membership (member.json).
func (d *Daemon) checkStoreKind(member bool) error {
	b, err := os.ReadFile(d.externalMarkerPath())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("external etcd marker: %w", err)
	}
	marked := err == nil
	var m externalMarker
	if marked {
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("external etcd marker %s is corrupt", d.externalMarkerPath())
		}
	}
	if marked && !d.hasKeyFiles() {
		// A start refused before this data dir made its cluster (another
		// hushd's prefix, an etcd that never answered) binds nothing: the
		// retry its refusal advises must not be refused for the marker.
		if err := os.Remove(d.externalMarkerPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("external etcd marker: %w", err)
		}
		marked = false
	}
	ext := d.cfg.External
	if ext == nil {
		if marked {
			return fmt.Errorf("the data dir %s holds a cluster kept in an external etcd: start hushd with --external-etcd (and its TLS files)", d.cfg.DataDir)
		}
		return nil
	}
	switch {
	case d.cfg.ListenAddr != "":
		return errors.New(msgExternalListen)
	case member:
		return fmt.Errorf("--external-etcd: the data dir %s holds a manager's membership of an embedded etcd cluster (member.json); use a new data dir", d.cfg.DataDir)
	case d.worker != nil:
		return fmt.Errorf("--external-etcd: the data dir %s is a worker's; use a new data dir", d.cfg.DataDir)
	case marked && m.Prefix != ext.Prefix:
		return fmt.Errorf("--external-etcd-prefix %q: the data dir %s was used with prefix %q, where its cluster is", ext.Prefix, d.cfg.DataDir, m.Prefix)
	}
	if !marked {
		entries, err := os.ReadDir(filepath.Join(d.cfg.DataDir, "etcd"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if len(entries) > 0 {
			return fmt.Errorf("--external-etcd: the data dir %s holds an embedded store (%s), which would be left unused; start without --external-etcd, or use a new data dir", d.cfg.DataDir, filepath.Join(d.cfg.DataDir, "etcd"))
		}
		b, _ := json.Marshal(externalMarker{Prefix: ext.Prefix})
		if err := writeFileSync(d.externalMarkerPath(), b, 0o600); err != nil {
			return fmt.Errorf("external etcd marker: %w", err)
		}
	}
	return nil
}

// openExternal opens the external store; the daemon then waits for it as
// for a member's quorum.
func (d *Daemon) openExternal(ctx context.Context) (*store.Store, error) {
	c := *d.cfg.External
	c.Endpoints = slices.Clone(c.Endpoints)
	c.Keys, c.Logger = &d.keys, d.log
	return store.OpenExternal(ctx, c)
}

// foreignCluster reports whether the external etcd holds a hush cluster
// (under this node's prefix) for which this node has no key file: another
// hushd's, which this one must neither join by accident nor overwrite.
func (d *Daemon) foreignCluster(ctx context.Context) (bool, error) {
	if d.cfg.External == nil {
		return false, nil
	}
	exists, err := cluster.Exists(ctx, d.store)
	if err != nil || !exists {
		return false, err
	}
	return !d.hasKeyFiles(), nil
}

// hasKeyFiles reports whether the data dir holds a cluster's master key.
func (d *Daemon) hasKeyFiles() bool {
	return d.plainKey.Exists() || d.lockedKey.Exists() || d.nextKey().Exists()
}

// checkExternalClusterGone refuses a start on an external etcd that does
// not hold the cluster, when the data dir's key files show that there was
// one (an autolocked key, or a key change under way): a changed
// --external-etcd, or an etcd that lost its data. Going on would remove
// those files, the only copy of that cluster's master key, and make a new
// cluster in that etcd. A plain key alone is that too once the marker
// says the etcd held the cluster; before, it is left to resume: an init
// that failed before its cluster was written leaves one too, reused.
func (d *Daemon) checkExternalClusterGone() error {
	if d.cfg.External == nil {
		return nil
	}
	m, _, err := d.readExternalMarker()
	if err != nil {
		return err
	}
	paths := []string{d.lockedKey.Path, d.nextKey().Path, d.rotatingKey().Path, d.oldPlainKey().Path}
	if m.Cluster {
		paths = append(paths, d.plainKey.Path)
	}
	for _, path := range paths {
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("the external etcd does not hold this data dir's cluster under prefix %q, and %s holds that cluster's master key: check --external-etcd and --external-etcd-prefix (nothing was changed); if that cluster is gone for good, remove %s and start again",
				d.cfg.External.Prefix, filepath.Dir(d.plainKey.Path), filepath.Dir(d.plainKey.Path))
		}
	}
	return nil
}

// checkForeignCluster refuses to start on another hushd's cluster.
func (d *Daemon) checkForeignCluster(ctx context.Context) error {
	foreign, err := d.foreignCluster(ctx)
	if err != nil {
		return err
	}
	if foreign {
		return errors.New(msgExternalInit)
	}
	return nil
}

// swarmController is what the API's swarm routes call: the daemon, with
// the refusals of an external store in front of it.
func (d *Daemon) swarmController() api.SwarmController {
	if d.cfg.External == nil {
		return d
	}
	return externalSwarm{d}
}

type externalSwarm struct{ *Daemon }

func (e externalSwarm) Join(context.Context, swarm.JoinRequest) error {
	return errdefs.BadRequest("%s", msgExternalJoin)
}

func (e externalSwarm) InitWithKey(ctx context.Context, req swarm.InitRequest, caKey []byte) (string, error) {
	if l := strings.TrimPrefix(req.ListenAddr, "tcp://"); l != "" && l != cliDefaultListen {
		return "", errdefs.BadRequest("%s", strings.Replace(msgExternalListen, "--listen-addr", "docker swarm init --listen-addr", 1))
	}
	if e.State() == swarm.LocalNodeStateInactive {
		// Another hushd may have made its cluster since this one started.
		foreign, err := e.foreignCluster(ctx)
		if err != nil {
			return "", err
		}
		if foreign {
			return "", errdefs.BadRequest("%s", msgExternalInit)
		}
	}
	return e.Daemon.InitWithKey(ctx, req, caKey)
}

// externalBackups refuses backups before deriving a key: etcd's snapshot
// is of the whole external cluster (see store.Snapshot).
type externalBackups struct{}

func (externalBackups) Backup(context.Context, []byte, io.Writer) error {
	return errdefs.BadRequest("hush backup is not supported with --external-etcd: etcd's snapshot would copy every key of that cluster, not only hush's; back the cluster up with its own tools (etcdctl snapshot save) and keep hush's data dir (its key files)")
}
