package cluster

import (
	"math"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// TickDuration is what one raft tick of the spec lasts in hush. Swarm's
// tick is a second; hush counts the spec's ticks in etcd's default
// heartbeat interval instead, so that Swarm's defaults (heartbeat 1 tick,
// election 10 ticks) are exactly etcd's defaults (100 ms and 1 s), which a
// one-member store starting in a blink needs.
const TickDuration = 100 * time.Millisecond

// maxElectionTimeout is etcd's bound on the election timeout.
const maxElectionTimeout = 50 * time.Second

// EtcdTuningFor maps the spec's raft settings onto the embedded etcd's:
//
//   - SnapshotInterval (entries between snapshots) is etcd's SnapshotCount;
//   - KeepOldSnapshots (snapshots kept beyond the current one) is etcd's
//     MaxSnapFiles minus one;
//   - LogEntriesForSlowFollowers is etcd's SnapshotCatchUpEntries;
//   - HeartbeatTick and ElectionTick, in ticks of TickDuration, are etcd's
//     heartbeat interval and election timeout.
//
// A zero leaves etcd's default. etcd reads all of them at start only, so a
// changed value takes effect when hushd next starts. Tick values etcd
// would refuse to start with are refused here, naming the field.
func EtcdTuningFor(r swarm.RaftConfig) (store.Tuning, error) {
	var t store.Tuning
	t.SnapshotCount = r.SnapshotInterval
	if r.KeepOldSnapshots != nil {
		// Past what any disk holds, "keep that many" is etcd's unlimited (0).
		if k := *r.KeepOldSnapshots; k < math.MaxUint32 {
			t.MaxSnapFiles = uint(k) + 1
		}
	}
	t.SnapshotCatchUpEntries = r.LogEntriesForSlowFollowers
	if r.HeartbeatTick < 0 {
		return t, errdefs.BadRequest("Raft.HeartbeatTick must not be negative: %d", r.HeartbeatTick)
	}
	if r.ElectionTick < 0 {
		return t, errdefs.BadRequest("Raft.ElectionTick must not be negative: %d", r.ElectionTick)
	}
	if r.HeartbeatTick == 0 && r.ElectionTick == 0 {
		return t, nil
	}
	hb, el := r.HeartbeatTick, r.ElectionTick
	if hb == 0 {
		hb = 1
	}
	if el == 0 {
		el = 10
	}
	maxEl := int(maxElectionTimeout / TickDuration)
	switch {
	case hb > maxEl/5:
		return t, errdefs.BadRequest("Raft.HeartbeatTick %d is too large: hush counts raft ticks in %s, and etcd's election timeout (at least 5 heartbeats) must stay under %s", hb, TickDuration, maxElectionTimeout)
	case el > maxEl:
		return t, errdefs.BadRequest("Raft.ElectionTick %d is too large: hush counts raft ticks in %s, and etcd's election timeout must stay under %s (at most %d ticks)", el, TickDuration, maxElectionTimeout, maxEl)
	case el < 5*hb:
		return t, errdefs.BadRequest("Raft.ElectionTick %d must be at least 5 times Raft.HeartbeatTick %d: hush runs them as etcd's election timeout and heartbeat interval, which etcd requires", el, hb)
	}
	t.Heartbeat = time.Duration(hb) * TickDuration
	t.ElectionTimeout = time.Duration(el) * TickDuration
	return t, nil
}
