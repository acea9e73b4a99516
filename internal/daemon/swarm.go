package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/dispatcher"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/manager/orchestrator"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// Swarm's texts for the states in which a call cannot be served.
const (
	msgLocked   = `Swarm is encrypted and needs to be unlocked before it can be used. Please use "docker swarm unlock" to unlock it.`
	msgInactive = `This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this node to swarm and try again.`
	msgJoined   = `This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and join another one.`
	// msgNotManager is Swarm's answer to a swarm call on a worker, and to
	// `swarm init --force-new-cluster` on a node that runs no manager (a
	// worker, or a locked node).
	msgNotManager = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager."
)

// nextKey is where a rotated locked key is written before it is committed:
// a crash between writing it and recording the new unlock key leaves both
// files, and unlock tries both (see Unlock).
func (d *Daemon) nextKey() keyring.LockedKeyStore {
	return keyring.LockedKeyStore{Path: d.lockedKey.Path + ".next"}
}

// State is the node's swarm state.
func (d *Daemon) State() swarm.LocalNodeState {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.noQuorum.Load() {
		return swarm.LocalNodeStatePending
	}
	return d.state
}

// CheckServing reports why swarm calls cannot be served now, if they can't.
func (d *Daemon) CheckServing() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.CheckServingLocked()
}

// resume decides the start-up state from the store and the key files, and
// completes an autolock change that a crash interrupted.
func (d *Daemon) resume(ctx context.Context) error {
	// A crash inside a key-file write leaves its temp file, which may hold
	// the plaintext key.
	keysDir := filepath.Dir(d.plainKey.Path)
	if n, err := keyring.RemoveTempFiles(keysDir); err != nil {
		return fmt.Errorf("key files: %w", err)
	} else if n > 0 {
		d.log.Warn("removed temporary key files an interrupted write left", "dir", keysDir, "files", n)
	}
	if d.lockedMemberWaits() {
		return nil
	}
	exists, err := cluster.Exists(ctx, d.curStore())
	if err != nil {
		return err
	}
	if !exists {
		if err := d.checkExternalClusterGone(); err != nil {
			return err
		}
		// Key files without a cluster: an init that crashed, or a leave
		// that did not finish. Neither protects anything.
		_ = d.lockedKey.Remove()
		_ = d.nextKey().Remove()
		d.removeRotationFiles()
		if d.cfg.NoInit {
			d.log.Info("no cluster: waiting for docker swarm init")
			return nil
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		_, err := d.initLocked(ctx, swarm.InitRequest{ListenAddr: "0.0.0.0:2377"}, nil)
		return err
	}
	if d.awaitsExternalJoin() {
		return nil
	}
	if err := d.noteExternalCluster(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.unlockWith.Key != nil {
		return d.activateUnlockedLocked(ctx)
	}
	switch {
	case d.plainKey.Exists():
		mk, err := d.plainKey.Load()
		if err != nil {
			return fmt.Errorf("master key: %w", err)
		}
		// The files follow the record (a crash may have stopped a key
		// change half-way); this may end in the locked state.
		acked, err := d.settleKeysLocked(ctx, mk, "")
		if err != nil {
			d.dropKeyring()
			mk.Destroy()
			return fmt.Errorf("key files: %w", err)
		}
		if acked && d.member == nil {
			// Locked: nothing may open the store until an unlock. (A
			// manager of a cluster runs its etcd member already: it
			// stays active, its files now locked, as a swarmkit manager
			// that learns of autolock while it runs.)
			d.dropKeyring()
			mk.Destroy()
			d.state = swarm.LocalNodeStateLocked
			d.log.Warn("hushd is locked: run `docker swarm unlock` with the unlock key")
			return nil
		}
		if err := d.activateLocked(mk); err != nil {
			return err
		}
		d.notePendingLocked()
		if w := d.Warnings(); len(w) > 0 {
			d.log.Warn("autolock is on but its unlock key has not been fetched: run `docker swarm unlock-key` and keep the key")
		}
		return nil
	case d.lockedKey.Exists() || d.nextKey().Exists():
		d.state = swarm.LocalNodeStateLocked
		d.log.Warn("hushd is locked: run `docker swarm unlock` with the unlock key")
		return nil
	}
	return fmt.Errorf("a cluster exists but its master key is missing from %s", d.plainKey.Path)
}

// activateLocked loads the master key and starts the cluster's runtime.
func (d *Daemon) activateLocked(mk keyring.MasterKey) error {
	kr, err := keyring.New(mk)
	if err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	if mk, err = d.unsealStore(context.Background(), kr, mk); err != nil {
		return err
	}
	// The cluster record is sealed: its settings are read once the store
	// opens.
	c, err := cluster.Get(context.Background(), d.store)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	d.scrubPlainSigningKey(context.Background(), &c)
	d.settle(&c)
	// Before it registers, campaigns or serves: an external manager
	// demoted or removed while it was down reads so here.
	if _, err := d.checkExternalSelf(context.Background()); err != nil {
		return err
	}
	if _, err := nodes.Ensure(context.Background(), d.store, d.nodeID); err != nil {
		return fmt.Errorf("node object: %w", err)
	}
	if d.member != nil {
		host, _ := os.Hostname()
		if err := nodes.Describe(context.Background(), d.store, d.nodeID, host, d.listen.Advertise); err != nil {
			d.log.Warn("recording this manager's hostname and address", "err", err)
		}
		if err := d.describeSelf(context.Background()); err != nil {
			d.log.Warn("recording this manager's description", "err", err)
		}
	}
	d.keys.Set(kr)
	d.mk = mk
	d.noteKeyMemory()
	d.state = swarm.LocalNodeStateActive
	var ctx context.Context
	ctx, d.runStop = context.WithCancel(d.life)
	run := func(fn func(context.Context)) {
		d.runDone.Add(1)
		go func() {
			defer d.runDone.Done()
			fn(ctx)
		}()
	}
	var presence *presenceKeeper
	if d.store.Members() != nil {
		// One orchestrator for the cluster: the manager that leads.
		run(d.leadOrchestrator)
		// Every manager's key files follow the record's unlock key.
		run(d.followUnlockKey)
		// And the record of a master-key rotation across them.
		run(d.followRotation)
		// etcd refuses demoted and removed managers' certificates.
		run(d.keepEtcdCRL)
		// Every manager vouches for itself and the nodes it hears.
		presence = &presenceKeeper{d: d}
		run(presence.run)
	} else {
		run(d.newOrchestrator().Run)
	}
	disp := dispatcher.New(dispatcher.Config{
		Tasks: d.svcs, Changes: d.mirror, Table: d.store.Table(model.TasksTable),
		Secrets: d.secrets, Configs: d.configs, Networks: d.nets, PullAuth: d.svcs, Logger: d.log,
	})
	// A port taken at init, join or a first listen was refused there
	// (reserveDispatchLocked); one taken at a restart is retried
	// (dispatcherServer) and said in docker info.
	if serve, err := d.dispatcherServer(disp, c.ID, presence); err != nil {
		d.log.Error("dispatcher for workers not served", "err", err)
	} else if serve != nil {
		run(serve)
	}
	if d.engine != nil {
		a := agent.New(agent.Config{
			NodeID: d.nodeID, Dispatcher: localDispatcher{disp: disp, nodeID: d.nodeID},
			Executor: agent.NewExecutor(d.nodeID, d.engine, d.fs, d.realiser), Logger: d.log,
		})
		run(func(ctx context.Context) {
			d.localAgent.Store(a)
			defer d.localAgent.CompareAndSwap(a, nil)
			a.Run(ctx)
		})
	}
	d.runStandalone(run)
	d.log.Info("cluster active", "node", d.nodeID, "keyID", mk.ID)
	return nil
}

func (d *Daemon) newOrchestrator() *orchestrator.Orchestrator {
	orch := orchestrator.New(d.store, d.mirror, d.svcs, d.nodeID, d.log)
	orch.SetEngineLabels(d.engineLabels)
	orch.SetSettings(d.orchestratorSettings)
	orch.SetDataVersions(d.dataVersions)
	if d.member != nil {
		orch.SetCluster()
	}
	// The node's resources as `docker node inspect` reports them.
	orch.SetResources(int64(runtime.NumCPU())*1e9, d.engineMemory)
	return orch
}

// orchestratorTTL is how long a leader that stopped renewing (crashed,
// partitioned) keeps the orchestrator's leadership.
const orchestratorTTL = 10 * time.Second

// leadOrchestrator campaigns for the orchestrator's leadership and runs a
// fresh orchestrator while this manager holds it; it stops acting as soon
// as the leadership ends (Done), and campaigns again.
func (d *Daemon) leadOrchestrator(ctx context.Context) {
	for ctx.Err() == nil {
		l, err := d.store.Campaign(ctx, "orchestrator", d.nodeID, orchestratorTTL)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.Debug("orchestrator campaign", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		// A campaign that waited through an election can return to a
		// candidate whose lease expired meanwhile (its key is gone and
		// another candidate leads): act only on a leadership that holds.
		if err := l.Check(ctx); err != nil {
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = l.Resign(rctx)
			rcancel()
			continue
		}
		d.log.Info("leading the orchestrator", "fence", l.Fence())
		octx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-l.Done():
			case <-octx.Done():
			}
			cancel()
		}()
		var sweep sync.WaitGroup
		if m := d.store.Members(); m != nil {
			sweep.Go(func() { d.sweepLearners(octx, m, learnerSweep) })
			sweep.Go(func() { d.runLiveness(octx, l) })
		}
		orch := d.newOrchestrator()
		orch.SetLeadership(l)
		orch.Run(octx)
		cancel()
		sweep.Wait()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = l.Resign(rctx)
		rcancel()
		d.log.Info("no longer leading the orchestrator")
	}
}

// stopRuntime stops the orchestrator and agent; running task containers
// and their secret mounts stay as they are.
func (d *Daemon) stopRuntime() {
	d.runMu.Lock()
	defer d.runMu.Unlock()
	if d.runStop != nil {
		d.runStop()
		d.runDone.Wait()
		d.runStop = nil
	}
}

// Init creates a cluster on a hushd started with --no-init (or after a
// leave); a CA signing key is taken from req.Spec.
func (d *Daemon) Init(ctx context.Context, req swarm.InitRequest) (string, error) {
	return d.InitWithKey(ctx, req, []byte(req.Spec.CAConfig.SigningCAKey))
}

// InitWithKey is Init with the CA signing key (PEM) apart from the spec,
// as bytes the caller wipes.
func (d *Daemon) InitWithKey(ctx context.Context, req swarm.InitRequest, caKey []byte) (string, error) {
	// A lifecycle change must not stop half-way because a client left.
	ctx = context.WithoutCancel(ctx)
	req.Spec.CAConfig.SigningCAKey = ""
	if req.ForceNewCluster {
		// A manager of a cluster of managers (forcenew.go).
		if id, handled, err := d.forceNewMember(ctx, req, caKey); handled {
			return id, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.noQuorum.Load() {
		// Pending: only the recovery above changes anything.
		return "", d.CheckServingLocked()
	}
	return d.initLocked(ctx, req, caKey)
}

func (d *Daemon) initLocked(ctx context.Context, req swarm.InitRequest, caKey []byte) (string, error) {
	if d.state != swarm.LocalNodeStateInactive {
		if req.ForceNewCluster && (d.worker != nil || d.state == swarm.LocalNodeStateLocked) {
			// As Swarm: a worker, or a node locked since its restart,
			// runs no manager to restart as a new cluster.
			return "", errdefs.Unavailable("%s", msgNotManager)
		}
		if req.ForceNewCluster && d.state == swarm.LocalNodeStateActive {
			return d.forceNewClusterLocked(ctx, req, caKey)
		}
		return "", errdefs.Unavailable("%s", msgJoined)
	}
	netw, err := cluster.ValidateInit(&req, d.cfg.AdvertiseAddr)
	if err != nil {
		return "", err
	}
	// The addresses as ValidateInit resolved them (an interface name
	// becomes its IP).
	reqListen, adv := "", d.advertiseFlag()
	if strings.TrimPrefix(req.ListenAddr, "tcp://") != cliDefaultListen {
		reqListen = netw.ListenAddr
	}
	if req.AdvertiseAddr != "" {
		adv = netw.AdvertiseAddr
		if _, _, err := net.SplitHostPort(req.AdvertiseAddr); err != nil {
			// No port asked: ValidateInit's default port (the request's
			// listen port) is not one to hold the plan to.
			adv, _, _ = net.SplitHostPort(adv)
		}
	}
	plan, err := listenPlanFor(d.cfg.ListenAddr, reqListen, adv)
	if err != nil {
		return "", err
	}
	// Before the master key and the cluster are made: a refusal leaves
	// nothing behind.
	if err := d.reserveDispatchLocked(plan); err != nil {
		return "", err
	}
	defer d.releaseUnservedDispatchLocked()
	if plan.enabled() {
		// The cluster records the address the plan advertises (the listen
		// IP when none was given), not hushd's default.
		netw.AdvertiseAddr = plan.Advertise
	}
	spec := cluster.MergeSpec(cluster.DefaultSpec(), req.Spec)
	autolock := req.AutoLockManagers || req.Spec.EncryptionConfig.AutoLockManagers
	spec.EncryptionConfig.AutoLockManagers = false
	if err := cluster.ValidateSpec(&spec); err != nil {
		return "", initSpecError(err)
	}
	var mk keyring.MasterKey
	generated := !d.plainKey.Exists()
	if !generated {
		mk, err = d.plainKey.Load()
	} else {
		mk, err = keyring.GenerateMasterKey()
		if err == nil {
			err = d.plainKey.Store(mk)
		}
	}
	if err != nil {
		return "", fmt.Errorf("master key: %w", err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		return "", err
	}
	defer kr.Destroy()
	d.keys.Set(kr) // the store seals the cluster object with it
	c, err := cluster.Create(ctx, d.store, kr, cluster.Params{Spec: spec, SigningCAKey: caKey, Network: netw})
	if err != nil {
		d.keys.Set(nil)
		if errors.Is(err, cluster.ErrExists) {
			// Another hushd's cluster on an external etcd won a race to
			// init: nothing was written, so the new key protects nothing,
			// and kept it would make this data dir pass for that cluster's.
			if generated {
				_ = d.plainKey.Remove()
			}
			if d.cfg.External != nil {
				return "", errdefs.BadRequest("%s", msgExternalInit)
			}
		}
		return "", initSpecError(err)
	}
	if err := d.noteExternalCluster(); err != nil {
		// The cluster is made; only the guard against a changed
		// --external-etcd is missing until the next start records it.
		d.log.Warn("recording the external etcd's cluster in the data dir", "err", err)
	}
	if req.Availability != swarm.NodeAvailabilityActive {
		if err := d.setAvailability(ctx, req.Availability); err != nil {
			return "", err
		}
	}
	if err := d.activateLocked(mk); err != nil {
		return "", err
	}
	if autolock {
		if err := d.setAutolockLocked(ctx, &c, true, false); err != nil {
			return "", err
		}
	}
	if plan.enabled() {
		// Listening: this node is the first manager others join.
		if err := d.becomeManagerLocked(ctx, plan); err != nil {
			return "", fmt.Errorf("becoming a manager on %s: %w", plan.Listen, err)
		}
		if err := d.activateLocked(mk); err != nil {
			return "", err
		}
		if err := d.startJoinServiceLocked(); err != nil {
			return "", err
		}
		// As Swarm's, the init answers once the node is Ready (a lone
		// node without a listen address is Ready by definition).
		d.awaitSelfReady(ctx)
	}
	d.settle(&c)
	d.noteNoEffect(nil, &c)
	d.log.Info("swarm initialised", "cluster", c.ID, "autolock", autolock)
	return d.nodeID, nil
}

// forceNewClusterLocked is `docker swarm init --force-new-cluster` on an
// active node. hush's cluster always has this one manager, so there is no
// membership to shrink: as in Swarm, the cluster and its state stay, and
// the request's set spec fields (and autolock, when asked) are applied.
// A listen or advertise address other than the node's own is refused
// (forceNewKeepsAddrs).
func (d *Daemon) forceNewClusterLocked(ctx context.Context, req swarm.InitRequest, caKey []byte) (string, error) {
	netw, err := cluster.ValidateInit(&req, d.cfg.AdvertiseAddr)
	if err != nil {
		return "", err
	}
	if err := d.forceNewAddrsLocked(req, netw); err != nil {
		return "", err
	}
	c, err := cluster.Get(ctx, d.store)
	if err != nil {
		return "", err
	}
	before := c
	spec := cluster.MergeSpec(c.Spec, req.Spec)
	spec.EncryptionConfig.AutoLockManagers = c.Spec.EncryptionConfig.AutoLockManagers
	if req.Spec.CAConfig.ForceRotate == 0 {
		// Unset, as the request's other zero fields are: the CLI's init
		// sends no counter, and a cluster whose root was rotated before
		// (counter > 0) would otherwise rotate it again, or, on a manager
		// of a cluster, have the way out of a lost quorum refused
		// (refuseRootRotationLocked).
		spec.CAConfig.ForceRotate = c.LastForcedRotation
	}
	if err := cluster.ValidateSpec(&spec); err != nil {
		return "", initSpecError(err)
	}
	rotated, err := c.ApplyCAConfig(&d.keys, spec.CAConfig, caKey, time.Now())
	if err != nil {
		return "", initSpecError(err)
	}
	if err := d.refuseRootRotationLocked(rotated, spec.CAConfig); err != nil {
		return "", err
	}
	c.Spec = spec
	if req.AutoLockManagers && !c.Spec.EncryptionConfig.AutoLockManagers {
		err = d.setAutolockLocked(ctx, &c, true, false)
	} else {
		err = cluster.Put(ctx, d.store, &c)
	}
	if err != nil {
		return "", err
	}
	if req.Availability != swarm.NodeAvailabilityActive {
		if err := d.setAvailability(ctx, req.Availability); err != nil {
			return "", err
		}
	}
	d.settle(&c)
	d.noteNoEffect(&before, &c)
	d.log.Info("swarm re-initialised with --force-new-cluster", "cluster", c.ID)
	return d.nodeID, nil
}

// Inspect returns the cluster with its join tokens (managers only).
func (d *Daemon) Inspect(ctx context.Context) (swarm.Swarm, error) {
	if err := d.CheckServing(); err != nil {
		return swarm.Swarm{}, err
	}
	c, err := cluster.Get(ctx, d.curStore())
	if err != nil {
		return swarm.Swarm{}, err
	}
	return swarm.Swarm{ClusterInfo: c.Info(), JoinTokens: c.JoinTokens}, nil
}

// Update applies a new cluster spec and the requested rotations, as
// swarmkit does: the spec is checked, the CA rotated if it asks for that
// (f.SigningCAKey with Spec.CAConfig.SigningCACert, or a changed
// ForceRotate), then the whole spec replaces the stored one.
func (d *Daemon) Update(ctx context.Context, version uint64, spec swarm.Spec, f api.SwarmUpdateFlags) error {
	// A lifecycle change must not stop half-way because a client left.
	ctx = context.WithoutCancel(ctx)
	key := f.SigningCAKey
	if key == nil && spec.CAConfig.SigningCAKey != "" {
		key = []byte(spec.CAConfig.SigningCAKey)
		defer keyring.Wipe(key)
	}
	spec.CAConfig.SigningCAKey = ""
	if d.autolockChangeAsked(ctx, spec, f.RotateManagerUnlockKey) {
		// A master-key rotation across the managers (enabling autolock
		// starts one) is waited for before the lifecycle lock, which
		// this manager's own step of it needs; checked again below.
		if err := d.awaitNoRotation(ctx, "an autolock change"); err != nil {
			return err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for attempt := 0; ; attempt++ {
		err := d.updateLocked(ctx, version, spec, key, f)
		// A write to the record between this update's read and its write:
		// read again. If it was hush's own (a re-wrap, bookkeeping), the
		// version is still the client's and the change is applied to what
		// is there now; if a client's, updateLocked refuses it.
		if errors.Is(err, errUpdateRaced) && attempt < 10 {
			continue
		}
		if errors.Is(err, errUpdateRaced) {
			return errdefs.OutOfSequence()
		}
		return err
	}
}

// errUpdateRaced is updateLocked's write finding the record written since
// its read.
var errUpdateRaced = errors.New("cluster record written during the update")

// updateLocked is one attempt of Update, under d.mu.
func (d *Daemon) updateLocked(ctx context.Context, version uint64, spec swarm.Spec, key []byte, f api.SwarmUpdateFlags) error {
	if d.state != swarm.LocalNodeStateActive {
		return d.CheckServingLocked()
	}
	c, err := cluster.Get(ctx, d.store)
	if err != nil {
		return err
	}
	if c.Version != version {
		return errdefs.OutOfSequence()
	}
	if err := cluster.ValidateSpec(&spec); err != nil {
		return err
	}
	before := c
	rotated, err := c.ApplyCAConfig(&d.keys, spec.CAConfig, key, time.Now())
	if err != nil {
		return err
	}
	if err := d.refuseRootRotationLocked(rotated, spec.CAConfig); err != nil {
		return err
	}
	was := c.Spec.EncryptionConfig.AutoLockManagers
	want := spec.EncryptionConfig.AutoLockManagers
	spec.EncryptionConfig.AutoLockManagers = was
	c.Spec = spec
	if f.RotateWorkerToken {
		if err := c.RotateToken("worker"); err != nil {
			return err
		}
	}
	if f.RotateManagerToken {
		if err := c.RotateToken("manager"); err != nil {
			return err
		}
	}
	if d.member != nil && (want != was || (want && f.RotateManagerUnlockKey)) {
		// Every manager re-wraps its key files under the record's unlock
		// key: not while a rotation across them changes the master key.
		if err := d.rotationInProgress(ctx, "an autolock change"); err != nil {
			return err
		}
	}
	switch {
	case want != was:
		err = d.setAutolockLocked(ctx, &c, want, false)
	case want && f.RotateManagerUnlockKey:
		err = d.setAutolockLocked(ctx, &c, true, true)
	default:
		if err = d.injected(fpSpecPut); err == nil {
			err = cluster.Put(ctx, d.store, &c)
		}
	}
	if errors.Is(err, errdefs.ErrOutOfSequence) {
		// The version was checked above: the record moved since.
		return errUpdateRaced
	}
	if err != nil {
		return err
	}
	if rotated {
		d.log.Info("root CA rotated", "forceRotate", c.LastForcedRotation)
	}
	d.settle(&c)
	d.noteNoEffect(&before, &c)
	return nil
}

// autolockChangeAsked reports whether spec turns autolock on or off, or
// rotateKey its unlock key, on an active manager of a cluster (read
// without d.mu; Update checks again under it).
func (d *Daemon) autolockChangeAsked(ctx context.Context, spec swarm.Spec, rotateKey bool) bool {
	d.mu.Lock()
	member := d.member != nil && d.state == swarm.LocalNodeStateActive
	d.mu.Unlock()
	if !member {
		return false
	}
	c, err := cluster.Get(ctx, d.curStore())
	return err == nil && (c.Spec.EncryptionConfig.AutoLockManagers != spec.EncryptionConfig.AutoLockManagers ||
		(rotateKey && c.Spec.EncryptionConfig.AutoLockManagers))
}

// Texts of a root CA rotation refused on a node that holds a node
// certificate (see refuseRootRotationLocked).
const (
	msgRotateForce = "CAConfig.ForceRotate: hush cannot rotate the root CA of a swarm whose nodes hold certificates (this manager listens on %s): " + msgRotateWhy
	msgRotateCert  = "CAConfig.SigningCACert: hush cannot replace the root CA of a swarm whose nodes hold certificates (this manager listens on %s): " + msgRotateWhy
	msgRotateWhy   = "its nodes would keep certificates of the old root, which the managers would refuse at once (no renewal, no role change, no join with the new tokens). " +
		"Nothing was changed. Swarm reissues every node's certificate under a cross-signed root first; hush does not yet (docs/COMPATIBILITY.md)"
)

// refuseRootRotationLocked refuses a root CA rotation (rotated) on a
// manager of a cluster, i.e. one with a listen address, whose node and
// the nodes that joined it hold certificates of the current root: hush
// has no staged rotation (cross-signed intermediate, every node reissued,
// then the old root dropped), and the one-step swap it does on a lone
// node leaves such nodes refused by the join/CA service and the
// dispatcher under the new root, and the managers' own certificates
// unverifiable by joiners. The caller has written nothing yet.
func (d *Daemon) refuseRootRotationLocked(rotated bool, cfg swarm.CAConfig) error {
	if !rotated || d.member == nil {
		return nil
	}
	if cfg.SigningCACert != "" {
		return errdefs.BadRequest(msgRotateCert, d.listen.Advertise)
	}
	return errdefs.BadRequest(msgRotateForce, d.listen.Advertise)
}

// CheckServingLocked is CheckServing for callers holding d.mu.
func (d *Daemon) CheckServingLocked() error {
	if d.noQuorum.Load() {
		return fmt.Errorf("waiting for the swarm's quorum: %w", errdefs.ErrNoLeader)
	}
	if d.worker != nil {
		// A worker has no store to serve from. dockerd tells a worker
		// (a swarm node without a manager) from a node in no swarm by
		// their texts; scripts match on the worker's.
		return errdefs.Unavailable("%s", msgNotManager)
	}
	switch d.state {
	case swarm.LocalNodeStateLocked:
		return errdefs.Unavailable("%s", msgLocked)
	case swarm.LocalNodeStateInactive:
		return errdefs.Unavailable("%s", msgInactive)
	}
	return nil
}

// setAutolockLocked turns autolock on (with a fresh unlock key), off, or
// rotates its key, and writes c, in the crash-safe order of autolock.go.
// A failed change leaves the files as the record says, as a restart would.
func (d *Daemon) setAutolockLocked(ctx context.Context, c *cluster.Cluster, on, rotate bool) error {
	var err error
	if on {
		err = d.enableOrRotateLocked(ctx, c, rotate)
	} else {
		err = d.disableLocked(ctx, c)
	}
	if err != nil {
		return d.recoverKeysLocked(ctx, err)
	}
	d.notePendingLocked()
	return nil
}

// UnlockKey returns the current unlock key ("" when autolock is off).
func (d *Daemon) UnlockKey(ctx context.Context) (string, error) {
	if err := d.CheckServing(); err != nil {
		return "", err
	}
	c, err := cluster.Get(ctx, d.curStore())
	if err != nil {
		return "", err
	}
	return c.UnlockKey(&d.keys)
}

// Unlock opens the locked master key with key and activates the cluster.
func (d *Daemon) Unlock(ctx context.Context, key string) error {
	ctx = context.WithoutCancel(ctx)
	d.mu.Lock()
	member, err := d.unlockLocked(ctx, key)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if member {
		return d.serveUnlockedMember(ctx)
	}
	return d.listenAfterUnlock(ctx)
}

// unlockLocked is Unlock under d.mu. member: the node is a manager of a
// cluster, its member now started and its activation left to
// serveUnlockedMember, which runs without d.mu.
func (d *Daemon) unlockLocked(ctx context.Context, key string) (member bool, _ error) {
	// Checked under the lock, so parallel attempts cannot all pass it.
	if wait := d.unlock.wait(); wait > 0 {
		return false, errdefs.Unavailable("too many failed unlock attempts: try again in %s", wait.Round(time.Second))
	}
	if d.state != swarm.LocalNodeStateLocked {
		return false, &errdefs.Error{Category: errdefs.ErrConflict, Msg: "swarm is not locked"}
	}
	if d.unlockWith.Key != nil {
		return false, errdefs.Unavailable("%s", msgUnlockStarting)
	}
	// The locked key opens with a key that reached an operator; the
	// pending one with a rotated key that may not have yet: either works.
	var mk keyring.MasterKey
	var err error
	for _, ks := range []keyring.LockedKeyStore{d.lockedKey, d.nextKey()} {
		if !ks.Exists() {
			continue
		}
		if mk, err = ks.Load(key); err == nil {
			break
		}
	}
	if err != nil || mk.Key == nil {
		d.unlock.failed()
		d.log.Warn("failed unlock attempt")
		if errors.Is(err, keyring.ErrBadUnlockKey) || err == nil {
			return false, errdefs.Unauthorized("swarm could not be unlocked: invalid key provided")
		}
		return false, err
	}
	d.unlock.reset()
	if d.lockedMember != nil || d.member != nil {
		return true, d.startUnlockedMemberLocked(ctx, mk, key)
	}
	if err := d.preopenStore(ctx, mk); err != nil {
		mk.Destroy()
		return false, err
	}
	if _, err := d.settleKeysLocked(ctx, mk, key); err != nil {
		d.dropKeyring()
		mk.Destroy()
		return false, fmt.Errorf("key files: %w", err)
	}
	d.log.Info("unlocked")
	if err := d.activateLocked(mk); err != nil {
		return false, err
	}
	d.notePendingLocked()
	return false, nil
}

// Leave removes this node from the cluster. As the only manager it erases
// the cluster, so Swarm's rule applies: only with force.
func (d *Daemon) Leave(ctx context.Context, force bool) error {
	// A lifecycle change must not stop half-way because a client left.
	ctx = context.WithoutCancel(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	if force {
		// A manager's leave closes and replaces its store: its join/CA
		// service stops first, with d.mu released while its handlers
		// finish (stopJoinServiceLocked), before anything below is
		// decided. A leave that fails leaves a manager, serving again.
		if d.joinSvc != nil {
			defer func() {
				if d.member != nil && d.state == swarm.LocalNodeStateActive {
					if err := d.startJoinServiceLocked(); err != nil {
						d.log.Warn("join service not restarted after a failed leave", "err", err)
					}
				}
			}()
		}
		d.stopJoinServiceLocked()
	}
	if d.state == swarm.LocalNodeStateInactive {
		return errdefs.Unavailable("This node is not part of a swarm")
	}
	if d.worker != nil {
		return d.leaveWorkerLocked(ctx)
	}
	if d.unlockWith.Key != nil {
		// Unlocked, its start under way without mu (serveUnlockedMember):
		// a leave now would take the membership that start uses.
		return errdefs.Unavailable("%s", msgUnlockStarting)
	}
	if d.lockedMember != nil {
		return d.leaveLockedMemberLocked(ctx, force)
	}
	if handled, err := d.leaveExternalManagerLocked(ctx, force); handled {
		return err
	}
	if d.member != nil {
		return d.leaveMemberLocked(ctx, force)
	}
	if !force {
		return errdefs.Unavailable("You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. ")
	}
	d.stopRuntime()
	if d.engine != nil {
		d.removeTaskContainers(ctx)
	}
	err := d.injected(fpLeaveErase)
	if err == nil {
		err = d.store.EraseAll(ctx)
	}
	if err != nil {
		// Still in the cluster: run it again rather than stay active with
		// nothing reconciling.
		if aerr := d.activateLocked(d.mk); aerr != nil {
			d.log.Error("restarting after a failed leave", "err", aerr)
		}
		return fmt.Errorf("erase cluster state: %w", err)
	}
	// Once erased: the networks manager, still running, has no network
	// left to realise again.
	d.pruneOwnBridges(ctx)
	if kr := d.keys.Swap(nil); kr != nil {
		kr.Destroy()
	}
	d.mk.Destroy()
	d.mk = keyring.MasterKey{}
	d.pendingKey.Store(pendingNone)
	_ = d.plainKey.Remove()
	_ = d.lockedKey.Remove()
	_ = d.nextKey().Remove()
	_ = os.Remove(d.tuningPath())
	d.spec.orch.Store(nil)
	d.removeRotationFiles()
	d.state = swarm.LocalNodeStateInactive
	d.log.Info("left the swarm; cluster state erased")
	return nil
}

// removeTaskContainers removes this node's task containers and mounts.
func (d *Daemon) removeTaskContainers(ctx context.Context) {
	ctrs, err := d.engine.ListTasks(ctx)
	if err != nil {
		d.log.Warn("listing task containers", "err", err)
		return
	}
	var wg sync.WaitGroup
	for _, c := range ctrs {
		if c.Labels["io.hush.node.id"] != d.nodeID {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = d.engine.Remove(ctx, c.ID)
		}()
	}
	wg.Wait()
	if ids, err := d.fs.Tasks(); err == nil {
		for _, id := range ids {
			_ = d.fs.Unmount(id)
		}
	}
}

// unlockLimiter slows down guessing: after three failures, each further
// attempt must wait twice as long as the last, up to five minutes.
type unlockLimiter struct {
	mu       sync.Mutex
	failures int
	next     time.Time
}

func (l *unlockLimiter) wait() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Until(l.next)
}

func (l *unlockLimiter) failed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures++
	if l.failures >= 3 {
		d := time.Second << min(l.failures-3, 8)
		l.next = time.Now().Add(min(d, 5*time.Minute))
	}
}

func (l *unlockLimiter) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures = 0
	l.next = time.Time{}
}

// localDispatcher opens this node's own sessions in-process. A remote
// node's transport will take the node ID from its certificate instead.
type localDispatcher struct {
	disp   *dispatcher.Dispatcher
	nodeID string
}

func (l localDispatcher) Open(ctx context.Context) (agent.Session, error) {
	s, err := l.disp.Open(ctx, l.nodeID)
	if err != nil {
		return nil, err
	}
	return s, nil
}
