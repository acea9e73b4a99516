package dispatchnet

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
)

// A manager that cannot vouch for the nodes it hears (cut off into a
// minority: its presence lease is not renewed, so the other managers see
// its workers Down) refuses session opens and heartbeats, so that its
// workers move to a manager that can vouch for them, as Swarm's move off
// a manager that cannot reach the leader.
func TestUnvouchingManagerRefused(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	var cutOff atomic.Bool
	vouching := func() error {
		if cutOff.Load() {
			return errdefs.Unavailable("this manager cannot reach the cluster's quorum")
		}
		return nil
	}
	a := serve(t, c, f, nil, func(sc *ServerConfig) { sc.Vouching = vouching })
	b := serve(t, c, f, nil)

	tests := []struct {
		name string
		// cut before the session opens (else after).
		before bool
	}{
		{name: "open refused", before: true},
		{name: "heartbeat refused", before: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cutOff.Store(tc.before)
			defer cutOff.Store(false)
			conn := connector(t, c, w, []string{a.addr, b.addr}, nil)
			s := open(t, conn)
			if tc.before {
				if !strings.HasSuffix(s.base, b.addr) {
					t.Fatalf("session opened with %s, want %s (the other refuses)", s.base, b.addr)
				}
				return
			}
			if !strings.HasSuffix(s.base, a.addr) {
				t.Fatalf("session opened with %s, want %s", s.base, a.addr)
			}
			cutOff.Store(true)
			// The next heartbeat is refused: the session ends.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			select {
			case <-s.ctx.Done():
			case <-ctx.Done():
				t.Fatal("the session with a manager that cannot vouch goes on")
			}
			if err := context.Cause(s.ctx); !errors.Is(err, errdefs.ErrUnavailable) {
				t.Fatalf("session ended with %v, want Unavailable", err)
			}
			s2 := open(t, conn)
			if !strings.HasSuffix(s2.base, b.addr) {
				t.Fatalf("reopened with %s, want %s", s2.base, b.addr)
			}
		})
	}
}
