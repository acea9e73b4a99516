package daemon

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/events"
	"github.com/hush-secrets/hush/internal/manager/networks"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/store"
)

// openStore opens the store (a lone member, a member of the managers'
// cluster, or an external etcd) and builds everything that reads it: the
// object managers, the mirror, networks, events, the standalone
// containers' grants, and the API server over them. Background loops start
// on d.bg.
func (d *Daemon) openStore(ctx context.Context, member *store.MemberConfig) error {
	var st *store.Store
	var err error
	switch {
	case d.worker != nil:
		// A worker runs only the agent (issue 9): no etcd, embedded or the
		// user's, and no etcd data. Its store refuses every call with
		// Swarm's not-a-manager text, so a reader the API's state check
		// does not cover fails as a swarm call does instead of crashing.
		if err := d.removeStoreData(); err != nil {
			return err
		}
		st = store.Detached(errdefs.Unavailable("%s", msgNotManager), d.log)
	case d.cfg.External != nil:
		st, err = d.openExternal(ctx)
	default:
		st, err = store.OpenEmbedded(ctx, store.EmbeddedConfig{
			Dir:          d.storeDir(),
			Name:         d.nodeID,
			Logger:       d.log,
			EtcdLogLevel: d.cfg.EtcdLogLevel,
			Tuning:       d.spec.running,
			Keys:         &d.keys,
			Member:       member,
		})
	}
	if member != nil {
		clear(member.TLS.KeyPEM)
	}
	if err != nil {
		return err
	}
	d.store = st
	d.cur.Store(st)
	d.secrets = objects.New(objects.Secret, d.store, &d.keys, d.log)
	d.configs = objects.New(objects.Config, d.store, &d.keys, d.log)
	d.registerInnerSeals()
	d.mirror = store.NewMirror(d.store)
	d.secrets.UseMirror(d.mirror)
	d.configs.UseMirror(d.mirror)
	d.svcs = services.New(d.store, d.mirror, d.log)
	// Retention and destroy never take a version a task or a standalone
	// container holds.
	d.secrets.UseHolders(d.holders)
	d.configs.UseHolders(d.holders)
	// The cluster spec's label io.hush.versions.keep (see settle).
	keep := func() int { return int(d.spec.keep.Load()) }
	d.secrets.UseKeep(keep)
	d.configs.UseKeep(keep)
	// Registry credentials (--with-registry-auth) are sealed like secrets.
	d.svcs.UseSealer(&d.keys)
	ncfg := networks.Config{Store: d.store, Mirror: d.mirror, NodeID: d.nodeID, Logger: d.log, AddrPools: d.addrPools}
	if d.netEngine != nil {
		ncfg.Engine, ncfg.Realiser = d.netEngine, d.realiser
	}
	d.nets = networks.New(ncfg)
	d.svcs.UseNetworks(d.nets)
	// hush's own `docker events`, derived from the store's watch. It opens
	// sealed values, so it runs from the first activation, with the mirror
	// (startMirror). A node without a spec name is named by its hostname,
	// as in Swarm.
	ev := events.New(events.Config{Store: d.store, Logger: d.log, Hostname: func(string) string { h, _ := os.Hostname(); return h }})
	d.evMu.Lock()
	d.events = ev
	d.evMu.Unlock()
	acfg := d.acfg
	acfg.Secrets, acfg.Configs, acfg.Services, acfg.Networks, acfg.Events = d.secrets, d.configs, d.svcs, d.nets, d.events
	if d.worker != nil {
		// The routes stay (their calls get the not-a-manager answer);
		// `docker events` is the engine's alone, as on a Swarm worker.
		acfg.Events = nil
	}
	if d.engineCli != nil {
		if err := d.startStandalone(&acfg, d.tasksDir); err != nil {
			return err
		}
	}
	// Realises networks, and removes the engine networks of removed ones
	// (also after a leave erased them all).
	if d.worker == nil {
		// A worker's agent removes the networks its tasks no longer use.
		d.runBG(d.nets.Run, d.bg)
	}
	d.apiSrv.Store(api.New(acfg))
	return nil
}

// reopenStore closes the store and everything built on it, then opens it
// again as member says (the caller holds d.mu and has stopped the runtime).
// API calls in flight meanwhile fail; the swarm calls of an inactive node
// are all this affects, and init or join is what is running.
//
// wipe removes the etcd data first: a joining member must start empty
// (etcd refuses a data directory of another cluster), and an inactive
// node's store holds nothing of a cluster.
func (d *Daemon) reopenStore(ctx context.Context, member *store.MemberConfig, wipe bool) error {
	d.closeStoreLocked()
	if wipe {
		if err := os.RemoveAll(filepath.Join(d.cfg.DataDir, "etcd")); err != nil {
			return fmt.Errorf("clearing the store for the join: %w", err)
		}
	}
	return d.openStoreLocked(ctx, member)
}

// closeStoreLocked stops the runtime and the background loops and closes
// the store (the caller holds d.mu and opens it again).
func (d *Daemon) closeStoreLocked() {
	d.stopRuntime()
	d.stopBG()
	d.bgDone.Wait()
	if err := d.store.Close(); err != nil {
		d.log.Warn("closing store before reopening it", "err", err)
	}
}

// removeStoreData removes the embedded store's data: a worker holds none.
// What it removes is an inactive node's empty store (a join as a worker
// left it, or a crash before it was removed), or a demoted manager's whose
// removal a crash interrupted after worker.json, the demotion's commit
// point, was written: neither holds anything the node needs.
func (d *Daemon) removeStoreData() error {
	if err := os.RemoveAll(filepath.Join(d.cfg.DataDir, "etcd")); err != nil {
		return fmt.Errorf("removing a worker's store data: %w", err)
	}
	return nil
}

// openStoreLocked opens the store closed by closeStoreLocked.
func (d *Daemon) openStoreLocked(ctx context.Context, member *store.MemberConfig) error {
	d.bg, d.stopBG = context.WithCancel(context.Background())
	d.mirrorOnce = sync.Once{}
	return d.openStore(ctx, member)
}

func (d *Daemon) serveAPI(w http.ResponseWriter, r *http.Request) {
	d.apiSrv.Load().ServeHTTP(w, r)
}

func (d *Daemon) currentEvents() *events.Source {
	d.evMu.Lock()
	defer d.evMu.Unlock()
	return d.events
}
