package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/dispatchnet"
	"github.com/hush-secrets/hush/internal/enginehost"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/events"
	"github.com/hush-secrets/hush/internal/manager/networks"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/manager/standalone"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/proxy"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// Version is hushd's version string.
const Version = "0.1.0-dev"

// Config is everything hushd can be told at start.
type Config struct {
	DataDir string
	Socket  string
	// AdvertiseAddr is the address other nodes would reach this one at.
	// Empty: the listen address's IP when it names one (as Swarm), else
	// 127.0.0.1 (a node listening on every address, or on none).
	AdvertiseAddr string
	// ListenAddr (host:port) is where a manager serves the join/CA service
	// (TLS); etcd's peer port is the next one. Empty: no TCP port at all,
	// unless `docker swarm init/join --listen-addr` gives one.
	ListenAddr string
	// EtcdLogLevel is passed to the embedded etcd's logger.
	EtcdLogLevel string
	// External keeps the store in an etcd cluster the user runs instead
	// of an embedded member (--external-etcd; external.go). Its Keys and
	// Logger are the daemon's.
	External *store.ExternalConfig
	// NoInit starts without a cluster; `docker swarm init` creates one.
	NoInit bool
	// Engine is the host's Docker Engine (parsed once, from --engine); nil
	// disables tasks and the pass-through.
	Engine *enginehost.Host
	// SecretsDir is where per-task tmpfs mounts go (default
	// /run/hush/<node ID>).
	SecretsDir string
	Logger     *slog.Logger
	// Failpoints, for end-to-end crash tests only (hushd reads it from
	// HUSH_TEST_FAILPOINTS), is a comma-separated list of point=hang: a
	// goroutine reaching the point logs it and stops there for good, so
	// the test can kill -9 hushd at that step (see failpoints_hang.go).
	// Only a build with the tag hushfailpoints has them (FailpointsBuilt):
	// any other refuses a non-empty value.
	Failpoints string
	// RoleSyncPeriod is how often a node of a cluster asks a manager its
	// role and checks its certificate's renewal (0: 5 s; tests shorten it).
	RoleSyncPeriod time.Duration
	// IssueBurst and IssueEvery bound the certificates this manager
	// issues to one node through its sync (renewals, role changes): a
	// burst, then one per period (0: pki's defaults; tests shorten them).
	IssueBurst int
	IssueEvery time.Duration
}

// Daemon is a running hushd.
type Daemon struct {
	cfg Config
	// advGiven: cfg.AdvertiseAddr was given, not defaulted (advertiseFlag).
	advGiven bool
	log      *slog.Logger
	lock     *os.File
	// store is written only under mu (openStore; at Start before anything
	// else runs) and read under mu or by goroutines that its swap waits
	// for (d.bg, the runtime, the join/CA service's handlers). Anything
	// else (API requests, the sync loop, the quorum wait) reads cur, its
	// copy published with it, through curStore.
	store  *store.Store
	cur    atomic.Pointer[store.Store]
	http   *http.Server
	ln     net.Listener
	nodeID string
	errc   chan error
	// stopBG ends background loops (the mirror, later the orchestrator);
	// they stop before the store closes.
	stopBG context.CancelFunc
	bg     context.Context
	bgDone sync.WaitGroup
	// mirrorOnce starts the mirror when the store can first be opened
	// (not while locked: it decodes every value).
	mirrorOnce sync.Once
	// rot serialises master-key rotations (rotate.go).
	rot    rotation
	proxy  *proxy.Proxy
	engine *engine.Engine
	fs     *secretfs.Manager
	// standalone gives secrets to containers created with io.hush.*
	// labels; their tmpfs live under their own root, cfs.
	standalone *standalone.Manager
	cfs        *secretfs.Manager
	// engineLabels are the engine's labels, for engine.labels constraints.
	engineLabels []string
	// engineMemory is the engine's memory, for resource reservations.
	engineMemory int64
	// engineVersion is the engine's version, as node inspect shows it.
	engineVersion string
	// tasksDir is the root of the tasks' tmpfs (standalone containers'
	// is its sibling).
	tasksDir string

	// acfg is the API's configuration; the store-bound parts are rebuilt
	// when the store is reopened (a node becoming a cluster member), and
	// apiSrv then swapped.
	acfg   api.Config
	apiSrv atomic.Pointer[api.Server]
	// listen is where the join/CA service listens and the peer port
	// derives from (zero: no TCP port at all).
	listen listenPlan
	// member is this node's membership in the managers' cluster (nil: a
	// lone node); joinSvc serves the join/CA service while it is set.
	member  *memberState
	nodeKey *ecdsa.PrivateKey
	joinSvc *joinService
	// joinStopping holds the join/CA services being stopped with mu
	// released (stopJoinServiceLocked): their handlers may still run.
	joinStopping []*joinService
	// worker is set on a node that joined as a worker (worker.go): it
	// serves no swarm API and its store stays empty.
	worker *workerState

	mirror *store.Mirror
	// events derives hush's `docker events` from the store; it runs with
	// the mirror.
	events  *events.Source
	evMu    sync.Mutex
	secrets *objects.Manager
	configs *objects.Manager
	svcs    *services.Manager
	nets    *networks.Manager
	// netEngine realises swarm networks on the engine (nil without one).
	netEngine *networks.EngineClient
	// realiser creates those engine networks for the networks manager and
	// the agent alike, so they never make one twice (nil without engine).
	realiser *networks.Realiser
	// engineCli is the one engine client the agent's engine, the networks
	// manager and the engine reads share; the pass-through shares its
	// dialer (nil without an engine).
	engineCli *client.Client

	// keys holds the keyring while the cluster is active; it is empty when
	// locked or not initialised.
	keys      keyring.Holder
	plainKey  keyring.FileKeyStore
	lockedKey keyring.LockedKeyStore

	// mu serialises lifecycle changes (init, unlock, update, leave).
	mu    sync.Mutex
	state swarm.LocalNodeState
	// mk is the loaded master key, kept to re-wrap it on autolock changes.
	mk keyring.MasterKey
	// pendingKey says which unlock key is owed to an operator (autolock.go),
	// for /info, which must not wait for mu.
	pendingKey atomic.Int32
	// memWarn logs, once, that key memory could not be locked.
	memWarn sync.Once
	// runMu orders stopRuntime's callers: Close holds no mu, and a worker
	// told of its removal leaves on a goroutine of its own (noderemove.go).
	runMu sync.Mutex
	// runStop ends the orchestrator and agent of the active cluster.
	runStop context.CancelFunc
	// workerOpened is closed when the worker agent started last has its
	// first dispatcher session (a worker's join waits for it).
	workerOpened chan struct{}
	runDone      sync.WaitGroup
	unlock       unlockLimiter
	// spec is the cluster settings applied outside the cluster record.
	spec specState
	// seen is when each worker last sent its dispatcher a heartbeat
	// (dispatchsvc.go), in this manager's memory.
	seen dispatchnet.LastSeen
	// dispatch is the dispatcher server's handler while it serves
	// and the relayer asking other managers for logs (noderemove.go ends a
	// removed node's session and asks nodes for logs through them);
	// removed caches the store's refusal list.
	dispatch atomic.Pointer[dispatchRuntime]
	// localAgent is this manager's own agent while the runtime runs: the
	// dispatcher serves its tasks' logs to other managers from it.
	localAgent atomic.Pointer[agent.Agent]
	removed    removedCache
	// held caches which nodes have taken a manager certificate into use
	// (promotedcerts.go): their older worker certificates are refused.
	held heldCache
	// dispatchRes is the dispatcher's listener bound by init, join or a
	// first listen before anything else was done (dispatchport.go), until
	// the dispatcher serves on it; under mu. dispatchProblem says, while
	// a restarted manager cannot bind its dispatcher port, why.
	dispatchRes     *dispatchReservation
	dispatchProblem atomic.Pointer[string]
	// fail is set only by tests (failpoints.go).
	fail failpoints
	// life ends as Close begins, before Close takes mu: the runtime's
	// contexts derive from it, so a loop holding mu over a store call
	// that cannot finish (a cluster without quorum) lets go at once
	// instead of holding Close behind it.
	life     context.Context
	lifeStop context.CancelFunc
	// followRotationHook, set only by tests (under mu), runs in each step
	// of the rotation follower (and in the driver's own step) while it
	// holds mu, with the step's context: it stands for a store call that
	// does not finish.
	followRotationHook func(context.Context)
	// nodeSyncHook, set only by tests (under mu), runs in every node sync
	// the join/CA service serves, with the request's context: it holds a
	// handler in flight while the node changes role.
	nodeSyncHook func(context.Context)

	// cert is this node's current certificate and key, read per handshake
	// by the join/CA service, the dispatcher and the worker's dispatcher
	// client, so that a renewal swaps it everywhere (roles.go).
	cert atomic.Pointer[tls.Certificate]
	// certProblem is why this node's certificate cannot be renewed (an
	// expired one the managers refuse), for the log and docker info's
	// Swarm.Error; nil when there is none (certexpiry.go).
	certProblem atomic.Pointer[certProblem]
	// issueLimit bounds the certificates a node's sync is issued here
	// (serveNodeSync).
	issueLimit *pki.IssueLimiter
	// The sync loop (roles.go): stopped by Close; kicked after a
	// self-demotion; renewAt is its renewal point for the certificate of
	// serial renewFor (by serial, not end: a renewal capped at the root's
	// end keeps the end, and must not keep a passed point); syncNow is a
	// test's clock.
	syncStop func()
	syncDone sync.WaitGroup
	syncKick chan struct{}
	renewAt  time.Time
	renewFor *big.Int
	skew     atomic.Int64
	// promoting holds a promotion past its commit point until this node
	// is activated as a manager (finishPromotionLocked), under mu.
	promoting *pendingPromotion
	// noQuorum is set while a manager started without its cluster's
	// quorum waits for it (quorum.go); quorumStop ends that wait.
	noQuorum   atomic.Bool
	quorumStop context.CancelFunc
	quorumDone sync.WaitGroup
	// Autolock on a cluster of managers (autolockcluster.go), under mu:
	// lockedMember is the membership of a manager started locked (its
	// etcd member not started); unlockMember is its member configuration
	// between the unlock and the member's start; unlockWith and
	// unlockUsed are the master key an unlock opened and the key it
	// used, until activation; closing
	// says Close has begun.
	lockedMember *memberState
	unlockMember *store.MemberConfig
	unlockWith   keyring.MasterKey
	unlockUsed   string
	closing      bool

	closeOnce sync.Once
}

type nodeState struct {
	NodeID string `json:"nodeID"`
}

// Start brings hushd up and returns once it serves requests. A hushd whose
// master key is locked (autolock) serves, but only `docker swarm unlock`
// and the calls that describe its state, until it is unlocked.
func Start(ctx context.Context, cfg Config) (_ *Daemon, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	advGiven := cfg.AdvertiseAddr != ""
	if !advGiven {
		cfg.AdvertiseAddr = "127.0.0.1"
	}
	d := &Daemon{cfg: cfg, advGiven: advGiven, log: cfg.Logger, errc: make(chan error, 2), state: swarm.LocalNodeStateInactive, syncKick: make(chan struct{}, 1)}
	d.life, d.lifeStop = context.WithCancel(context.Background())
	d.issueLimit = pki.NewIssueLimiter()
	if cfg.IssueBurst > 0 {
		d.issueLimit.Burst = cfg.IssueBurst
	}
	if cfg.IssueEvery > 0 {
		d.issueLimit.Every = cfg.IssueEvery
	}
	if d.fail, err = hangingFailpoints(cfg.Failpoints, d.log); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := d.lockDataDir(); err != nil {
		return nil, err
	}
	if d.nodeID, err = loadOrCreateNodeID(filepath.Join(cfg.DataDir, "node.json")); err != nil {
		return nil, err
	}
	d.plainKey = keyring.FileKeyStore{Path: filepath.Join(cfg.DataDir, "keys", "master.key")}
	d.lockedKey = keyring.LockedKeyStore{Path: filepath.Join(cfg.DataDir, "keys", "master.key.locked")}
	d.spec.running = d.loadTuning()
	if d.listen, err = listenPlanFor(cfg.ListenAddr, "", d.advertiseFlag()); err != nil {
		return nil, err
	}
	if err := d.convergeRoleFiles(); err != nil {
		return nil, err
	}
	member, err := d.loadMember()
	if err != nil {
		return nil, err
	}
	left, err := d.leftWhileDown(ctx)
	if err != nil {
		return nil, err
	}
	if left && member != nil {
		clear(member.TLS.KeyPEM)
		member = nil
	}
	if member != nil {
		demoted, err := d.demotedWhileDown(ctx)
		if err != nil {
			return nil, err
		}
		if demoted {
			clear(member.TLS.KeyPEM)
			member = nil
		}
	}
	if err := d.loadWorker(); err != nil {
		return nil, err
	}
	if err := d.checkStoreKind(member != nil); err != nil {
		return nil, err
	}
	d.acfg = api.Config{
		Cluster:    clusterSource{d},
		Swarm:      d.swarmController(),
		Nodes:      clusterNodes{d},
		RemoteLogs: remoteLogs{d},
		Node:       api.Node{ID: d.nodeID, Addr: cfg.AdvertiseAddr},
		Version:    Version,
		APIVersion: api.MaxAPIVersion,
		Logger:     d.log,
		Backup:     newBackups(d),
	}
	if cfg.External != nil {
		d.acfg.Backup = externalBackups{}
	}
	d.bg, d.stopBG = context.WithCancel(context.Background())
	if cfg.Engine != nil {
		if d.engineCli, err = enginehost.NewClient(*cfg.Engine); err != nil {
			return nil, err
		}
		if err := d.connectEngine(ctx, &d.acfg); err != nil {
			return nil, err
		}
	}
	if err := d.openStore(ctx, member); err != nil {
		return nil, err
	}
	// A manager of a cluster serves once it has caught up with a quorum of
	// the others (or the external etcd answers). Without one (a
	// whole-cluster restart) it listens at once and activates when the
	// quorum comes (quorum.go).
	// A worker has no store to wait for (issue 9).
	needQuorum := (member != nil || cfg.External != nil) && d.worker == nil
	waiting := needQuorum && !d.readyWithin(ctx, quorumGrace)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if waiting {
		d.noQuorum.Store(true)
	} else if err := d.startServing(ctx, needQuorum); err != nil {
		return nil, err
	}
	if d.ln, err = listenUnix(cfg.Socket); err != nil {
		return nil, err
	}
	d.http = &http.Server{Handler: http.HandlerFunc(d.serveAPI), ReadHeaderTimeout: 30 * time.Second, ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)}
	// An open `docker events` would otherwise hold Shutdown for its whole
	// grace period.
	d.http.RegisterOnShutdown(func() { d.currentEvents().CloseSubscriptions() })
	go func() {
		if err := d.http.Serve(d.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.errc <- fmt.Errorf("api server: %w", err)
		}
	}()
	if waiting {
		d.serveOnQuorum()
	}
	d.startSync()
	d.log.Info("hushd serving", "socket", cfg.Socket, "version", Version, "state", d.State())
	return d, nil
}

func (d *Daemon) runBG(fn func(context.Context), ctx context.Context) {
	d.bgDone.Add(1)
	go func() {
		defer d.bgDone.Done()
		fn(ctx)
	}()
}

// connectEngine connects the host's engine: the pass-through for every
// call hush does not own, and what the agent needs to run this node's tasks
// once the cluster is active. An engine that does not answer yet is not
// fatal: secrets keep working, tasks wait as pending, and the agent retries.
func (d *Daemon) connectEngine(ctx context.Context, acfg *api.Config) error {
	host := *d.cfg.Engine
	d.netEngine = networks.NewEngineClient(d.engineCli)
	d.realiser = networks.NewRealiser(d.netEngine, d.log)
	d.proxy = proxy.New(host, host.Path, d.log)
	acfg.Fallback = d.proxy
	acfg.EngineEvents = d.proxy
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	v, err := d.proxy.Ping(pctx)
	cancel()
	if err != nil {
		d.log.Warn("Docker Engine not reachable; tasks will wait for it", "engine", host.String(), "err", err)
	} else if v != "" && api.CompareVersions(v, api.MaxAPIVersion) < 0 {
		// The CLI uses the version we advertise for every call, and calls
		// we pass through must be ones the engine accepts.
		acfg.APIVersion = v
	}
	eng := engine.New(d.engineCli, d.log)
	d.engine = eng
	acfg.Logs = eng
	acfg.Engine = eng
	ictx, icancel := context.WithTimeout(ctx, 3*time.Second)
	if info, err := eng.Info(ictx); err == nil {
		acfg.EngineVersion, acfg.MemoryBytes = info.ServerVersion, info.MemTotal
		acfg.EngineLabels = info.Labels
		d.engineLabels = info.Labels
		d.engineMemory = info.MemTotal
		d.engineVersion = info.ServerVersion
	}
	icancel()
	dir := d.cfg.SecretsDir
	if dir == "" {
		dir = filepath.Join("/run/hush", d.nodeID)
	}
	if d.fs, err = secretfs.NewManager(dir, d.log); err != nil {
		return fmt.Errorf("secrets tmpfs: %w", err)
	}
	d.tasksDir = dir
	return nil
}

// Err reports a fatal failure of a part of the daemon.
func (d *Daemon) Err() <-chan error { return d.errc }

// NodeID is this node's ID.
func (d *Daemon) NodeID() string { return d.nodeID }

// Close stops serving, waits up to 10 s for requests in flight, then closes
// the store (which flushes etcd) and releases the data dir.
func (d *Daemon) Close() {
	d.closeOnce.Do(func() {
		d.lifeStop()
		d.mu.Lock()
		d.closing = true
		stop := d.quorumStop
		d.mu.Unlock()
		if stop != nil {
			stop()
			d.quorumDone.Wait()
		}
		if d.syncStop != nil {
			d.syncStop()
			d.syncDone.Wait()
		}
		d.mu.Lock()
		d.promoting.destroy()
		d.promoting = nil
		d.mu.Unlock()
		if d.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = d.http.Shutdown(ctx)
			cancel()
		}
		// Before the store closes: its handlers read it.
		d.mu.Lock()
		d.stopJoinServiceLocked()
		d.releaseDispatchLocked()
		d.mu.Unlock()
		if d.proxy != nil {
			// Shutdown does not end hijacked or endless streams.
			_ = d.proxy.Close()
		}
		if d.ln != nil {
			_ = os.Remove(d.cfg.Socket)
		}
		d.stopRuntime()
		if d.stopBG != nil {
			d.stopBG()
			d.bgDone.Wait()
		}
		if d.engineCli != nil {
			_ = d.engineCli.Close()
		}
		if d.cfs != nil {
			_ = os.Remove(d.cfs.Root())
		}
		if d.fs != nil {
			// Only succeeds when no task mount is left, which is the point:
			// mounts of running containers must outlive hushd.
			_ = os.Remove(d.fs.Root())
		}
		if d.store != nil {
			if err := d.store.Close(); err != nil {
				d.log.Warn("closing store", "err", err)
			}
		}
		if d.lock != nil {
			_ = d.lock.Close()
		}
	})
}

// curStore is the store for a caller that does not hold mu and that no
// store swap waits for: taken once per request, it stays safe to use. A
// leave, a role change, a force-new-cluster or an unlock may close it
// meanwhile (and open another): its calls then fail with an unavailable
// error (errdefs.ErrUnavailable, the client's 503), as any call in flight
// when the store closes, rather than racing with the swap.
func (d *Daemon) curStore() *store.Store { return d.cur.Load() }

type clusterSource struct{ d *Daemon }

func (c clusterSource) Cluster(ctx context.Context) (cluster.Cluster, error) {
	return cluster.Get(ctx, c.d.curStore())
}

// lockDataDir takes an exclusive lock so a second hushd on the same data dir
// fails at once with a clear message instead of inside etcd.
func (d *Daemon) lockDataDir() error {
	f, err := os.OpenFile(filepath.Join(d.cfg.DataDir, "hushd.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("data dir %s is in use by another hushd", d.cfg.DataDir)
	}
	d.lock = f
	return nil
}

func loadOrCreateNodeID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		var ns nodeState
		if err := json.Unmarshal(b, &ns); err != nil || !identity.Valid(ns.NodeID) {
			return "", fmt.Errorf("node state %s is corrupt", path)
		}
		return ns.NodeID, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("node state: %w", err)
	}
	id, err := identity.NewID()
	if err != nil {
		return "", err
	}
	b, _ = json.Marshal(nodeState{NodeID: id})
	if err := writeFileSync(path, b, 0o600); err != nil {
		return "", fmt.Errorf("node state: %w", err)
	}
	return id, nil
}

// writeFileSync writes a file durably: temp file, fsync, rename, fsync dir.
func writeFileSync(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// listenUnix listens on path with mode 0660. A leftover socket from a crash
// is replaced; a live one (another daemon answering) is not.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is in use", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// The socket is made in a fresh 0700 directory beside its path, given
	// mode 0660 there, and renamed into place: it is never reachable with
	// a wider mode. (A umask would do it too, but the umask is the
	// process's: a directory made by another goroutine meanwhile would get
	// the socket's mode.)
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".s")
	if err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	tp := filepath.Join(tmp, "s")
	ln, err := net.Listen("unix", tp)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tp, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return &socketListener{UnixListener: ul, path: path}, nil
}

// socketListener removes its socket file when closed, as a listener that
// made the file at its own path does.
type socketListener struct {
	*net.UnixListener
	path string
}

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}
