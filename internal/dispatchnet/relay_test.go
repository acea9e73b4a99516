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

// A relayed request for the answering manager's own node is served from
// its local agent (LocalLogs): a manager's agent holds no session with
// the dispatcher server, so `service logs` on one manager missed every
// task running on another manager.
func TestRelayLogsOfTheManagersOwnNode(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	const self = "selfnodeaaaaaaaaaaaaaaaaa"
	var asked []string
	m := serve(t, c, f, nil, func(sc *ServerConfig) {
		sc.LocalNode = self
		sc.LocalLogs = func(_ context.Context, taskID string, o agent.LogOptions) (io.ReadCloser, error) {
			asked = append(asked, taskID)
			if taskID != "t1" {
				return nil, errdefs.NotFound("task %s is not assigned to this node", taskID)
			}
			return io.NopCloser(strings.NewReader("own line tail " + o.Tail + "\n")), nil
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := NewRelayer(c.params(c.issue(t, pki.RoleManager), nil).ClientConfig, nil)
	defer r.Close()
	rc, err := r.Logs(ctx, m.addr, self, "t1", agent.LogOptions{Tail: "3"})
	if err != nil {
		t.Fatalf("logs of the manager's own task: %v", err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(b) != "own line tail 3\n" {
		t.Fatalf("relayed own logs: %q %v", b, err)
	}
	if _, err := r.Logs(ctx, m.addr, self, "t2", agent.LogOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a task not assigned to the manager's node: %v", err)
	}
	// Any other node still needs a session here.
	if _, err := r.Logs(ctx, m.addr, "othernodeaaaaaaaaaaaaaaaa", "t1", agent.LogOptions{}); !errors.Is(err, ErrNoSession) {
		t.Fatalf("another node without a session: %v", err)
	}
	if len(asked) != 2 {
		t.Fatalf("the local agent was asked %v", asked)
	}
}
