package dispatchnet

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
)

// TestRemovalEndsSessionAtOnce: EndNode ends a node's session now (no
// heartbeat needed) and the node learns it was removed
// (agent.ErrNodeRemoved, still unauthorized) from the end frame, and from
// the refusal of its next session.
func TestRemovalEndsSessionAtOnce(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	var mu sync.Mutex
	removed := map[string]bool{}
	refuse := func(id string, _ *x509.Certificate) error {
		mu.Lock()
		defer mu.Unlock()
		if removed[id] {
			return fmt.Errorf("%w: %w", agent.ErrNodeRemoved, errdefs.Unauthorized("node %s was removed", id))
		}
		return nil
	}
	m := serve(t, c, f, nil, func(sc *ServerConfig) {
		sc.Refuse = refuse
		// Heartbeats would end it too; an hour keeps them out of the way.
		sc.HeartbeatPeriod = func() time.Duration { return time.Hour }
	})
	n := c.issue(t, pki.RoleWorker)
	conn := connector(t, c, n, []string{m.addr}, nil)
	s := open(t, conn)
	next(t, s)
	mu.Lock()
	removed[n.id] = true
	mu.Unlock()
	m.h.EndNode(n.id, refuse(n.id, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.Next(ctx)
	if ctx.Err() != nil || !errors.Is(err, agent.ErrNodeRemoved) || !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("session of a removed node: %v", err)
	}
	if _, err := conn.Open(ctx); !errors.Is(err, agent.ErrNodeRemoved) {
		t.Fatalf("opening a session after removal: %v", err)
	}
	// Other refusals do not read as a removal.
	if errors.Is(fromWire(toWire(errdefs.Unauthorized("x"))), agent.ErrNodeRemoved) {
		t.Fatal("an unauthorized error crossed as a removal")
	}
}
