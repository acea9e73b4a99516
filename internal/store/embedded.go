package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// EmbeddedConfig configures a single embedded etcd member.
type EmbeddedConfig struct {
	// Dir holds the member's WAL and snapshots; created 0700.
	Dir string
	// Name is the member name; stable across restarts.
	Name string
	// Logger receives hush-side messages; etcd's own log goes to EtcdLog.
	Logger *slog.Logger
	// EtcdLogLevel is etcd's zap level: "debug", "info", "warn" or "error".
	EtcdLogLevel string
	// QuotaBytes is etcd's backend quota (0: DefaultQuotaBytes). hush
	// refuses writes somewhat below it (see quota.go).
	QuotaBytes int64
	// StartTimeout bounds how long Open waits for the member to be ready.
	StartTimeout time.Duration
	// Keys seals and opens every value (required).
	Keys Keys
	// Tuning is the cluster spec's raft settings; zero fields keep etcd's
	// defaults (DefaultClusterTuning's timing for a cluster member).
	Tuning Tuning
	// Member makes this member one of a cluster of managers; nil keeps a
	// lone member without sockets.
	Member *MemberConfig
}

// Tuning is the part of etcd's raft configuration a cluster spec sets
// (see cluster.EtcdTuningFor). etcd reads it at start only.
type Tuning struct {
	SnapshotCount          uint64        `json:"snapshotCount,omitempty"`
	MaxSnapFiles           uint          `json:"maxSnapFiles,omitempty"`
	SnapshotCatchUpEntries uint64        `json:"snapshotCatchUpEntries,omitempty"`
	Heartbeat              time.Duration `json:"heartbeat,omitempty"`
	ElectionTimeout        time.Duration `json:"electionTimeout,omitempty"`
}

func (t Tuning) apply(cfg *embed.Config) {
	if t.SnapshotCount != 0 {
		cfg.SnapshotCount = t.SnapshotCount
	}
	if t.MaxSnapFiles != 0 {
		cfg.MaxSnapFiles = t.MaxSnapFiles
	}
	if t.SnapshotCatchUpEntries != 0 {
		cfg.SnapshotCatchUpEntries = t.SnapshotCatchUpEntries
	}
	if t.Heartbeat != 0 && t.ElectionTimeout != 0 {
		cfg.TickMs = uint(t.Heartbeat / time.Millisecond)
		cfg.ElectionMs = uint(t.ElectionTimeout / time.Millisecond)
	}
}

// MaxRequestBytes is the embedded member's request limit. The largest
// record is a config of just under 1000 KiB: its data sealed and base64'd
// inside the record (about 1.34 MiB), plus labels, the whole sealed again in
// binary form (about 100 bytes more, no second base64). API bodies are
// capped at 2 MiB, so no record exceeds 2 MiB by more than its envelope;
// etcd's default (1.5 MiB) would refuse a config with large labels.
const MaxRequestBytes = 3 << 20

// OpenEmbedded starts an embedded etcd member and returns a Store that talks
// to it in-process, without sockets.
//
// The member listens on no client or peer socket: a single member needs
// none, and an unexposed store cannot be reached around hushd's access
// checks. The advertised peer URL is only used to derive the member ID.
func OpenEmbedded(ctx context.Context, c EmbeddedConfig) (*Store, error) {
	if c.Dir == "" || c.Name == "" {
		return nil, errors.New("store: embedded etcd needs a directory and a name")
	}
	if c.Keys == nil {
		return nil, errors.New("store: embedded etcd needs the keyring holder that seals its values")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 60 * time.Second
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: create %s: %w", c.Dir, err)
	}

	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = filepath.Clean(c.Dir)
	peer, _ := url.Parse(embeddedPeerURL)
	cfg.ListenPeerUrls = nil
	cfg.ListenClientUrls = nil
	cfg.ListenClientHttpUrls = nil
	cfg.ListenMetricsUrls = nil
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.AdvertiseClientUrls = nil
	cfg.InitialCluster = c.Name + "=" + peer.String()
	cfg.InitialClusterToken = "hush-" + c.Name
	// Old revisions are only needed for watches that lag; an hour bounds the
	// backend's growth without surprising a slow watcher.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "1h"
	cfg.MaxRequestBytes = MaxRequestBytes
	if c.QuotaBytes <= 0 {
		c.QuotaBytes = DefaultQuotaBytes
	}
	cfg.QuotaBackendBytes = c.QuotaBytes
	lvl, err := zapcore.ParseLevel(orDefault(c.EtcdLogLevel, "warn"))
	if err != nil {
		return nil, fmt.Errorf("store: etcd log level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.OutputPaths = []string{"stderr"}
	zc.ErrorOutputPaths = []string{"stderr"}
	zl, err := zc.Build()
	if err != nil {
		return nil, fmt.Errorf("store: etcd logger: %w", err)
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	var files memfds
	if c.Member != nil {
		if c.Tuning.Heartbeat == 0 || c.Tuning.ElectionTimeout == 0 {
			c.Tuning.Heartbeat, c.Tuning.ElectionTimeout = DefaultClusterTuning.Heartbeat, DefaultClusterTuning.ElectionTimeout
		}
		if files, err = c.Member.configure(cfg, c.Name); err != nil {
			return nil, err
		}
	}
	c.Tuning.apply(cfg)
	if c.Member != nil {
		// etcd reads its timing at start only: the line says what this
		// run of the member keeps until the next.
		c.Logger.Info("etcd member raft timing", "heartbeat", time.Duration(cfg.TickMs)*time.Millisecond,
			"electionTimeout", time.Duration(cfg.ElectionMs)*time.Millisecond)
	}

	e, err := startEtcd(ctx, cfg, c.StartTimeout)
	if err != nil {
		files.close()
		return nil, err
	}
	ready := e.Server.ReadyNotify()
	// A lone member is its own quorum: it is ready within the start
	// timeout or broken. A cluster member needs a quorum to be ready, and
	// the others may be down (a whole-cluster restart): Open returns at
	// once and the caller watches Ready, serving "no leader" meanwhile.
	if c.Member == nil {
		if err := waitReady(ctx, e, c.StartTimeout); err != nil {
			e.Close()
			return nil, err
		}
	}
	cli := v3client.New(e.Server)
	s := newStore(cli, c.Logger, c.Keys)
	s.errc = e.Err()
	s.ready = ready
	if c.Member != nil {
		s.hasLeader = func() bool { return e.Server.Leader() != 0 }
		// Two election timeouts: a follower sees no leader from its own
		// timeout until another's (up to one more) and the vote after it.
		lkv := newLeaderKV(cli.KV, s.hasLeader, 2*c.Tuning.ElectionTimeout, e.Server.LeaderChangedNotify)
		cli.KV, s.awaitLeader = lkv, lkv.gate.await
		t := c.Member.TLS
		s.members = &Members{s: s, srv: e.Server, files: files,
			tls: MemberTLS{CertPEM: slices.Clone(t.CertPEM), KeyPEM: slices.Clone(t.KeyPEM), CAPEM: slices.Clone(t.CAPEM), Name: t.Name}}
	}
	// Outermost: a request refused or ended by the close waits for no
	// leader.
	ckv := newClosingKV(cli.KV, e.Server.StoppingNotify())
	cli.KV = ckv
	// The in-process client's Defragment needs an auth layer the
	// in-process server lacks; the backend itself can. Through the gate,
	// as the quota's commits: on a stopped server's backend etcd ends the
	// process.
	s.defrag = func() error { return ckv.gate.call(func() error { return e.Server.Backend().Defrag() }) }
	s.quota = newQuota(c.QuotaBytes, func() backend { return e.Server.Backend() }, func() bool {
		for _, a := range e.Server.Alarms() {
			if a.Alarm == etcdserverpb.AlarmType_NOSPACE {
				return true
			}
		}
		return false
	}, uint64(e.Server.MemberID()), c.Logger)
	s.quota.guard = ckv.gate.call
	// A store left full (by a write burst or an older hushd) gets its room
	// back now if deletes or old revisions freed some; otherwise writes
	// are refused with the quota's text and deletes still work.
	if c.Member == nil && s.quota.alarmRaised() {
		c.Logger.Warn("store quota alarm raised: reclaiming space", "quota", c.QuotaBytes)
		s.quota.reclaim(ctx, cli)
	}
	qctx, qcancel := context.WithCancel(context.Background())
	qdone := make(chan struct{})
	go func() {
		defer close(qdone)
		if c.Member != nil {
			// Reclaiming writes: it waits for a quorum, off Open's path.
			select {
			case <-ready:
			case <-qctx.Done():
				return
			}
			if s.quota.alarmRaised() {
				c.Logger.Warn("store quota alarm raised: reclaiming space", "quota", c.QuotaBytes)
				s.quota.reclaim(qctx, cli)
			}
		}
		s.quota.run(qctx, cli)
	}()
	s.closeFn = func() error {
		qcancel()
		<-qdone
		// Before the server stops: no request reads its backend then.
		ckv.gate.close()
		// Close the client before the server, as etcd's embed examples do,
		// so no request is in flight while the server shuts down.
		err := cli.Close()
		e.Close()
		files.close()
		if s.members != nil {
			s.members.mu.Lock()
			clear(s.members.tls.KeyPEM)
			s.members.mu.Unlock()
		}
		// The in-process client reports its own cancellation as an error.
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		return err
	}
	c.Logger.Info("embedded etcd ready", "dir", cfg.Dir, "member", e.Server.MemberID().String())
	return s, nil
}

// startEtcd starts the member, bounded by timeout: etcd's own start only
// opens the backend and the listeners, which need no other member.
func startEtcd(ctx context.Context, cfg *embed.Config, timeout time.Duration) (*embed.Etcd, error) {
	type result struct {
		e   *embed.Etcd
		err error
	}
	done := make(chan result, 1)
	go func() {
		e, err := embed.StartEtcd(cfg)
		done <- result{e, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("store: start etcd: %w", r.err)
		}
		return r.e, nil
	case <-timer.C:
	case <-ctx.Done():
	}
	// Abandoned: close whatever the start yields once it returns.
	go func() {
		if r := <-done; r.e != nil {
			r.e.Close()
		}
	}()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, errors.New("store: etcd did not start in time")
}

func waitReady(ctx context.Context, e *embed.Etcd, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("store: etcd failed while starting: %w", err)
	case <-timer.C:
		return errors.New("store: etcd did not become ready in time")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
