package dispatchnet

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
)

// TestRemoteLogs: a manager reads a task's logs from the node's answer as
// it streams, the node's refusal crosses with its category, closing the
// manager's reader ends the node's stream, a node without a session has
// no logs, and the open streams per node are bounded.
func TestRemoteLogs(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	m := serve(t, c, f, nil)
	n := c.issue(t, pki.RoleWorker)
	ended := make(chan error, MaxLogStreams+2)
	serveLogs := func(_ context.Context, taskID string, o agent.LogOptions) (io.ReadCloser, error) {
		if taskID != "t1" {
			return nil, errdefs.NotFound("task %s is not assigned to this node", taskID)
		}
		pr, pw := io.Pipe()
		go func() {
			_, err := pw.Write([]byte("line tail=" + o.Tail + "\n"))
			if err == nil && o.Follow {
				// A followed stream writes until the reader is gone.
				for err == nil {
					_, err = pw.Write([]byte("more\n"))
				}
			}
			pw.CloseWithError(err)
			ended <- err
		}()
		return pr, nil
	}
	p := c.params(n, nil)
	conn, err := NewConnector(ClientConfig{Managers: []string{m.addr}, TLS: p.ClientConfig, Logs: serveLogs})
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, conn)
	next(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	rc, err := m.h.Logs(ctx, n.id, "t1", agent.LogOptions{Tail: "3"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(b) != "line tail=3\n" {
		t.Fatalf("logs: %q %v", b, err)
	}
	if _, err := m.h.Logs(ctx, n.id, "t2", agent.LogOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("logs of a task the node refuses: %v", err)
	}
	if _, err := m.h.Logs(ctx, "nosuchnode", "t1", agent.LogOptions{}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("logs of a node without a session: %v", err)
	}

	// Followed streams: the bound, then closing one ends the node's writer.
	var open []io.ReadCloser
	for range MaxLogStreams {
		rc, err := m.h.Logs(ctx, n.id, "t1", agent.LogOptions{Follow: true})
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, rc)
	}
	if _, err := m.h.Logs(ctx, n.id, "t1", agent.LogOptions{Follow: true}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("a log stream past the bound: %v", err)
	}
	<-ended // the first, non-followed stream
	buf := make([]byte, 5)
	if _, err := io.ReadFull(open[0], buf); err != nil {
		t.Fatal(err)
	}
	for _, rc := range open {
		rc.Close()
	}
	for range MaxLogStreams {
		select {
		case err := <-ended:
			if err == nil {
				t.Fatal("a followed stream ended without an error")
			}
		case <-ctx.Done():
			t.Fatal("closing the manager's readers did not end the node's streams")
		}
	}
	rc, err = m.h.Logs(ctx, n.id, "t1", agent.LogOptions{})
	if err != nil {
		t.Fatalf("logs after the streams closed: %v", err)
	}
	rc.Close()
}
