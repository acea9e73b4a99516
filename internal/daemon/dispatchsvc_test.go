package daemon

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/store/storetest"
)

// A manager vouches for itself and for each node whose heartbeat it heard
// within two periods of the cluster's heartbeat period; it withdraws the
// claim of a node gone silent, and never its own.
func TestVouchFromHeartbeats(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	d := &Daemon{store: st, nodeID: "m1", log: slog.New(slog.DiscardHandler)}
	d.spec.heartbeat.Store(int64(time.Second))
	p, err := st.NewPresence("m1", 3*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	d.seen.Heartbeat("fresh", now.Add(-time.Second))
	d.seen.Heartbeat("stale", now.Add(-3*time.Second))
	if err := p.Claim(ctx, "stale"); err != nil {
		t.Fatal(err)
	}
	d.vouch(ctx, p)
	got := p.Claims()
	slices.Sort(got)
	if want := []string{"fresh", "m1"}; !slices.Equal(got, want) {
		t.Fatalf("claims %v, want %v", got, want)
	}
	if a, err := dispatchAddr("10.0.0.1:2377"); err != nil || a != "10.0.0.1:2379" {
		t.Errorf("dispatchAddr = %q, %v", a, err)
	}
	if _, err := dispatchAddr("10.0.0.1:65534"); err == nil {
		t.Error("dispatchAddr accepted a port past 65535")
	}
}
