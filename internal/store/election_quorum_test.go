package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// A campaign on a member without a quorum ends when its context does (or
// at once, as no leader): its lease grant must not sit out etcd's own
// request timeout (5 s plus two election timeouts) with the caller's
// deadline long past.
func TestCampaignWithoutQuorumHonoursContext(t *testing.T) {
	c := newCluster(t)
	n1, n2 := c.newNode("m1"), c.newNode("m2")
	c.open(n1)
	n1.waitReady(t)
	c.join(n1, n2)
	n2.close(t)
	campaign := func(what string) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		l, err := n1.s.Campaign(ctx, "orchestrator", "m1", time.Second)
		took := time.Since(start)
		if err == nil {
			t.Fatalf("%s: campaign won without a quorum: %+v", what, l)
		}
		if !errdefs.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("%s: campaign without quorum: %v", what, err)
		}
		// etcd's own timeout here is 5 s + 2 x 1 s: anything near it
		// means the caller's 300 ms deadline was ignored.
		if took > 4*time.Second {
			t.Fatalf("%s: campaign returned %s after its 300 ms deadline (%v)", what, took, err)
		}
		return err
	}
	// m1 may still believe it leads (until its check-quorum runs): the
	// grant goes to raft and must end with ctx.
	campaign("quorum just lost")
	deadline := time.Now().Add(wait)
	for n1.s.HasLeader() {
		if time.Now().After(deadline) {
			t.Fatal("m1 still sees a leader alone of two")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := campaign("no leader"); !errdefs.Is(err, errdefs.ErrNoLeader) {
		t.Fatalf("campaign without a leader: %v, want no leader", err)
	}
}
