package pki

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
)

func TestIssueLimiter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type call struct {
		node  string
		after time.Duration // since t0
		ok    bool
	}
	for _, tt := range []struct {
		name     string
		burst    int
		maxNodes int
		calls    []call
	}{
		{"burst then refused", 2, 10, []call{{"a", 0, true}, {"a", 0, true}, {"a", 0, false}}},
		{"nodes apart", 1, 10, []call{{"a", 0, true}, {"b", 0, true}, {"a", 0, false}, {"b", 0, false}}},
		{"refill after every", 1, 10, []call{{"a", 0, true}, {"a", 30 * time.Second, false}, {"a", 61 * time.Second, true}, {"a", 62 * time.Second, false}}},
		{"refill capped at burst", 2, 10, []call{{"a", 0, true}, {"a", time.Hour, true}, {"a", time.Hour, true}, {"a", time.Hour, false}}},
		{"full buckets dropped for a new node", 1, 1, []call{{"a", 0, true}, {"b", 0, false}, {"b", 2 * time.Minute, true}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := &IssueLimiter{Burst: tt.burst, Every: time.Minute, MaxNodes: tt.maxNodes}
			for i, c := range tt.calls {
				err := l.Allow(c.node, t0.Add(c.after))
				if (err == nil) != c.ok {
					t.Fatalf("call %d (%s at +%s): %v, want ok=%v", i, c.node, c.after, err, c.ok)
				}
				if err != nil && (!errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "retry in")) {
					t.Fatalf("call %d: refusal %q is not a precondition naming when to retry", i, err)
				}
			}
			if len(l.buckets) > tt.maxNodes {
				t.Fatalf("%d buckets kept, bound %d", len(l.buckets), tt.maxNodes)
			}
		})
	}
}

// A refunded issue is available again at once, never beyond the burst.
func TestIssueLimiterRefund(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := &IssueLimiter{Burst: 1, Every: time.Hour, MaxNodes: 10}
	if err := l.Allow("a", t0); err != nil {
		t.Fatal(err)
	}
	l.Refund("a")
	l.Refund("a")
	if err := l.Allow("a", t0); err != nil {
		t.Fatalf("after a refund: %v", err)
	}
	if err := l.Allow("a", t0); err == nil {
		t.Fatal("two refunds gave more than the burst")
	}
	l.Refund("unknown") // no bucket: nothing to give back
	if len(l.buckets) != 1 {
		t.Fatalf("a refund made a bucket: %d", len(l.buckets))
	}
}

// Concurrent takes and refunds of one node's bucket: exactly the burst is
// granted, refunds of the granted ones restore exactly the burst, and no
// number of extra refunds (a caller's bug) lifts it above the burst.
func TestIssueLimiterConcurrentAccounting(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const burst, callers = 5, 64
	l := &IssueLimiter{Burst: burst, Every: time.Hour, MaxNodes: 10}
	granted := func() int {
		var mu sync.Mutex
		var wg sync.WaitGroup
		n := 0
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if l.Allow("a", t0) == nil {
					mu.Lock()
					n++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return n
	}
	if n := granted(); n != burst {
		t.Fatalf("%d concurrent calls granted %d, want the burst %d", callers, n, burst)
	}
	var wg sync.WaitGroup
	for range callers { // more refunds than grants
		wg.Add(1)
		go func() { defer wg.Done(); l.Refund("a") }()
	}
	wg.Wait()
	if n := granted(); n != burst {
		t.Fatalf("after refunds, %d granted, want the burst %d", n, burst)
	}
	if err := l.Allow("b", t0); err != nil {
		t.Fatalf("another node refused: %v", err)
	}
}
