package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.uber.org/zap"
)

// ExternalConfig configures a Store on an etcd cluster the user runs.
type ExternalConfig struct {
	// Endpoints are the cluster's client URLs; https only.
	Endpoints []string
	// CAFile verifies the servers; CertFile and KeyFile are hush's client
	// certificate (etcd's --client-cert-auth). All three are required.
	CAFile, CertFile, KeyFile string
	// Prefix, when set, is put before every key hush writes (it must
	// start with "/" and not end with one), so several hush clusters can
	// share one etcd. Empty: keys start at /hush/v1/.
	Prefix string
	// Keys seals and opens every value (required).
	Keys Keys
	// Logger receives hush-side messages.
	Logger *slog.Logger
	// DialTimeout bounds one connection attempt and each readiness probe
	// (0: 5 s).
	DialTimeout time.Duration
}

// MaxExternalPrefix bounds ExternalConfig.Prefix.
const MaxExternalPrefix = 128

// CheckExternal validates c without reading a file or dialing: what a
// command line can be refused for at once.
func CheckExternal(c ExternalConfig) error {
	if len(c.Endpoints) == 0 {
		return errdefs.BadRequest("external etcd: no endpoint given")
	}
	for _, ep := range c.Endpoints {
		if err := checkEndpoint(ep); err != nil {
			return err
		}
	}
	for _, f := range []struct{ name, path string }{{"CA", c.CAFile}, {"client certificate", c.CertFile}, {"client key", c.KeyFile}} {
		if f.path == "" {
			return errdefs.BadRequest("external etcd: the %s file is required (hush talks to an external etcd only over mutual TLS)", f.name)
		}
	}
	return checkPrefix(c.Prefix)
}

// CheckExternalFiles reads c's TLS files as OpenExternal does: a command
// line naming a missing or unusable one is refused before anything is
// written.
func CheckExternalFiles(c ExternalConfig) error {
	_, err := externalTLS(c.CAFile, c.CertFile, c.KeyFile)
	return err
}

// checkEndpoint refuses anything but https://host:port. Plain http is
// refused even on loopback: every value is sealed, but keys, revisions,
// leases and sizes (the cluster's metadata) would cross in the clear, and
// one rule is easier to trust than one with an exception tests need.
func checkEndpoint(ep string) error {
	u, err := url.Parse(ep)
	if err != nil {
		return errdefs.BadRequest("external etcd: endpoint %q: must be https://host:port", ep)
	}
	switch {
	case u.Scheme == "http" || u.Scheme == "unix" || u.Scheme == "unixs":
		return errdefs.BadRequest("external etcd: endpoint %q: scheme %s refused, use https (hush sends its cluster's metadata over this connection)", ep, u.Scheme)
	case u.Scheme != "https":
		return errdefs.BadRequest("external etcd: endpoint %q: must be https://host:port", ep)
	case u.Hostname() == "" || u.Port() == "":
		return errdefs.BadRequest("external etcd: endpoint %q: must be https://host:port", ep)
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return errdefs.BadRequest("external etcd: endpoint %q: only https://host:port, without a path, query or user", ep)
	}
	return nil
}

func checkPrefix(p string) error {
	if p == "" {
		return nil
	}
	if len(p) > MaxExternalPrefix {
		return errdefs.BadRequest("external etcd: prefix longer than %d bytes", MaxExternalPrefix)
	}
	if !strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		return errdefs.BadRequest("external etcd: prefix %q must start with / and not end with one", p)
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/-_.", r)) {
			return errdefs.BadRequest("external etcd: prefix %q: only letters, digits and / - _ .", p)
		}
	}
	// Such a prefix puts hush's keys under the root of the cluster whose
	// prefix is what comes before it: that cluster's leave would erase
	// them, and its rewrites would try to open them.
	if strings.Contains(p+"/", root) {
		return errdefs.BadRequest("external etcd: prefix %q: must not contain %s (its keys would be inside another hush cluster's keys)", p, strings.TrimSuffix(root, "/"))
	}
	return nil
}

// OpenExternal returns a Store on an external etcd cluster. It checks the
// configuration and the TLS files and returns without waiting for the
// cluster: Ready closes after the first linearizable read succeeds, and
// until then, or whenever the cluster stops answering such reads for
// longer than DialTimeout, requests fail with ErrNoLeader's category.
//
// Membership, quorum, quota, compaction and defragmentation are the
// cluster's business: Members is nil, hush checks no quota of its own
// (etcd's NOSPACE maps to the store-full error), CompactAll compacts
// nothing and Snapshot refuses (it would copy keys that are not hush's).
func OpenExternal(ctx context.Context, c ExternalConfig) (*Store, error) {
	if err := CheckExternal(c); err != nil {
		return nil, err
	}
	if c.Keys == nil {
		return nil, errors.New("store: external etcd needs the keyring holder that seals its values")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	tc, err := externalTLS(c.CAFile, c.CertFile, c.KeyFile)
	if err != nil {
		return nil, err
	}
	// No DialTimeout: with one, New blocks until a connection is up, and
	// a cluster that is down at start is readiness's business, not an
	// error. No AutoSyncInterval: syncing would replace the user's
	// endpoints with the members' advertised URLs, which may be plain.
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            c.Endpoints,
		TLS:                  tc,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: c.DialTimeout,
		MaxCallSendMsgSize:   MaxRequestBytes + 64<<10,
		// The mirror loads every key in one read: the cluster's quota,
		// not the client, bounds a response.
		MaxCallRecvMsgSize: math.MaxInt32,
		Logger:             zap.NewNop(),
		Context:            context.WithoutCancel(ctx),
	})
	if err != nil {
		return nil, fmt.Errorf("store: external etcd client: %w", err)
	}
	if c.Prefix != "" {
		cli.KV = namespace.NewKV(cli.KV, c.Prefix)
		cli.Watcher = namespace.NewWatcher(cli.Watcher, c.Prefix)
		cli.Lease = namespace.NewLease(cli.Lease, c.Prefix)
	}
	raw := cli.KV
	s := newStore(cli, c.Logger, c.Keys)
	s.external = true
	h := newHealth()
	s.hasLeader = h.ok.Load
	ekv := externalKV{KV: raw, h: h, gate: &leaderGate{has: h.ok.Load, grace: c.DialTimeout}}
	cli.KV, s.awaitLeader = ekv, ekv.gate.await
	ready := make(chan struct{})
	s.ready = ready
	pctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		probeExternal(pctx, raw, c.DialTimeout, h, ready, c.Logger)
	}()
	s.closeFn = func() error {
		cancel()
		wg.Wait()
		err := cli.Close()
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		return err
	}
	c.Logger.Info("external etcd client started", "endpoints", strings.Join(c.Endpoints, ","), "prefix", c.Prefix)
	return s, nil
}

// externalProbeEvery is how often a healthy cluster is probed; an
// unhealthy one is probed again 200 ms after a probe fails, so service
// resumes soon after the cluster does.
const externalProbeEvery = time.Second

// probeExternal keeps healthy true while the cluster answers a
// linearizable read (which needs its leader and quorum) within timeout,
// and closes ready at the first answer.
func probeExternal(ctx context.Context, kv clientv3.KV, timeout time.Duration, h *health, ready chan struct{}, log *slog.Logger) {
	var once sync.Once
	var lastErr string
	for {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		_, err := kv.Get(pctx, root+"\x00revision-probe", clientv3.WithCountOnly())
		cancel()
		if ctx.Err() != nil {
			return
		}
		wait := externalProbeEvery
		if err == nil {
			if !h.set(true) && lastErr != "" {
				log.Info("external etcd answers again")
			}
			lastErr = ""
			once.Do(func() { close(ready) })
		} else {
			h.set(false)
			// A refused connection fails at once: wait a little anyway.
			wait = 200 * time.Millisecond
			if msg := err.Error(); msg != lastErr {
				log.Warn("external etcd does not answer a linearizable read", "err", err)
				lastErr = msg
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// health is what the prober last saw. Requests in flight when it turns
// bad are cancelled: the client waits for a connection until the caller's
// deadline, which may be far or absent, and the answer is known already.
type health struct {
	ok   atomic.Bool
	mu   sync.Mutex
	lost context.Context // cancelled when ok turns false
	lose context.CancelFunc
}

func newHealth() *health {
	h := &health{}
	h.lost, h.lose = context.WithCancel(context.Background())
	return h
}

// set records a probe's result and returns the previous one.
func (h *health) set(ok bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	was := h.ok.Swap(ok)
	switch {
	case was && !ok:
		h.lose()
	case !was && ok:
		h.lose()
		h.lost, h.lose = context.WithCancel(context.Background())
	}
	return was
}

// bind returns ctx, also cancelled if the cluster is lost meanwhile, and a
// function that maps the call's error once it has returned.
func (h *health) bind(ctx context.Context) (context.Context, func(error) error) {
	h.mu.Lock()
	lost := h.lost
	h.mu.Unlock()
	cctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(lost, func() { cancel(errNoLeaderHere) })
	return cctx, func(err error) error {
		stop()
		lostHere := context.Cause(cctx) == errNoLeaderHere && ctx.Err() == nil
		cancel(nil)
		if err != nil && lostHere {
			return errNoLeaderHere
		}
		return err
	}
}

// externalKV is leaderKV for an external cluster: a request waits (up to
// the dial timeout) for a healthy cluster, fails at once past it, and is
// cut short if the cluster is lost while it runs.
type externalKV struct {
	clientv3.KV
	h    *health
	gate *leaderGate
}

func (k externalKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if !k.gate.await(ctx) {
		return nil, errNoLeaderHere
	}
	cctx, done := k.h.bind(ctx)
	r, err := k.KV.Put(cctx, key, val, opts...)
	return r, done(err)
}

func (k externalKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if !k.gate.await(ctx) {
		return nil, errNoLeaderHere
	}
	cctx, done := k.h.bind(ctx)
	r, err := k.KV.Get(cctx, key, opts...)
	return r, done(err)
}

func (k externalKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	if !k.gate.await(ctx) {
		return nil, errNoLeaderHere
	}
	cctx, done := k.h.bind(ctx)
	r, err := k.KV.Delete(cctx, key, opts...)
	return r, done(err)
}

func (k externalKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	if !k.gate.await(ctx) {
		return nil, errNoLeaderHere
	}
	cctx, done := k.h.bind(ctx)
	r, err := k.KV.Compact(cctx, rev, opts...)
	return r, done(err)
}

func (k externalKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	if !k.gate.await(ctx) {
		return clientv3.OpResponse{}, errNoLeaderHere
	}
	cctx, done := k.h.bind(ctx)
	r, err := k.KV.Do(cctx, op)
	return r, done(err)
}

// Txn is built on Commit, where the request is made: that is where it
// waits for a healthy cluster and where its context is bound.
func (k externalKV) Txn(ctx context.Context) clientv3.Txn {
	return &externalTxn{k: k, ctx: ctx}
}

type externalTxn struct {
	k                externalKV
	ctx              context.Context
	cmps             []clientv3.Cmp
	thenOps, elseOps []clientv3.Op
}

func (t *externalTxn) If(c ...clientv3.Cmp) clientv3.Txn {
	t.cmps = append(t.cmps, c...)
	return t
}

func (t *externalTxn) Then(o ...clientv3.Op) clientv3.Txn {
	t.thenOps = append(t.thenOps, o...)
	return t
}

func (t *externalTxn) Else(o ...clientv3.Op) clientv3.Txn {
	t.elseOps = append(t.elseOps, o...)
	return t
}

func (t *externalTxn) Commit() (*clientv3.TxnResponse, error) {
	if !t.k.gate.await(t.ctx) {
		return nil, errNoLeaderHere
	}
	cctx, done := t.k.h.bind(t.ctx)
	r, err := t.k.KV.Txn(cctx).If(t.cmps...).Then(t.thenOps...).Else(t.elseOps...).Commit()
	return r, done(err)
}

// externalTLS reads the CA once and checks the key pair, then reads the
// pair again at each handshake, so a renewed certificate (an operator or
// cert-manager replacing the files) is used from the next connection on.
func externalTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, errdefs.BadRequest("external etcd: CA file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errdefs.BadRequest("external etcd: CA file %s holds no PEM certificate", caFile)
	}
	load := func() (*tls.Certificate, error) {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			// The error names the files, never their contents.
			return nil, fmt.Errorf("external etcd: client key pair: %w", err)
		}
		return &pair, nil
	}
	if _, err := load(); err != nil {
		return nil, errdefs.BadRequest("%v", err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return load()
		},
	}, nil
}

// errTooLarge is an object that etcd refused for its request size limit:
// only an external cluster run with a lower --max-request-bytes than
// hush's own members use can refuse one (API bodies are bounded below).
var errTooLarge = fmt.Errorf("store: %w", errdefs.BadRequest(
	"the object is larger than the cluster store accepts in one request: the external etcd must run with --max-request-bytes of at least %d", MaxRequestBytes))

func isTooLarge(err error) bool {
	if errors.Is(err, rpctypes.ErrGRPCRequestTooLarge) || errors.Is(err, rpctypes.ErrRequestTooLarge) ||
		rpctypes.ErrorDesc(err) == rpctypes.ErrRequestTooLarge.Error() {
		return true
	}
	// Past etcd's limit plus its gRPC allowance, gRPC refuses the message
	// before etcd sees it.
	// (ResourceExhausted, "… message larger than max …").
	return strings.Contains(rpctypes.ErrorDesc(err), "message larger than max")
}

// errExternalSnapshot refuses a snapshot of an external cluster.
var errExternalSnapshot = errdefs.BadRequest("backup is not supported with an external etcd: etcd's snapshot would copy every key of that cluster, not only hush's; back the cluster up with its own tools (etcdctl snapshot save) and keep hush's data dir (its keys)")
