package daemon

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/dispatchnet"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// A manager vouches for itself and for each node whose heartbeat it heard
// within two periods of the cluster's heartbeat period; it withdraws the
// claim of a node gone silent, and never its own.
func TestVouchFromHeartbeats(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	d := &Daemon{store: st, nodeID: "m1", log: slog.New(slog.DiscardHandler)}
	d.cur.Store(st) // as openStore publishes it
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

// The presence's lease follows the heartbeat period: after a change, a
// lease of three new periods holds the manager's claim, which never lapses
// during the switch.
func TestPresenceFollowsHeartbeatPeriod(t *testing.T) {
	st := storetest.New(t)
	d := &Daemon{store: st, nodeID: "m1", log: slog.New(slog.DiscardHandler)}
	d.cur.Store(st) // as openStore publishes it
	d.spec.heartbeat.Store(int64(time.Second))
	k := &presenceKeeper{d: d}
	if err := k.vouching(); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("vouching before any lease: %v, want Unavailable", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); k.run(ctx) }()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()
	present := func() bool {
		got, err := st.Present(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return len(got["m1"]) > 0
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 15 s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitUntil("claimed under a 3 s lease", func() bool {
		p := k.current()
		return p != nil && p.TTL() == 3*time.Second && present() && k.vouching() == nil
	})
	d.spec.heartbeat.Store(int64(2 * time.Second))
	waitUntil("a 6 s lease, still claimed", func() bool {
		if !present() {
			t.Fatal("the manager's claim lapsed while its lease was replaced")
		}
		// Its dispatcher keeps its workers meanwhile.
		if err := k.vouching(); err != nil {
			t.Fatalf("not vouching while its lease was replaced: %v", err)
		}
		return k.current().TTL() == 6*time.Second
	})
	for range 10 {
		if !present() {
			t.Fatal("the manager's claim lapsed after its lease was replaced")
		}
		if err := k.vouching(); err != nil {
			t.Fatalf("not vouching after its lease was replaced: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Stopped (its lease revoked): no longer vouching.
	cancel()
	<-done
	stopped = true
	if err := k.vouching(); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("vouching after the presence stopped: %v, want Unavailable", err)
	}
}

// The logs of a node no manager holds a session of (every manager's
// dispatcher refuses the request for want of one) are refused with
// api.ErrNodeNotConnected, which the API turns into Swarm's "node X is not
// available" at the end of the stream; the request is never left
// unanswered or mistaken for another failure.
func TestRemoteLogsNodeNotConnected(t *testing.T) {
	st := storetest.New(t)
	d := &Daemon{store: st, nodeID: "m1", log: slog.New(slog.DiscardHandler)}
	d.cur.Store(st) // as openStore publishes it
	d.listen.Advertise = "127.0.0.1:2377"
	d.dispatch.Store(&dispatchRuntime{h: dispatchnet.NewHandler(dispatchnet.ServerConfig{})})
	_, err := remoteLogs{d}.TaskLogs(context.Background(), "w1", "task1", false, "", false, "")
	if !errors.Is(err, api.ErrNodeNotConnected) || !errors.Is(err, dispatchnet.ErrNoSession) {
		t.Fatalf("logs of a node without a session: %v, want api.ErrNodeNotConnected", err)
	}
}
