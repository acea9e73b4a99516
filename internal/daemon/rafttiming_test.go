package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// A manager's etcd runs with the cluster spec's raft timing from its first
// start as a member, not only from its next: the first manager (init with a
// listen address, the default spec or one that sets the ticks) and a
// manager joining it, which gets the spec in the join answer. The timing is
// read from the running etcd's own configuration (no timed assertion).
func TestMemberFirstStartRaftTiming(t *testing.T) {
	cases := []struct {
		name                string
		raft                *swarm.RaftConfig // nil: auto-init, default spec
		heartbeat, election time.Duration
	}{
		{name: "default spec", heartbeat: 100 * time.Millisecond, election: time.Second},
		{name: "spec ticks", raft: &swarm.RaftConfig{HeartbeatTick: 2, ElectionTick: 20}, heartbeat: 200 * time.Millisecond, election: 2 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			first := &clusterNode{cfg: Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync, NoInit: tc.raft != nil}}
			first.d = startWith(t, first.cfg)
			if tc.raft != nil {
				req := swarm.InitRequest{ListenAddr: first.cfg.ListenAddr}
				req.Spec.Raft = *tc.raft
				if _, err := first.d.InitWithKey(ctx, req, nil); err != nil {
					t.Fatal(err)
				}
			}
			check := func(who string, d *Daemon) {
				t.Helper()
				hb, el := d.store.Members().Timing()
				if hb != tc.heartbeat || el != tc.election {
					t.Fatalf("%s's etcd runs with heartbeat %v, election %v; want %v, %v", who, hb, el, tc.heartbeat, tc.election)
				}
				// The next start reads the same from the file.
				if got := d.loadTuning(); got.Heartbeat != tc.heartbeat || got.ElectionTimeout != tc.election {
					t.Fatalf("%s keeps %+v for its next start", who, got)
				}
			}
			check("the first manager", first.d)
			joiner := joinManager(t, ctx, first)
			check("the joined manager", joiner.d)
		})
	}
}

// An unknown spec (a promoted worker's) starts the member on the default
// spec's timing, and a stale file of an earlier cluster is replaced.
func TestStartWithSpecTuning(t *testing.T) {
	d := specStart(t, t.TempDir(), true)
	defer d.Close()
	stale := store.Tuning{Heartbeat: 500 * time.Millisecond, ElectionTimeout: 5 * time.Second}
	d.spec.running = stale
	cases := []struct {
		name string
		raft *swarm.RaftConfig
		want store.Tuning
	}{
		{name: "unknown", want: store.Tuning{SnapshotCount: 10000, MaxSnapFiles: 1, SnapshotCatchUpEntries: 500, Heartbeat: 100 * time.Millisecond, ElectionTimeout: time.Second}},
		{name: "spec", raft: &swarm.RaftConfig{SnapshotInterval: 5000, HeartbeatTick: 3, ElectionTick: 30},
			want: store.Tuning{SnapshotCount: 5000, Heartbeat: 300 * time.Millisecond, ElectionTimeout: 3 * time.Second}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d.startWithSpecTuning(tc.raft)
			if d.spec.running != tc.want || d.loadTuning() != tc.want {
				t.Fatalf("running %+v, saved %+v; want %+v", d.spec.running, d.loadTuning(), tc.want)
			}
		})
	}
}

// A spec update served by one manager reaches the others while they run:
// each keeps the new raft timing for its next start, which then runs with
// it (one restart, not two), and the settings read live (the
// orchestrator's history limit) follow at once. The timing is read from
// the restarted etcd's own configuration.
func TestOtherManagerFollowsSpecUpdate(t *testing.T) {
	ctx := context.Background()
	ms := startManagers(t, 2)
	c := getCluster(t, ms[0].d)
	spec := c.Spec
	spec.Raft.HeartbeatTick, spec.Raft.ElectionTick = 2, 20
	limit := int64(7)
	spec.Orchestration.TaskHistoryRetentionLimit = &limit
	if err := ms[0].d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatalf("swarm update through the first manager: %v", err)
	}
	other := ms[1]
	waitUntil(t, "the other manager keeps the new raft timing for its next start", func() bool {
		got := other.d.loadTuning()
		return got.Heartbeat == 200*time.Millisecond && got.ElectionTimeout == 2*time.Second
	})
	waitUntil(t, "the other manager's orchestrator settings follow", func() bool {
		return other.d.orchestratorSettings().HistoryLimit == limit
	})
	other.restart(t)
	if hb, el := other.d.store.Members().Timing(); hb != 200*time.Millisecond || el != 2*time.Second {
		t.Fatalf("the other manager restarted once runs etcd with heartbeat %v, election %v; want 200ms, 2s", hb, el)
	}
}
