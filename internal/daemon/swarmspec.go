package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/manager/orchestrator"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// The cluster settings of `docker swarm init/update` that act outside the
// cluster record: the orchestrator's (history retention, the default log
// driver), the networks' (address pools) and the store's (raft tuning,
// which etcd reads at start only and so is kept in a file beside it).

// specState is what the daemon keeps of the cluster settings between
// writes of the cluster record.
type specState struct {
	// orch is the orchestrator's view of the spec.
	orch atomic.Pointer[orchestrator.Settings]
	// running is the raft tuning etcd was started with.
	running store.Tuning
	// keep is the cluster's default retention of versions (0: hush's).
	keep atomic.Int64
	// heartbeat is the cluster's Dispatcher.HeartbeatPeriod (ns).
	heartbeat atomic.Int64
}

// tuningPath is where the raft tuning for the next start is kept.
func (d *Daemon) tuningPath() string { return filepath.Join(d.cfg.DataDir, "raft-tuning.json") }

// loadTuning reads the raft tuning to start etcd with; a missing or
// unreadable file leaves etcd's defaults (and says so when unreadable).
func (d *Daemon) loadTuning() store.Tuning {
	var t store.Tuning
	b, err := os.ReadFile(d.tuningPath())
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("raft settings unreadable: etcd starts with its defaults", "err", err)
		}
		return t
	}
	if err := json.Unmarshal(b, &t); err != nil {
		d.log.Warn("raft settings file is corrupt: etcd starts with its defaults", "path", d.tuningPath())
		return store.Tuning{}
	}
	return t
}

// startWithSpecTuning makes raft's tuning (nil: the default spec's) the
// one etcd starts with from now on, and keeps it for the next start, as
// settle would once the node serves: a crash before then changes nothing.
func (d *Daemon) startWithSpecTuning(raft *swarm.RaftConfig) {
	if raft == nil {
		def := cluster.DefaultSpec()
		raft = &def.Raft
	}
	t, err := cluster.EtcdTuningFor(*raft)
	if err != nil {
		// As in settle: only a record older than these checks holds such
		// values, and etcd keeps its defaults rather than fail to start.
		d.log.Warn("raft settings of the cluster cannot be applied to etcd; it keeps its defaults", "err", err)
		t = store.Tuning{}
	}
	d.spec.running = t
	b, _ := json.Marshal(t)
	if err := writeFileSync(d.tuningPath(), b, 0o600); err != nil {
		d.log.Warn("saving raft settings for the next start", "err", err)
	}
}

// orchestratorSettings is what the orchestrator reads at each use.
func (d *Daemon) orchestratorSettings() orchestrator.Settings {
	if s := d.spec.orch.Load(); s != nil {
		return *s
	}
	return orchestrator.Settings{HistoryLimit: 5}
}

// addrPools gives the networks manager the cluster's default address
// pools, for networks created without subnets.
func (d *Daemon) addrPools(ctx context.Context) ([]netip.Prefix, int, error) {
	c, err := cluster.Get(ctx, d.curStore())
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	return c.Network.DefaultAddrPool, int(c.Network.SubnetSize), nil
}

// settle brings the settings that live outside the cluster record in line
// with c: the orchestrator's view, and the raft tuning for etcd's next
// start.
func (d *Daemon) settle(c *cluster.Cluster) {
	s := orchestrator.Settings{HistoryLimit: 5, LogDriver: c.Spec.TaskDefaults.LogDriver}
	if l := c.Spec.Orchestration.TaskHistoryRetentionLimit; l != nil {
		s.HistoryLimit = *l
	}
	d.spec.orch.Store(&s)
	keep, _ := cluster.VersionsKeep(&c.Spec)
	d.spec.keep.Store(int64(keep))
	d.spec.heartbeat.Store(int64(c.Spec.Dispatcher.HeartbeatPeriod))
	want, err := cluster.EtcdTuningFor(c.Spec.Raft)
	if err != nil {
		// Only a record written before these checks existed can hold such
		// values: etcd keeps its defaults rather than fail to start.
		d.log.Warn("raft settings of the cluster cannot be applied to etcd; it keeps its defaults", "err", err)
		want = store.Tuning{}
	}
	if d.loadTuning() == want {
		return
	}
	b, _ := json.Marshal(want)
	if err := writeFileSync(d.tuningPath(), b, 0o600); err != nil {
		d.log.Warn("saving raft settings for the next start", "err", err)
		return
	}
	if want != d.spec.running {
		d.log.Info("raft settings changed: etcd applies them when hushd next starts", "snapshotCount", want.SnapshotCount,
			"maxSnapFiles", want.MaxSnapFiles, "catchUpEntries", want.SnapshotCatchUpEntries,
			"heartbeat", want.Heartbeat, "electionTimeout", want.ElectionTimeout)
	}
}

// noteNoEffect logs, once when it is set or changed, each setting that
// describes a mechanism hush does not have: it is stored and shown as
// given, as a cluster setting (not a workload option), but acts on
// nothing. docs/COMPATIBILITY.md lists them.
func (d *Daemon) noteNoEffect(before, after *cluster.Cluster) {
	var b cluster.Cluster
	if before != nil {
		b = *before
	} else {
		b.Spec = cluster.DefaultSpec()
		b.Network = cluster.Network{ListenAddr: "0.0.0.0:2377", DataPathPort: cluster.DefaultDataPathPort}
	}
	a := after
	warn := func(field string, value any, why string) {
		d.log.Warn("swarm setting has no effect in hush", "field", field, "value", value, "why", why)
	}
	if before == nil {
		n := a.Network
		if d.listen.enabled() {
			// Honoured: the join/CA service listens there.
			n.ListenAddr, n.AdvertiseAddr = b.Network.ListenAddr, ""
		}
		if n.ListenAddr != b.Network.ListenAddr {
			warn("ListenAddr", n.ListenAddr, "this node has no listen address (hushd's --listen-addr): it opens no swarm port, the API socket is the only way in")
		}
		if host, _, _ := net.SplitHostPort(n.AdvertiseAddr); host != "" && host != d.cfg.AdvertiseAddr {
			warn("AdvertiseAddr", n.AdvertiseAddr, "the node's address is hushd's --advertise-addr ("+d.cfg.AdvertiseAddr+")")
		}
		if n.DataPathAddr != "" {
			warn("DataPathAddr", n.DataPathAddr, "hush runs no overlay data path: swarm networks are bridges on the host")
		}
		if n.DataPathPort != cluster.DefaultDataPathPort {
			warn("DataPathPort", n.DataPathPort, "hush runs no VXLAN overlay: swarm networks are bridges on the host")
		}
	}
	// CAConfig.NodeCertExpiry is honoured, not noted: every node
	// certificate is issued with the spec's value read at issue time
	// (Daemon.issue), so joins, promotions, demotions and renewals after
	// an update get the new lifetime; certificates already issued keep
	// theirs until their renewal, as in Swarm.
	if len(a.Spec.CAConfig.ExternalCAs) > 0 && !reflect.DeepEqual(a.Spec.CAConfig.ExternalCAs, b.Spec.CAConfig.ExternalCAs) {
		urls := make([]string, 0, len(a.Spec.CAConfig.ExternalCAs))
		for _, e := range a.Spec.CAConfig.ExternalCAs {
			urls = append(urls, e.URL)
		}
		warn("CAConfig.ExternalCAs", urls, "hush signs with its own root CA key and never contacts an external CA")
	}
}

// setAvailability sets this node's availability (init's --availability).
func (d *Daemon) setAvailability(ctx context.Context, a swarm.NodeAvailability) error {
	n, err := nodes.Ensure(ctx, d.store, d.nodeID)
	if err != nil {
		return fmt.Errorf("node object: %w", err)
	}
	spec := n.Spec
	spec.Availability = a
	return nodes.Update(ctx, d.store, d.nodeID, n.Version, spec)
}

// initSpecError words a refused init spec as dockerd does: it applies the
// spec after the node has started, with this prefix. (hush checks first,
// so nothing is created.)
func initSpecError(err error) error {
	var e *errdefs.Error
	if !errors.As(err, &e) || !errors.Is(err, errdefs.ErrInvalidArgument) {
		return err
	}
	if e.Control {
		return errdefs.BadRequest("error updating cluster settings: rpc error: code = InvalidArgument desc = %s", e.Msg)
	}
	return err
}

// scrubPlainSigningKey removes a CA signing key (and its certificate) an
// earlier hushd stored in plaintext in the spec. Such a key never became
// the root CA's: that hushd did not rotate.
func (d *Daemon) scrubPlainSigningKey(ctx context.Context, c *cluster.Cluster) {
	if c.Spec.CAConfig.SigningCAKey == "" && c.Spec.CAConfig.SigningCACert == "" {
		return
	}
	// Not shown by the API (Info clears both): the version stays.
	if err := cluster.PutInternal(ctx, d.store, c); err != nil {
		d.log.Error("could not remove a plaintext CA signing key from the cluster spec", "err", err)
		return
	}
	d.log.Warn("removed a CA signing key that an earlier hushd stored in plaintext in the cluster spec; etcd drops its old revisions at the next compaction")
}
