package dispatchnet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/pki"
)

// lockedBuffer collects a handler's log lines from any goroutine.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// errTooMuch: the reader took more than a bounded answer may give.
var errTooMuch = errors.New("read past the bound")

// capWriter counts what it is given and fails past max.
type capWriter struct {
	n, max int64
}

func (w *capWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	if w.n > w.max {
		return 0, errTooMuch
	}
	return len(p), nil
}

// endlessNode answers every logs request with a stream that never ends
// by itself: a line every few milliseconds (trickle) or as fast as the
// reader takes (flood). ended receives the writer's error once the
// stream is cut.
func endlessNode(trickle bool, ended chan<- error) func(context.Context, string, agent.LogOptions) (io.ReadCloser, error) {
	return func(context.Context, string, agent.LogOptions) (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			chunk := bytes.Repeat([]byte("x"), 4<<10)
			var err error
			for err == nil {
				if trickle {
					_, err = pw.Write([]byte("tick\n"))
					time.Sleep(5 * time.Millisecond) // the node's pace, not an assertion
				} else {
					_, err = pw.Write(chunk)
				}
			}
			pw.CloseWithError(err)
			ended <- err
		}()
		return pr, nil
	}
}

// pendingLogCount is how many log streams the manager holds open for
// node (its MaxLogStreams slots in use).
func pendingLogCount(m *manager, node string) int {
	m.h.mu.Lock()
	s := m.h.sessions[node]
	m.h.mu.Unlock()
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.logs)
}

// TestRemoteLogsBounded: a node that answers a logs request that does
// not follow with a stream that never ends (trickling, or flooding) is
// cut by the manager at its deadline or byte cap: the reader gets a
// clean end after what it was given (exactly the cap when the cap is
// hit), the slot is free before the reader is even closed, the node's
// stream ends, and the manager's log names the node and the bound.
// Before, such a stream held the client and the slot for as long as the
// node wished.
func TestRemoteLogsBounded(t *testing.T) {
	const capBytes = 64 << 10
	for _, tc := range []struct {
		name     string
		trickle  bool
		deadline time.Duration
		maxBytes int64
		bound    string
	}{
		{name: "trickle past the deadline", trickle: true, deadline: 300 * time.Millisecond, maxBytes: 1 << 30, bound: "deadline"},
		{name: "flood past the byte cap", deadline: time.Hour, maxBytes: capBytes, bound: "bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			logs := &lockedBuffer{}
			m := serve(t, c, newFixture(), nil, func(sc *ServerConfig) {
				sc.LogsDeadline, sc.LogsMaxBytes = tc.deadline, tc.maxBytes
				sc.Logger = slog.New(slog.NewTextHandler(logs, nil))
			})
			n := c.issue(t, pki.RoleWorker)
			ended := make(chan error, 1)
			conn, err := NewConnector(ClientConfig{Managers: []string{m.addr}, TLS: c.params(n, nil).ClientConfig, Logs: endlessNode(tc.trickle, ended)})
			if err != nil {
				t.Fatal(err)
			}
			next(t, open(t, conn))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			rc, err := m.h.Logs(ctx, n.id, "t1", agent.LogOptions{Tail: "all"})
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			type result struct {
				n   int64
				err error
			}
			done := make(chan result, 1)
			go func() {
				w := &capWriter{max: 16 * capBytes}
				_, err := io.Copy(w, rc)
				done <- result{w.n, err}
			}()
			var got result
			select {
			case got = <-done:
			case <-ctx.Done():
				t.Fatal("a stream that does not follow was never cut")
			}
			if got.err != nil {
				t.Fatalf("the cut stream ended with %v after %d bytes; want a clean end", got.err, got.n)
			}
			if got.n == 0 || tc.bound == "bytes" && got.n != capBytes {
				t.Fatalf("read %d bytes before the cut (cap %d)", got.n, tc.maxBytes)
			}
			if k := pendingLogCount(m, n.id); k != 0 {
				t.Fatalf("%d log slots still held after the cut", k)
			}
			select {
			case <-ended:
			case <-ctx.Done():
				t.Fatal("the node's stream went on after the cut")
			}
			if l := logs.String(); !strings.Contains(l, "node="+n.id) || !strings.Contains(l, "bound="+tc.bound) {
				t.Fatalf("the manager's log does not name the node and the bound:\n%s", l)
			}
		})
	}
}

// TestRemoteFollowLogsUnbounded: a followed stream is endless by nature:
// neither the deadline nor the byte cap applies to it; the client going
// away (its request's context ends, without a Close) frees the slot and
// ends the node's stream.
func TestRemoteFollowLogsUnbounded(t *testing.T) {
	const (
		capBytes = 64 << 10
		deadline = 200 * time.Millisecond
	)
	c := newCluster(t)
	m := serve(t, c, newFixture(), nil, func(sc *ServerConfig) {
		sc.LogsDeadline, sc.LogsMaxBytes = deadline, capBytes
	})
	n := c.issue(t, pki.RoleWorker)
	ended := make(chan error, 1)
	conn, err := NewConnector(ClientConfig{Managers: []string{m.addr}, TLS: c.params(n, nil).ClientConfig, Logs: endlessNode(false, ended)})
	if err != nil {
		t.Fatal(err)
	}
	next(t, open(t, conn))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	client, hangUp := context.WithCancel(ctx)
	defer hangUp()
	rc, err := m.h.Logs(client, n.id, "t1", agent.LogOptions{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	// Past both bounds: four times the cap, then (the node paused by
	// flow control meanwhile) past twice the deadline, and more still.
	if _, err := io.CopyN(io.Discard, rc, 4*capBytes); err != nil {
		t.Fatalf("a followed stream ended before four times the cap: %v", err)
	}
	time.Sleep(2 * deadline) // to be past the deadline, not an assertion on time
	if _, err := io.CopyN(io.Discard, rc, capBytes); err != nil {
		t.Fatalf("a followed stream ended past the deadline: %v", err)
	}
	hangUp()
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("the client's going away did not end the node's stream")
	}
	for pendingLogCount(m, n.id) != 0 {
		if ctx.Err() != nil {
			t.Fatal("the client's going away did not free the log slot")
		}
		time.Sleep(10 * time.Millisecond) // polling, bounded by ctx
	}
}

// TestNodeBoundsLogsAnswer: a manager that asks for logs that do not
// follow and then neither reads nor ends the answer does not hold the
// node's slot and engine stream for ever: the node ends its answer at
// its own deadline. Before, it held them until the session ended.
func TestNodeBoundsLogsAnswer(t *testing.T) {
	c := newCluster(t)
	m := serve(t, c, newFixture(), nil)
	n := c.issue(t, pki.RoleWorker)
	ended := make(chan error, 1)
	conn, err := NewConnector(ClientConfig{Managers: []string{m.addr}, TLS: c.params(n, nil).ClientConfig,
		Logs: endlessNode(false, ended), LogsDeadline: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, conn)
	next(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	rc, err := m.h.Logs(ctx, n.id, "t1", agent.LogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close() // only at the end: the manager holds the answer unread
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("the node kept answering a manager that does not read")
	}
	for len(s.logSem) != 0 {
		if ctx.Err() != nil {
			t.Fatal("the node's log slot was not freed")
		}
		time.Sleep(10 * time.Millisecond) // polling, bounded by ctx
	}
}

// TestRelayedLogsBounds: through another manager's relay, a stream that
// does not follow is cut by the manager holding the node's session and
// ends cleanly at the asking manager too (exactly the cap); a followed
// one is ended, and its slot at the holding manager freed, when the
// asking manager's client goes away.
func TestRelayedLogsBounds(t *testing.T) {
	const capBytes = 64 << 10
	c := newCluster(t)
	holder := serve(t, c, newFixture(), nil, func(sc *ServerConfig) { sc.LogsMaxBytes = capBytes })
	n := c.issue(t, pki.RoleWorker)
	ended := make(chan error, 2)
	conn, err := NewConnector(ClientConfig{Managers: []string{holder.addr}, TLS: c.params(n, nil).ClientConfig, Logs: endlessNode(false, ended)})
	if err != nil {
		t.Fatal(err)
	}
	next(t, open(t, conn))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := NewRelayer(c.params(c.issue(t, pki.RoleManager), nil).ClientConfig, nil)
	defer r.Close()

	rc, err := r.Logs(ctx, holder.addr, n.id, "t1", agent.LogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := &capWriter{max: 16 * capBytes}
	_, err = io.Copy(w, rc)
	rc.Close()
	if err != nil || w.n != capBytes {
		t.Fatalf("relayed stream that does not follow: %d bytes, %v; want the cap and a clean end", w.n, err)
	}
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("the node's stream went on after the cut")
	}

	client, hangUp := context.WithCancel(ctx)
	defer hangUp()
	rc, err = r.Logs(client, holder.addr, n.id, "t1", agent.LogOptions{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.CopyN(io.Discard, rc, 4*capBytes); err != nil {
		t.Fatalf("a relayed followed stream ended before four times the cap: %v", err)
	}
	hangUp()
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("the asking client's going away did not end the node's stream")
	}
	for pendingLogCount(holder, n.id) != 0 {
		if ctx.Err() != nil {
			t.Fatal("the asking client's going away did not free the slot at the manager holding the session")
		}
		time.Sleep(10 * time.Millisecond) // polling, bounded by ctx
	}
}
