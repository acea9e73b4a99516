package nodes_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

func TestTrackerDecides(t *testing.T) {
	const p = time.Second
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type obs struct {
		at      time.Duration // since the leadership began
		present bool
		want    swarm.NodeState // "": no decision yet
	}
	for _, tc := range []struct {
		name        string
		interrupted time.Duration // > 0: a failed read at that time
		steps       []obs
	}{
		{name: "present is ready at once", steps: []obs{{0, true, swarm.NodeStateReady}}},
		{name: "never seen: leader's grace of six periods", steps: []obs{
			{time.Second, false, ""}, {6 * time.Second, false, ""}, {6*time.Second + 1, false, swarm.NodeStateDown}}},
		{name: "seen then silent: one period after, once past the leader's grace", steps: []obs{
			{7 * time.Second, true, swarm.NodeStateReady}, {8 * time.Second, false, ""}, {8*time.Second + 1, false, swarm.NodeStateDown}}},
		{name: "silent early: the leader's grace still holds", steps: []obs{
			{0, true, swarm.NodeStateReady}, {2 * time.Second, false, ""}, {6*time.Second + 1, false, swarm.NodeStateDown}}},
		{name: "back: ready again", steps: []obs{
			{10 * time.Second, false, swarm.NodeStateDown}, {11 * time.Second, true, swarm.NodeStateReady}}},
		{name: "an unreadable presence restarts the grace", interrupted: 10 * time.Second, steps: []obs{
			{11 * time.Second, false, ""}, {16 * time.Second, false, ""}, {16*time.Second + 1, false, swarm.NodeStateDown}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := nodes.NewTracker(t0)
			if tc.interrupted > 0 {
				tr.Interrupted(t0.Add(tc.interrupted))
			}
			for _, s := range tc.steps {
				got, ok := tr.Decide(t0.Add(s.at), p, "n1", s.present)
				if !ok {
					got = ""
				}
				if got != s.want {
					t.Fatalf("at %s present=%v: %q, want %q", s.at, s.present, got, s.want)
				}
			}
		})
	}
}

// The loop records what presence says, on the leader only: Ready for a
// claimed node, Down ("heartbeat failure") once unclaimed past the grace,
// Ready again when claimed; a deposed leader writes nothing.
// recordsAndPresence records nodes m1 and w1 and runs m1's presence
// until the test ends.
func recordsAndPresence(t *testing.T) (*store.Store, *store.Presence) {
	t.Helper()
	ctx := context.Background()
	st := storetest.New(t)
	for _, id := range []string{"m1", "w1"} {
		if _, err := nodes.Record(ctx, st, nodes.Node{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	pres, err := st.NewPresence("m1", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(ctx)
	pdone := make(chan struct{})
	go func() { pres.Run(pctx); close(pdone) }()
	t.Cleanup(func() { pcancel(); <-pdone })
	return st, pres
}

func TestRunLiveness(t *testing.T) {
	ctx := context.Background()
	st, pres := recordsAndPresence(t)
	for _, id := range []string{"m1", "w1"} {
		if err := pres.Claim(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	l, err := st.Campaign(ctx, "orchestrator", "m1", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lctx, lcancel := context.WithCancel(ctx)
	ldone := make(chan struct{})
	const period = 200 * time.Millisecond
	go func() {
		nodes.RunLiveness(lctx, nodes.LivenessConfig{Store: st, Leadership: l, Period: func() time.Duration { return period }})
		close(ldone)
	}()
	defer func() { lcancel(); <-ldone }()

	waitStatus := func(id string, want nodes.Status) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			n, err := nodes.Get(ctx, st, id)
			if err != nil {
				t.Fatal(err)
			}
			if n.Status != nil && *n.Status == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s: status %+v, want %+v", id, n.Status, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	ready, down := nodes.Status{State: swarm.NodeStateReady}, nodes.Status{State: swarm.NodeStateDown, Message: "heartbeat failure"}
	waitStatus("m1", ready)
	waitStatus("w1", ready)
	if err := pres.Release(ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	waitStatus("w1", down)
	waitStatus("m1", ready)
	if err := pres.Claim(ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	waitStatus("w1", ready)

	// Deposed (a resignation ends the lease as an expiry would): its guarded write fails, and the loop stops.
	if err := l.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if err := nodes.SetStatus(ctx, st, l, "w1", down); !errors.Is(err, store.ErrDeposed) || !errors.Is(err, store.ErrGuard) {
		t.Fatalf("deposed leader's status write: %v, want ErrDeposed (an ErrGuard)", err)
	}
	if n, err := nodes.Get(ctx, st, "w1"); err != nil || n.Status == nil || *n.Status != ready {
		t.Fatalf("deposed leader's status write changed the record: %+v %v", n.Status, err)
	}
	select {
	case <-ldone:
	case <-time.After(10 * time.Second):
		t.Fatal("liveness loop still running after the leadership ended")
	}
}

// A wake runs a pass at once: with timed passes an hour apart, a node
// claimed after the first pass is recorded Ready only because of it.
func TestRunLivenessWake(t *testing.T) {
	ctx := context.Background()
	st, pres := recordsAndPresence(t)
	if err := pres.Claim(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	l, err := st.Campaign(ctx, "orchestrator", "m1", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wake := make(chan struct{}, 1)
	lctx, lcancel := context.WithCancel(ctx)
	ldone := make(chan struct{})
	go func() {
		nodes.RunLiveness(lctx, nodes.LivenessConfig{Store: st, Leadership: l, Wake: wake,
			Period: func() time.Duration { return time.Second },
			Every:  func(time.Duration) time.Duration { return time.Hour }})
		close(ldone)
	}()
	defer func() { lcancel(); <-ldone }()
	state := func(id string) swarm.NodeState {
		n, err := nodes.Get(ctx, st, id)
		if err != nil {
			t.Fatal(err)
		}
		if n.Status == nil {
			return ""
		}
		return n.Status.State
	}
	// The first pass runs at start; its claim may not have been written
	// yet, so wake until m1 is Ready.
	deadline := time.Now().Add(10 * time.Second)
	for state("m1") != swarm.NodeStateReady {
		if time.Now().After(deadline) {
			t.Fatal("m1 not Ready after 10 s of wakes")
		}
		select {
		case wake <- struct{}{}:
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s := state("w1"); s != "" {
		t.Fatalf("w1 %q before it was claimed", s)
	}
	if err := pres.Claim(ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	select {
	case wake <- struct{}{}:
	default: // a wake is pending already
	}
	deadline = time.Now().Add(10 * time.Second)
	for state("w1") != swarm.NodeStateReady {
		if time.Now().After(deadline) {
			t.Fatal("w1 not Ready 10 s after a wake (the next timed pass is an hour away)")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
