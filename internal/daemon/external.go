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
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// A hushd started with --external-etcd keeps its store in an etcd cluster
// the user runs (see docs/DESIGN.md "External etcd"). Several managers
// share it (same endpoints, same prefix): they join with the usual join
// protocol, which then skips etcd membership (store.Members keeps hush's
// manager registry instead), and Leader is the orchestrator election's.

// Refusals a user may meet; the flag names are hushd's.
const (
	msgExternalInit = "the external etcd already holds a hush cluster under this prefix, and this node has no master key for it (another hushd's, or one whose data dir was lost): give this hushd its own --external-etcd-prefix, join that cluster (hushd --no-init, then docker swarm join), or erase that cluster's keys if it is abandoned"
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
		if member && d.member.External != nil {
			return fmt.Errorf("the data dir %s holds a manager of a cluster kept in an external etcd (prefix %q): start hushd with --external-etcd (and its TLS files)", d.cfg.DataDir, d.member.External.Prefix)
		}
		if marked {
			return fmt.Errorf("the data dir %s holds a cluster kept in an external etcd: start hushd with --external-etcd (and its TLS files)", d.cfg.DataDir)
		}
		return nil
	}
	switch {
	case member && d.member.External == nil:
		return fmt.Errorf("--external-etcd: the data dir %s holds a manager's membership of an embedded etcd cluster (member.json); use a new data dir", d.cfg.DataDir)
	case member && d.member.External.Prefix != ext.Prefix:
		return fmt.Errorf("--external-etcd-prefix %q: this manager's cluster is under prefix %q (member.json)", ext.Prefix, d.member.External.Prefix)
	case d.worker != nil && !marked:
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
	st, err := store.OpenExternal(ctx, c)
	if err != nil {
		return nil, err
	}
	if d.member != nil {
		// A manager of the cluster: Members keeps hush's registry of
		// managers in that etcd (no etcd membership change).
		if err := st.EnableManagers(d.nodeID); err != nil {
			_ = st.Close()
			return nil, err
		}
	}
	return st, nil
}

// externalRef is where a cluster over an external etcd keeps its store:
// what a join, a promotion and member.json say instead of etcd peers.
// The endpoints are compared as a set; TLS files are each node's own.
type externalRef struct {
	Endpoints []string `json:"endpoints"`
	Prefix    string   `json:"prefix"`
}

// externalRef is this node's external etcd (nil on an embedded store).
func (d *Daemon) externalRef() *externalRef {
	if d.cfg.External == nil {
		return nil
	}
	eps := slices.Clone(d.cfg.External.Endpoints)
	slices.Sort(eps)
	return &externalRef{Endpoints: slices.Compact(eps), Prefix: d.cfg.External.Prefix}
}

// checkJoinerStore refuses a join or promotion between nodes whose stores
// differ: an embedded one and an external one, or two external ones with
// different endpoint sets or prefixes (the joiner would open a store that
// does not hold the cluster, or another cluster's). other is the peer's
// (the joiner's request on a manager, the manager's answer on a joiner).
func (d *Daemon) checkJoinerStore(other *externalRef) error {
	own := d.externalRef()
	switch {
	case own == nil && other == nil:
		return nil
	case own == nil:
		return errdefs.BadRequest("the joining node keeps its store in an external etcd (--external-etcd %s), but this swarm's managers are members of their own etcd cluster: start it without --external-etcd",
			strings.Join(other.Endpoints, ","))
	case other == nil:
		return errdefs.BadRequest("this swarm keeps its store in an external etcd (%s, prefix %q): start the joining node with --external-etcd %s --external-etcd-prefix %q and its TLS files for that etcd",
			strings.Join(own.Endpoints, ","), own.Prefix, strings.Join(own.Endpoints, ","), own.Prefix)
	}
	eps := slices.Clone(other.Endpoints)
	slices.Sort(eps)
	if !slices.Equal(slices.Compact(eps), own.Endpoints) {
		return errdefs.BadRequest("--external-etcd %s differs from this swarm's external etcd endpoints %s: every manager must name the same endpoints",
			strings.Join(other.Endpoints, ","), strings.Join(own.Endpoints, ","))
	}
	if other.Prefix != own.Prefix {
		return errdefs.BadRequest("--external-etcd-prefix %q differs from this swarm's prefix %q in the external etcd: every manager must use the same prefix", other.Prefix, own.Prefix)
	}
	return nil
}

// checkSwarmStore is checkJoinerStore on the joining (or promoted) node,
// with the managers' answer: the same refusals, worded for this node. The
// managers refuse first (admit, promoteNode); this catches a manager that
// did not.
func (d *Daemon) checkSwarmStore(swarmRef *externalRef) error {
	own := d.externalRef()
	switch {
	case own == nil && swarmRef == nil:
		return nil
	case own == nil:
		return errdefs.BadRequest("this swarm keeps its store in an external etcd (%s, prefix %q): start this node with --external-etcd %s --external-etcd-prefix %q and its TLS files for that etcd",
			strings.Join(swarmRef.Endpoints, ","), swarmRef.Prefix, strings.Join(swarmRef.Endpoints, ","), swarmRef.Prefix)
	case swarmRef == nil:
		return errdefs.BadRequest("this node keeps its store in an external etcd (--external-etcd %s), but this swarm's managers are members of their own etcd cluster: start it without --external-etcd",
			strings.Join(own.Endpoints, ","))
	}
	eps := slices.Clone(swarmRef.Endpoints)
	slices.Sort(eps)
	if !slices.Equal(slices.Compact(eps), own.Endpoints) {
		return errdefs.BadRequest("--external-etcd %s differs from this swarm's external etcd endpoints %s: every manager must name the same endpoints",
			strings.Join(own.Endpoints, ","), strings.Join(swarmRef.Endpoints, ","))
	}
	if swarmRef.Prefix != own.Prefix {
		return errdefs.BadRequest("--external-etcd-prefix %q differs from this swarm's prefix %q in the external etcd: every manager must use the same prefix", own.Prefix, swarmRef.Prefix)
	}
	return nil
}

// foreignCluster reports whether the external etcd holds a hush cluster
// (under this node's prefix) for which this node has no key file: another
// hushd's, which this one must neither join by accident nor overwrite.
func (d *Daemon) foreignCluster(ctx context.Context) (bool, error) {
	if d.cfg.External == nil {
		return false, nil
	}
	exists, err := cluster.Exists(ctx, d.curStore())
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

// awaitsExternalJoin reports (and logs) that this node, started with
// --no-init and holding no key, found a cluster in its external etcd: it
// stays inactive until it joins that cluster.
func (d *Daemon) awaitsExternalJoin() bool {
	if d.cfg.External == nil || !d.cfg.NoInit || d.hasKeyFiles() {
		return false
	}
	d.log.Info("the external etcd holds a hush cluster under this prefix: waiting for docker swarm join", "prefix", d.cfg.External.Prefix)
	return true
}

// checkForeignCluster refuses to start on another hushd's cluster, unless
// this hushd was started with --no-init: it then stays inactive, and may
// join that cluster (init is refused: externalSwarm).
func (d *Daemon) checkForeignCluster(ctx context.Context) error {
	if d.cfg.NoInit && !d.hasKeyFiles() {
		return nil
	}
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

func (e externalSwarm) InitWithKey(ctx context.Context, req swarm.InitRequest, caKey []byte) (string, error) {
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

// leaveExternalManagerLocked is `swarm leave --force` on a manager of a
// cluster over an external etcd (handled false otherwise). There is no
// etcd membership to leave: the manager stops its runtime, join/CA
// service and campaign, wipes its master key and membership, and reopens
// its store client as an inactive node's. Other managers keep the cluster
// (its record stays a manager's, shown Unreachable, as Swarm shows a
// manager that left: demote it, then node rm). As the last manager (no
// other manager recorded) it then erases the cluster, as a lone node's
// leave does (handled false: Leave goes on with a lone node's steps).
func (d *Daemon) leaveExternalManagerLocked(ctx context.Context, force bool) (handled bool, err error) {
	if !force || d.member == nil || d.member.External == nil {
		return false, nil
	}
	all, err := nodes.List(ctx, d.store)
	if err != nil {
		return true, err
	}
	last := !slices.ContainsFunc(all, func(n nodes.Node) bool {
		return n.ID != d.nodeID && n.Spec.Role == swarm.NodeRoleManager
	})
	d.stopRuntime()
	// A no-op after Leave's stop; a wait with d.mu released otherwise.
	d.stopJoinServiceLocked()
	if d.engine != nil && !last {
		d.removeTaskContainers(ctx)
	}
	d.closeStoreLocked()
	if !last {
		// The last one's leave goes on with a lone node's, which prunes.
		d.pruneOwnBridges(ctx)
	}
	if err := os.Remove(d.memberPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return true, fmt.Errorf("member state: %w", err)
	}
	d.member, d.nodeKey = nil, nil
	d.cert.Store(nil)
	if err := d.openStoreLocked(ctx, nil); err != nil {
		return true, err
	}
	if last {
		d.log.Info("the last manager of the cluster in the external etcd leaves: erasing the cluster")
		return false, nil
	}
	if kr := d.keys.Swap(nil); kr != nil {
		kr.Destroy()
	}
	d.mk.Destroy()
	d.mk = keyring.MasterKey{}
	d.pendingKey.Store(pendingNone)
	_ = d.plainKey.Remove()
	_ = d.lockedKey.Remove()
	_ = d.nextKey().Remove()
	d.removeRotationFiles()
	d.state = swarm.LocalNodeStateInactive
	d.log.Info("left the swarm; the other managers keep the cluster in the external etcd")
	return true, nil
}

// leaveLockedExternalLocked is `swarm leave --force` on a locked manager
// of a cluster over an external etcd: as leaveExternalManagerLocked, but
// what a locked node can read decides whether it is the last manager (the
// registry's keys; node records are sealed): then it erases the cluster
// under the prefix as the last manager's leave does, else leaves the
// cluster to the others. Its key files and membership are wiped.
func (d *Daemon) leaveLockedExternalLocked(ctx context.Context) error {
	ids, err := d.store.RegisteredManagers(ctx)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(ids, func(id string) bool { return id != d.nodeID }) {
		d.log.Info("the last manager of the cluster in the external etcd leaves, locked: erasing the cluster")
		if err := d.store.EraseAll(ctx); err != nil {
			return fmt.Errorf("erase cluster state: %w", err)
		}
	}
	d.lockedMember = nil
	if err := os.RemoveAll(d.scratchStoreDir()); err != nil {
		d.log.Warn("removing the locked manager's scratch store", "err", err)
	}
	return d.finishLeaveLocked(ctx)
}

// errExternalDemoted refuses the start of a manager of a cluster over an
// external etcd whose node record says it is no longer one: demoted or
// removed while it was down, with no other manager answering its role
// question (demotedWhileDown, leftWhileDown). Unlike an embedded member,
// it still reaches the store, so without this it would register, campaign
// and serve as a manager again. Its files are kept: a start while another
// manager answers carries out the demotion (a worker needs a certificate
// from a manager).
var errExternalDemoted = errors.New("external etcd")

// checkExternalSelf reads, before this manager of a cluster over an
// external etcd registers, campaigns or serves, its own node record: the
// store is the truth, and this node reads it itself. A record that says
// worker, or a node removed (node rm), refuses the start (see
// errExternalDemoted). rev is the record's revision, for registerSelf's
// guard (0: no record yet, as at a join's first activation).
func (d *Daemon) checkExternalSelf(ctx context.Context) (rev int64, err error) {
	st := d.curStore()
	if d.member == nil || d.member.External == nil {
		return 0, nil
	}
	n, err := nodes.Get(ctx, st, d.nodeID)
	if errors.Is(err, store.ErrNotFound) {
		removed, rerr := nodes.Removed(ctx, st)
		if rerr != nil {
			return 0, rerr
		}
		if _, ok := removed[d.nodeID]; ok {
			return 0, fmt.Errorf("%w: this node was removed from the swarm (docker node rm) while it was down: run docker swarm leave --force, then join again", errExternalDemoted)
		}
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading this node's record: %w", err)
	}
	if n.Spec.Role != swarm.NodeRoleManager {
		return 0, fmt.Errorf("%w: this manager was demoted while it was down and no other manager answered to issue its worker certificate: start hushd again when another manager is reachable", errExternalDemoted)
	}
	return int64(n.Version), nil
}

// registerExternalSelf records this manager in the external store's
// registry at start, only while its node record still says manager (one
// transaction on the record's revision): a demotion committed after
// checkExternalSelf read it deletes the entry, which a blind write would
// re-create.
func (d *Daemon) registerExternalSelf(ctx context.Context) error {
	st := d.curStore()
	rev, err := d.checkExternalSelf(ctx)
	if err != nil {
		return err
	}
	key := st.Table("nodes").Key(d.nodeID)
	guard := store.AtRevision(key, rev)
	ok, err := st.Members().RegisterIf(ctx, guard)
	if err != nil {
		return fmt.Errorf("recording this manager in the registry: %w", err)
	}
	if !ok {
		// The record changed since it was read: read it again.
		if _, err := d.checkExternalSelf(ctx); err != nil {
			return err
		}
		return fmt.Errorf("recording this manager in the registry: its node record changed meanwhile: %w", errdefs.ErrUnavailable)
	}
	return nil
}
