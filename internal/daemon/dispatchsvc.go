package daemon

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/dispatchnet"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/dispatcher"
	"github.com/hush-secrets/hush/internal/pki"
)

// dispatchPortOffset places a manager's dispatcher port after the join/CA
// service's (port) and etcd's peer port (port+1). A separate port keeps
// the join service free of client certificates: on this one every
// connection must show a certificate of the cluster before any byte of
// HTTP.
const dispatchPortOffset = 2

// dispatchAddr is the dispatcher address of a manager whose join/CA
// service is at hostPort.
func dispatchAddr(hostPort string) (string, error) {
	h, p, err := net.SplitHostPort(hostPort)
	if err != nil {
		return "", fmt.Errorf("manager address %q: %w", hostPort, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n <= 0 || n+dispatchPortOffset > 65535 {
		return "", fmt.Errorf("manager address %q: bad port", hostPort)
	}
	return net.JoinHostPort(h, strconv.Itoa(n+dispatchPortOffset)), nil
}

// heartbeatPeriod is the cluster's Dispatcher.HeartbeatPeriod as last
// settled (0 before: the transport's default).
func (d *Daemon) heartbeatPeriod() time.Duration {
	return time.Duration(d.spec.heartbeat.Load())
}

// readClusterRoots is the trust of the cluster's CA record.
func (d *Daemon) readClusterRoots() (*x509.CertPool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := cluster.Get(ctx, d.curStore())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(c.CACert))
	return pool, nil
}

// newRootsCache returns the roots a listener's handshakes verify client
// certificates under (rootsCache.roots), read from the cluster's CA
// record at most once per rootsTTL.
func (d *Daemon) newRootsCache() *rootsCache {
	return &rootsCache{ttl: rootsTTL, now: time.Now, read: d.readClusterRoots, log: d.log}
}

// rootsTTL is how long the roots read last serve handshakes: a rotated
// root is trusted (and a dropped one refused) within it.
const rootsTTL = time.Second

// rootsCache serves the cluster's roots to TLS handshakes. They are asked
// for as each ClientHello arrives, before the client shows anything, so a
// read per handshake let anyone who reaches the port make the manager
// read the store (a linearizable etcd read, a decryption) at will; they
// are read at most once per ttl instead, one read at a time.
type rootsCache struct {
	ttl  time.Duration
	now  func() time.Time
	read func() (*x509.CertPool, error)
	log  *slog.Logger

	mu    sync.Mutex
	pool  *x509.CertPool
	at    time.Time
	valid bool
}

// roots returns the roots; an unreadable record trusts nothing (the
// handshakes fail) until the next read.
func (c *rootsCache) roots() *x509.CertPool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.valid && c.now().Sub(c.at) < c.ttl {
		return c.pool
	}
	pool, err := c.read()
	if err != nil {
		if c.log != nil {
			c.log.Warn("reading the cluster's CA for TLS", "err", err)
		}
		pool = x509.NewCertPool()
	}
	c.pool, c.at, c.valid = pool, c.now(), true
	return pool
}

// dispatcherServer returns the runtime part that serves the dispatcher to
// remote nodes on listen port + 2 while the runtime runs. The caller
// holds d.mu; nil when this manager has no listen address. presence
// (nil: none kept, the node always vouching) refuses sessions and
// heartbeats while this manager cannot vouch for the nodes it hears (see
// presenceKeeper.vouching), and vouches for a node at once as its session
// opens (presenceKeeper.awaitReady).
func (d *Daemon) dispatcherServer(disp *dispatcher.Dispatcher, clusterID string, presence *presenceKeeper) (func(context.Context), error) {
	if d.member == nil || !d.listen.enabled() {
		return nil, nil
	}
	params := pki.TLSParams{ClusterID: clusterID, Cert: d.currentCert, Roots: d.newRootsCache().roots}
	tcfg, err := params.ServerConfig()
	if err != nil {
		return nil, err
	}
	addr, err := dispatchAddr(d.listen.Listen)
	if err != nil {
		return nil, err
	}
	ln := d.takeDispatchLocked(addr)
	if ln == nil {
		if ln, err = net.Listen("tcp", addr); err != nil {
			// A restart (init, join and a first listen bound it first):
			// the manager serves the cluster and retries the port.
			d.noteDispatchProblem(addr, err)
		}
	}
	var vouching func() error
	var awaitReady func(context.Context, string)
	if presence != nil {
		vouching, awaitReady = presence.vouching, presence.awaitReady
	}
	h := dispatchnet.NewHandler(dispatchnet.ServerConfig{
		ClusterID: clusterID, Dispatcher: dispatchnet.FromDispatcher(disp),
		Heartbeats: &d.seen, HeartbeatPeriod: d.heartbeatPeriod, Logger: d.log,
		Describe: d.recordSession, Managers: d.managerDispatchAddrs,
		Refuse: d.refuseNode, RefuseManager: d.refuseManagerCert, RefuseWorker: d.refuseWorkerCert, Vouching: vouching, AwaitReady: awaitReady,
		LocalNode: d.nodeID, LocalLogs: d.localTaskLogs,
	})
	srv := dispatchnet.NewServer(h, tcfg)
	rt := &dispatchRuntime{h: h, relay: dispatchnet.NewRelayer(params.ClientConfig, d.log)}
	return func(ctx context.Context) {
		defer rt.relay.Close()
		if ln == nil {
			if ln = d.retryDispatchPort(ctx, addr); ln == nil {
				return
			}
		}
		d.log.Info("dispatcher listening", "addr", addr)
		d.dispatch.Store(rt)
		defer d.dispatch.CompareAndSwap(rt, nil)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("dispatcher stopped", "err", err)
			}
		}()
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// Sessions are endless streams: Shutdown waits for none of them.
		_ = srv.Close()
		_ = srv.Shutdown(sctx)
		<-done
	}, nil
}

// dispatchRuntime is the dispatcher server while it serves: its handler
// (the sessions of the nodes connected to this manager) and the relayer
// that asks the other managers for logs of nodes connected to them.
type dispatchRuntime struct {
	h     *dispatchnet.Handler
	relay *dispatchnet.Relayer
}

// localTaskLogs serves another manager's relayed request for the logs of
// a task of this manager's own node, from its agent (which refuses a task
// not assigned to it).
func (d *Daemon) localTaskLogs(ctx context.Context, taskID string, o agent.LogOptions) (io.ReadCloser, error) {
	a := d.localAgent.Load()
	if a == nil {
		return nil, errdefs.Unavailable("this manager runs no agent: the logs of its tasks are not reachable")
	}
	return a.TaskLogs(ctx, taskID, o)
}
