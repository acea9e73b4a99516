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

// TestLogStreamEndsWithSession: a log answer that keeps streaming after
// the node's session ended (a removed node, or one whose heartbeats
// stopped while its connection lingers) is cut by the manager: the
// manager's reader fails rather than following a node it no longer
// serves.
func TestLogStreamEndsWithSession(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	m := serve(t, c, f, nil, func(sc *ServerConfig) {
		sc.HeartbeatPeriod = func() time.Duration { return time.Hour }
	})
	n := c.issue(t, pki.RoleWorker)
	// The node itself never answers: the test answers in its name, from
	// a request that outlives the session (as a node that ignores the
	// end frame, or one cut off, would).
	hold := func(ctx context.Context, _ string, _ agent.LogOptions) (io.ReadCloser, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	p := c.params(n, nil)
	conn, err := NewConnector(ClientConfig{Managers: []string{m.addr}, TLS: p.ClientConfig, Logs: hold})
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, conn)
	next(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	type opened struct {
		rc  io.ReadCloser
		err error
	}
	got := make(chan opened, 1)
	go func() {
		rc, err := m.h.Logs(ctx, n.id, "t1", agent.LogOptions{Follow: true})
		got <- opened{rc, err}
	}()
	var id string
	for id == "" && ctx.Err() == nil {
		m.h.mu.Lock()
		if ss := m.h.sessions[n.id]; ss != nil {
			ss.mu.Lock()
			for k := range ss.logs {
				id = k
			}
			ss.mu.Unlock()
		}
		m.h.mu.Unlock()
		if id == "" {
			time.Sleep(10 * time.Millisecond) // polling, bounded by ctx
		}
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		for {
			if _, err := pw.Write([]byte("more\n")); err != nil {
				return
			}
		}
	}()
	lingering := &Session{hc: s.hc, base: s.base, id: s.id, ctx: context.Background(), log: s.log}
	go lingering.answerLogs(context.Background(), id, pr, nil)
	o := <-got
	if o.err != nil {
		t.Fatal(o.err)
	}
	defer o.rc.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(o.rc, buf); err != nil {
		t.Fatal(err)
	}
	m.h.EndNode(n.id, errdefs.Unavailable("node removed"))
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, o.rc)
		ended <- err
	}()
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("a log stream outlived its node's session")
	}
}
