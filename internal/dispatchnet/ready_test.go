package dispatchnet

import (
	"context"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/pki"
)

// A session's hello waits for AwaitReady, which is called with the node's
// own ID once its first heartbeat is recorded; the connector tells Opened
// only after the hello: a joining node that waits for its first session
// answers its join once the manager recorded it Ready.
func TestSessionOpensAfterAwaitReady(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	called, release := make(chan string, 1), make(chan struct{})
	m := serve(t, c, f, nil, func(sc *ServerConfig) {
		sc.AwaitReady = func(ctx context.Context, nodeID string) {
			called <- nodeID
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
	})
	opened := make(chan struct{}, 1)
	conn := connector(t, c, w, []string{m.addr}, nil)
	conn.c.Opened = func() { opened <- struct{}{} }
	got := make(chan *Session, 1)
	go func() {
		s, err := conn.Open(context.Background())
		if err != nil {
			t.Errorf("open: %v", err)
			got <- nil
			return
		}
		got <- s.(*Session)
	}()
	select {
	case id := <-called:
		if id != w.id {
			t.Fatalf("AwaitReady called for %q, want the node's own ID %q", id, w.id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AwaitReady not called within 10 s of an open")
	}
	select {
	case <-got:
		t.Fatal("the session opened before AwaitReady returned")
	case <-opened:
		t.Fatal("Opened told before AwaitReady returned")
	default:
	}
	close(release)
	var s *Session
	select {
	case s = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no session 10 s after AwaitReady returned")
	}
	if s == nil {
		return
	}
	defer s.Close()
	select {
	case <-opened:
	default:
		t.Fatal("Open returned a session without telling Opened")
	}
}
