package daemon

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/dispatchnet"
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

// presenceRunner returns the runtime part that keeps this manager's
// presence: its lease, its own claim, and a claim for each node that
// heartbeats its dispatcher. The lease's TTL follows the heartbeat period
// at activation (a period changed later applies from the next start).
func (d *Daemon) presenceRunner() (func(context.Context), error) {
	p, err := d.store.NewPresence(d.nodeID, leaseBeats*d.livePeriod(), d.log)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) {
		done := make(chan struct{})
		go func() { defer close(done); p.Run(ctx) }()
		defer func() { <-done }()
		if err := p.Claim(ctx, d.nodeID); err != nil {
			d.log.Debug("presence: own claim", "err", err)
		}
		for {
			d.vouch(ctx, p)
			select {
			case <-ctx.Done():
				return
			case <-time.After(min(max(d.livePeriod()/2, 100*time.Millisecond), time.Second)):
			}
		}
	}, nil
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

// runLiveness runs the heartbeat-expiry loop while l (the orchestrator's
// leadership) holds.
func (d *Daemon) runLiveness(ctx context.Context, l *store.Leadership) {
	nodes.RunLiveness(ctx, nodes.LivenessConfig{Store: d.store, Leadership: l, Period: d.livePeriod, Logger: d.log})
}

// recordDescription records what a remote node said of itself as it
// opened its dispatcher session.
func (d *Daemon) recordDescription(ctx context.Context, nodeID string, desc dispatchnet.Description) error {
	return nodes.SetDescription(ctx, d.store, nodeID, nodes.Description{OS: desc.OS, Arch: desc.Arch,
		EngineVersion: desc.EngineVersion, EngineLabels: desc.EngineLabels, NanoCPUs: desc.NanoCPUs, MemoryBytes: desc.MemoryBytes})
}

// selfDescription is this node as its engine describes it.
func (d *Daemon) selfDescription() dispatchnet.Description {
	return dispatchnet.Description{OS: runtime.GOOS, Arch: runtime.GOARCH, EngineVersion: d.engineVersion,
		NanoCPUs: int64(runtime.NumCPU()) * 1e9, MemoryBytes: d.engineMemory, EngineLabels: labelMap(d.engineLabels)}
}

// managerDispatchAddrs lists the dispatcher addresses of the cluster's
// managers (from their recorded join/CA addresses), this one first.
func (d *Daemon) managerDispatchAddrs(ctx context.Context) []string {
	recs, err := nodes.List(ctx, d.store)
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
	return d.recordDescription(ctx, d.nodeID, d.selfDescription())
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
