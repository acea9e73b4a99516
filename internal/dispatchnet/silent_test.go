package dispatchnet

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/pki"
)

// silentConn is a connection a partition can silence: once off is closed
// nothing it writes arrives and nothing more is read (no reset, no FIN),
// until it is closed.
type silentConn struct {
	net.Conn
	off    <-chan struct{}
	closed chan struct{}
	once   sync.Once
}

func (c *silentConn) silenced() bool {
	select {
	case <-c.off:
		return true
	default:
		return false
	}
}

func (c *silentConn) Read(p []byte) (int, error) {
	if !c.silenced() {
		n, err := c.Conn.Read(p)
		if !c.silenced() || err != nil {
			return n, err
		}
	}
	<-c.closed
	return 0, net.ErrClosed
}

func (c *silentConn) Write(p []byte) (int, error) {
	if c.silenced() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *silentConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// A manager cut off silently (a partition: no answer, no reset) ends the
// session within a few heartbeat periods, as Swarm's agent bounds each
// heartbeat, so the node moves to another manager before the managers'
// grace runs out; it used to wait for HTTP/2's ping timeout (about 30 s).
func TestSilentManagerEndsSession(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	m := serve(t, c, f, nil)
	off := make(chan struct{})
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &silentConn{Conn: conn, off: off, closed: make(chan struct{})}, nil
	}
	s := open(t, connector(t, c, w, []string{m.addr}, dial))
	next(t, s)
	close(off)
	// The period is 200 ms: a bound far past a few periods, far short of
	// HTTP/2's 15 s + 15 s ping timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Next(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("the session with a silent manager did not end: %v", err)
	}
}
