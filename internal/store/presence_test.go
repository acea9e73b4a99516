package store_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// runPresence runs p until the test ends (or stop is called).
func runPresence(t *testing.T, p *store.Presence) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	deadline := time.Now().Add(10 * time.Second)
	for p.LeaseForTest() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("presence holds no lease after 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return stop
}

// waitPresent polls until Present says node's owners are want (sorted;
// nil: absent).
func waitPresent(t *testing.T, s *store.Store, node string, want []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, err := s.Present(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		owners := got[node]
		slices.Sort(owners)
		if slices.Equal(owners, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: owners %v after %s, want %v", node, owners, within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPresence(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	m1, err := s.NewPresence("m1", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := s.NewPresence("m2", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A claim made before the lease exists is put with it.
	if err := m1.Claim(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	runPresence(t, m1)
	stop2 := runPresence(t, m2)
	waitPresent(t, s, "m1", []string{"m1"}, 5*time.Second)

	for _, c := range []struct {
		p    *store.Presence
		node string
	}{{m1, "w1"}, {m2, "w1"}, {m2, "m2"}, {m2, "w2"}} {
		if err := c.p.Claim(ctx, c.node); err != nil {
			t.Fatal(err)
		}
	}
	waitPresent(t, s, "w1", []string{"m1", "m2"}, time.Second)

	// A release withdraws only the releaser's own claim.
	if err := m1.Release(ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	waitPresent(t, s, "w1", []string{"m2"}, time.Second)
	if err := m1.Release(ctx, "w2"); err != nil {
		t.Fatal(err)
	}
	waitPresent(t, s, "w2", []string{"m2"}, time.Second)

	// A clean stop revokes the lease: its claims go at once.
	stop2()
	waitPresent(t, s, "w1", nil, 2*time.Second)
	waitPresent(t, s, "m2", nil, 2*time.Second)
	waitPresent(t, s, "m1", []string{"m1"}, time.Second)

	// A crash (no renewal, no revoke): the claims live out the TTL, then
	// the lease's expiry removes them.
	m1.CrashForTest()
	got, err := s.Present(ctx)
	if err != nil || len(got["m1"]) != 1 {
		t.Fatalf("right after the crash: %v %v, want m1 still claimed", got, err)
	}
	waitPresent(t, s, "m1", nil, 15*time.Second)

	for _, bad := range []string{"", "a/b", string(make([]byte, 129))} {
		if err := m2.Claim(ctx, bad); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("claim %q: %v, want invalid argument", bad, err)
		}
	}
	if _, err := s.NewPresence("x/y", time.Second, nil); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("owner with '/': %v", err)
	}
}

// A lease lost while the presence runs (expired during a cut-off) is
// replaced, and the claims are put again under the new one.
func TestPresenceRegrantsLostLease(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	p, err := s.NewPresence("m1", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	runPresence(t, p)
	if err := p.Claim(ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	waitPresent(t, s, "w1", []string{"m1"}, time.Second)
	old := p.LeaseForTest()
	if err := store.RevokeLeaseForTest(ctx, s, old); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for l := p.LeaseForTest(); l == 0 || l == old; l = p.LeaseForTest() {
		if time.Now().After(deadline) {
			t.Fatal("no new lease after the old one was revoked")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitPresent(t, s, "w1", []string{"m1"}, 5*time.Second)
}

// Fresh: a held lease the quorum renews; not before the lease is granted,
// not after a crash. A within shorter than the lease's renewals (etcd
// raises a short TTL to its minimum) is stretched to two of them: a
// renewed lease stays fresh throughout.
func TestPresenceFresh(t *testing.T) {
	s := storetest.New(t)
	p, err := s.NewPresence("m1", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Fresh(time.Hour) {
		t.Fatal("fresh before its lease is granted")
	}
	runPresence(t, p)
	// Two leases' worth of renewals (the granted TTL is at least the 1 s
	// asked), watched every 20 ms.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, within := range []time.Duration{time.Hour, time.Nanosecond} {
			if !p.Fresh(within) {
				t.Fatalf("a renewed lease not fresh within %s", within)
			}
		}
	}
	p.CrashForTest()
	deadline := time.Now().Add(10 * time.Second)
	for p.Fresh(time.Hour) {
		if time.Now().After(deadline) {
			t.Fatal("fresh 10 s after renewals stopped")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WatchPresence tells of a claim put and of one released, and of nothing
// else written to the store.
func TestWatchPresence(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := storetest.New(t)
	p, err := s.NewPresence("m1", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	runPresence(t, p)
	changes := make(chan struct{}, 16)
	watching := make(chan error, 1)
	go func() { watching <- s.WatchPresence(ctx, func() { changes <- struct{}{} }) }()
	// The watch starts at the store's current revision: a first claim put
	// until one is seen proves it is in place.
	deadline := time.After(10 * time.Second)
	for seen := false; !seen; {
		if err := p.Claim(ctx, "w1"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-changes:
			seen = true
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("no change seen for a claim in 10 s")
		}
	}
	for len(changes) > 0 {
		<-changes
	}
	// An unrelated write is not a presence change.
	if _, err := s.Table("secrets").Create(ctx, "x", "x", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changes:
	case <-time.After(10 * time.Second):
		t.Fatal("no change seen for a release in 10 s")
	}
	select {
	case <-changes:
		t.Fatal("a write outside the presence claims was reported as a change")
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	select {
	case <-watching:
	case <-time.After(10 * time.Second):
		t.Fatal("WatchPresence did not return when its context ended")
	}
}
