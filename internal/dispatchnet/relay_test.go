package dispatchnet

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
)

// TestRelayLogs: a manager fetches a node's logs through the manager the
// node holds its session with; a manager without the session says so
// (ErrNoSession: ask another); a worker's certificate may not relay.
func TestRelayLogs(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	with, without := serve(t, c, f, nil), serve(t, c, f, nil)
	n := c.issue(t, pki.RoleWorker)
	p := c.params(n, nil)
	conn, err := NewConnector(ClientConfig{Managers: []string{with.addr}, TLS: p.ClientConfig,
		Logs: func(_ context.Context, taskID string, o agent.LogOptions) (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("line of " + taskID + " since " + o.Since + "\n")), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	next(t, open(t, conn))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	asker := c.issue(t, pki.RoleManager)
	r := NewRelayer(c.params(asker, nil).ClientConfig, nil)
	defer r.Close()
	rc, err := r.Logs(ctx, with.addr, n.id, "t1", agent.LogOptions{Since: "5"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(b) != "line of t1 since 5\n" {
		t.Fatalf("relayed logs: %q %v", b, err)
	}
	if _, err := r.Logs(ctx, without.addr, n.id, "t1", agent.LogOptions{}); !errors.Is(err, ErrNoSession) {
		t.Fatalf("a manager without the node's session: %v", err)
	}
	wr := NewRelayer(p.ClientConfig, nil)
	defer wr.Close()
	// A worker's certificate passes the handshake; the call is refused.
	if _, err := wr.Logs(ctx, with.addr, n.id, "t1", agent.LogOptions{}); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("a worker relaying: %v", err)
	}
}
