package daemon

import (
	"testing"
	"time"
)

// A worker is Ready while its last heartbeat is within 3 periods of the
// cluster's heartbeat period, Down after, and Down when never heard from.
func TestWorkerUpFromHeartbeats(t *testing.T) {
	d := &Daemon{}
	d.spec.heartbeat.Store(int64(time.Second))
	now := time.Now()
	d.seen.Heartbeat("fresh", now.Add(-2*time.Second))
	d.seen.Heartbeat("stale", now.Add(-4*time.Second))
	for _, tc := range []struct {
		node string
		want bool
	}{{"fresh", true}, {"stale", false}, {"never", false}} {
		if got := d.workerUp(tc.node); got != tc.want {
			t.Errorf("workerUp(%s) = %v, want %v", tc.node, got, tc.want)
		}
	}
	if a, err := dispatchAddr("10.0.0.1:2377"); err != nil || a != "10.0.0.1:2379" {
		t.Errorf("dispatchAddr = %q, %v", a, err)
	}
	if _, err := dispatchAddr("10.0.0.1:65534"); err == nil {
		t.Error("dispatchAddr accepted a port past 65535")
	}
}
