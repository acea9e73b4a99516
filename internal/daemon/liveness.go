package daemon

import (
	"context"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/dispatchnet"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// Liveness across managers (docs/DESIGN.md, "Liveness (issue 9)"): each
// manager vouches, under its own etcd lease, for itself and for the nodes
// whose dispatcher sessions it hears heartbeats from; the orchestrator's
// leader turns those claims into node status.

// Multipliers of the heartbeat period.
const (
	// leaseBeats is a manager's presence lease: a manager that stops
	// renewing it (crashed, stalled, in a minority) stops vouching for
	// anything this many periods later.
	leaseBeats = 3
	// releaseBeats: a manager withdraws its claim on a node that sent it
	// no heartbeat for this many periods.
	releaseBeats = 2
)

// livePeriod is the heartbeat period liveness works with.
func (d *Daemon) livePeriod() time.Duration {
	if p := d.heartbeatPeriod(); p > 0 {
		return p
	}
	return dispatchnet.DefaultHeartbeatPeriod
}

// freshBeats: a manager whose lease the quorum has not renewed for this
// many heartbeat periods (renewals come every period: TTL/3) takes itself
// for cut off, and its dispatcher refuses heartbeats and sessions, so that
// its workers move to a manager whose claims the others see.
const freshBeats = 2

// vouching is nil while this manager's presence lease is renewed.
func (k *presenceKeeper) vouching() error {
	if p := k.current(); p != nil && p.Fresh(freshBeats*k.d.livePeriod()) {
		return nil
	}
	return errdefs.Unavailable("this manager cannot reach the managers' quorum to vouch for its nodes")
}

// presenceKeeper keeps a presence whose lease TTL follows the heartbeat
// period: when the period changes, a presence with the new TTL takes the
// claims over before the old one is revoked, so that no claim lapses.
type presenceKeeper struct {
	d   *Daemon
	mu  sync.Mutex
	cur *store.Presence
}

// current is the presence in use (nil before run starts one).
func (k *presenceKeeper) current() *store.Presence {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

type runningPresence struct {
	p      *store.Presence
	cancel context.CancelFunc
	done   chan struct{}
}

func (k *presenceKeeper) start(ctx context.Context) (*runningPresence, error) {
	d := k.d
	p, err := d.store.NewPresence(d.nodeID, leaseBeats*d.livePeriod(), d.log)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithCancel(ctx)
	r := &runningPresence{p: p, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); p.Run(pctx) }()
	// Claims made before the lease is granted are put with it.
	d.vouch(ctx, p)
	return r, nil
}

// use makes p the presence in use (see vouching).
func (k *presenceKeeper) use(p *store.Presence) {
	k.mu.Lock()
	k.cur = p
	k.mu.Unlock()
}

func (r *runningPresence) stop() { r.cancel(); <-r.done }

func (k *presenceKeeper) run(ctx context.Context) {
	d := k.d
	r, err := k.start(ctx)
	if err != nil {
		d.log.Error("presence not kept", "err", err)
		return
	}
	defer func() { r.stop() }()
	k.use(r.p)
	for {
		if ttl := leaseBeats * d.livePeriod(); (ttl+time.Second-1)/time.Second*time.Second != r.p.TTL() {
			if next, err := k.start(ctx); err == nil {
				// The new lease holds the claims before the old one goes
				// (bounded: without a quorum neither lease is renewed).
				deadline := time.Now().Add(5 * time.Second)
				for !next.p.Held() && time.Now().Before(deadline) && ctx.Err() == nil {
					time.Sleep(50 * time.Millisecond)
				}
				// In use (vouching) once it holds, not before: the old
				// lease vouches until then.
				k.use(next.p)
				r.stop()
				r = next
				d.log.Info("presence: lease follows the heartbeat period", "ttl", r.p.TTL())
			}
		}
		d.vouch(ctx, r.p)
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(max(d.livePeriod()/2, 100*time.Millisecond), time.Second)):
		}
	}
}

// vouch brings this manager's claims in line with the heartbeats it
// heard: claimed while heard within releaseBeats periods, released after.
func (d *Daemon) vouch(ctx context.Context, p *store.Presence) {
	heard := d.seen.Heard(time.Now().Add(-releaseBeats * d.livePeriod()))
	claimed := p.Claims()
	for _, id := range heard {
		if id != d.nodeID && !slices.Contains(claimed, id) {
			if err := p.Claim(ctx, id); err != nil {
				d.log.Debug("presence: claim", "node", id, "err", err)
			}
		}
	}
	for _, id := range claimed {
		if id == d.nodeID {
			// A lost claim of its own (a failed write) is put again.
			continue
		}
		if !slices.Contains(heard, id) {
			if err := p.Release(ctx, id); err != nil {
				d.log.Debug("presence: release", "node", id, "err", err)
			}
		}
	}
	if !slices.Contains(claimed, d.nodeID) {
		_ = p.Claim(ctx, d.nodeID)
	}
}

// readyWait bounds how long a session's open waits for its node to be
// recorded Ready (awaitReady), and so does the heartbeat period (the
// session's first heartbeat deadline runs meanwhile): past it, the
// session opens all the same.
const readyWait = 5 * time.Second

// awaitReady vouches for nodeID at once, as its dispatcher session opens,
// and waits (bounded by readyWait and ctx) until the orchestrator's leader
// has recorded it Ready: the node's join answers only then, as Swarm's
// does, and a node coming back is placed on at once. Without it, the
// claim waited for the vouch loop's next round and the status for the
// liveness loop's next pass, up to two seconds in all.
func (k *presenceKeeper) awaitReady(ctx context.Context, nodeID string) {
	d := k.d
	p := k.current()
	if p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, min(readyWait, d.livePeriod()))
	defer cancel()
	if err := p.Claim(ctx, nodeID); err != nil {
		d.log.Debug("presence: claim at session open", "node", nodeID, "err", err)
		return
	}
	if !d.awaitRecordedReady(ctx, nodeID) {
		d.log.Debug("node not recorded Ready as its session opened", "node", nodeID, "err", context.Cause(ctx))
	}
}

// awaitRecordedReady polls nodeID's record until the orchestrator's
// leader has recorded it Ready (true) or ctx ends (false).
func (d *Daemon) awaitRecordedReady(ctx context.Context, nodeID string) bool {
	for {
		n, err := nodes.Get(ctx, d.curStore(), nodeID)
		if err == nil && n.Status != nil && n.Status.State == swarm.NodeStateReady {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// runLiveness runs the heartbeat-expiry loop while l (the orchestrator's
// leadership) holds; a change of any claim runs a pass at once.
func (d *Daemon) runLiveness(ctx context.Context, l *store.Leadership) {
	ctx, cancel := context.WithCancel(ctx)
	wake := make(chan struct{}, 1)
	var watching sync.WaitGroup
	defer watching.Wait()
	defer cancel()
	watching.Go(func() {
		for ctx.Err() == nil {
			err := d.store.WatchPresence(ctx, func() {
				select {
				case wake <- struct{}{}:
				default:
				}
			})
			if ctx.Err() != nil {
				return
			}
			// Broken (no leader, a compaction): timed passes go on; the
			// watch comes back after a pause.
			d.log.Debug("presence watch ended", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	})
	nodes.RunLiveness(ctx, nodes.LivenessConfig{Store: d.store, Leadership: l, Period: d.livePeriod, Wake: wake, Logger: d.log})
}

// recordSession records, in one node record write at most, what a remote
// node's dispatcher session open told: the IP its connection came from
// (shown as a worker's Status.Addr, as Swarm's dispatcher records it) and
// what it said of itself (desc nil: nothing).
func (d *Daemon) recordSession(ctx context.Context, nodeID string, peer netip.Addr, desc *dispatchnet.Description) error {
	var nd *nodes.Description
	if desc != nil {
		nd = &nodes.Description{OS: desc.OS, Arch: desc.Arch, EngineVersion: desc.EngineVersion,
			EngineLabels: desc.EngineLabels, NanoCPUs: desc.NanoCPUs, MemoryBytes: desc.MemoryBytes}
	}
	return nodes.RecordSession(ctx, d.curStore(), nodeID, peer, nd)
}

// selfDescription is this node as its engine describes it.
func (d *Daemon) selfDescription() dispatchnet.Description {
	return dispatchnet.Description{OS: runtime.GOOS, Arch: runtime.GOARCH, EngineVersion: d.engineVersion,
		NanoCPUs: int64(runtime.NumCPU()) * 1e9, MemoryBytes: d.engineMemory, EngineLabels: labelMap(d.engineLabels)}
}

// managerDispatchAddrs lists the dispatcher addresses of the cluster's
// managers (from their recorded join/CA addresses), this one first.
func (d *Daemon) managerDispatchAddrs(ctx context.Context) []string {
	recs, err := nodes.List(ctx, d.curStore())
	if err != nil {
		d.log.Debug("listing managers for a worker", "err", err)
		return nil
	}
	var out []string
	if a, err := dispatchAddr(d.listen.Advertise); err == nil {
		out = append(out, a)
	}
	for _, n := range recs {
		if n.ID == d.nodeID || n.Spec.Role != swarm.NodeRoleManager || n.Addr == "" {
			continue
		}
		if a, err := dispatchAddr(n.Addr); err == nil && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// describeSelf records what this manager offers to placement on other
// managers' orchestrators: its platform, engine labels and resources.
func (d *Daemon) describeSelf(ctx context.Context) error {
	desc := d.selfDescription()
	// No address: a manager's Status.Addr is its advertised one.
	return d.recordSession(ctx, d.nodeID, netip.Addr{}, &desc)
}

// labelMap turns engine labels ("k=v") into a map.
func labelMap(labels []string) map[string]string {
	if len(labels) == 0 {
		return nil
	}
	m := make(map[string]string, len(labels))
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		m[k] = v
	}
	return m
}
