package dispatchnet

import (
	"crypto/tls"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/pki/pkitest"
)

// h2Preface is what an HTTP/2 client sends first: the preface and an
// empty SETTINGS frame.
var h2Preface = append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)

// dialServed opens a TLS connection to m under n's certificate and says
// whether the server serves it: under TLS 1.3 the client's handshake
// ends before the server has checked its certificate, so a refusal shows
// as the first read's alert, and a served connection as the server's
// SETTINGS frame. The connection is returned open when served.
func dialServed(t *testing.T, c cluster, n node, addr string) (*tls.Conn, bool) {
	t.Helper()
	cfg, err := c.params(n, nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, false
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(h2Preface); err != nil {
		conn.Close()
		return nil, false
	}
	var hdr [9]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		conn.Close()
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the server neither served nor refused a connection")
		}
		return nil, false
	}
	if hdr[3] != 4 {
		t.Fatalf("the server's first frame is of type %d, want SETTINGS", hdr[3])
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, true
}

// A node holds at most its role's number of connections to a manager's
// dispatcher: the next is refused at its handshake, once its certificate
// identified it, while another node still connects; refused connections
// and handshakes that fail (a certificate of the node for another
// cluster) count nothing, and a closed connection frees its place.
func TestConnectionsPerNodeBounded(t *testing.T) {
	for _, tt := range []struct {
		role pki.Role
		max  int
	}{
		{pki.RoleWorker, MaxConnsPerWorker},
		{pki.RoleManager, MaxConnsPerManager},
	} {
		t.Run(string(tt.role), func(t *testing.T) {
			c := newCluster(t)
			m := serve(t, c, newFixture(), nil)
			n := c.issue(t, tt.role)
			foreign := issueAs(t, c, n.id, tt.role, pkitest.NewID(t))
			for range 3 {
				if _, ok := dialServed(t, c, foreign, m.addr); ok {
					t.Fatal("a certificate of another cluster was served")
				}
			}
			var held []*tls.Conn
			t.Cleanup(func() {
				for _, conn := range held {
					conn.Close()
				}
			})
			for i := range tt.max {
				conn, ok := dialServed(t, c, n, m.addr)
				if !ok {
					t.Fatalf("connection %d of %d refused", i+1, tt.max)
				}
				held = append(held, conn)
			}
			for range 3 {
				if conn, ok := dialServed(t, c, n, m.addr); ok {
					conn.Close()
					t.Fatalf("connection %d served, past the bound of %d", tt.max+1, tt.max)
				}
			}
			if got := m.h.conns.count(n.id); got != tt.max {
				t.Fatalf("%d connections counted, want %d (refused ones count nothing)", got, tt.max)
			}
			other := c.issue(t, tt.role)
			conn, ok := dialServed(t, c, other, m.addr)
			if !ok {
				t.Fatal("another node's connection refused")
			}
			conn.Close()

			held[0].Close()
			held = held[1:]
			waitFor(t, "the closed connection is released", func() bool { return m.h.conns.count(n.id) == tt.max-1 })
			conn, ok = dialServed(t, c, n, m.addr)
			if !ok {
				t.Fatal("a connection refused after one closed")
			}
			held = append(held, conn)
			if conn, ok := dialServed(t, c, n, m.addr); ok {
				conn.Close()
				t.Fatal("a connection served past the bound after one closed")
			}
		})
	}
}

// waitFor polls cond until it holds, failing with what after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A connection whose node went away without closing it (no FIN: a host
// cut off) gives its place back once it fails to answer the server's
// ping, not when the idle timeout ends it minutes later: such
// connections would otherwise fill a reconnecting node's bound.
func TestSilentConnectionReleased(t *testing.T) {
	c := newCluster(t)
	m := serve(t, c, newFixture(), nil, func(sc *ServerConfig) { sc.PingEvery = 100 * time.Millisecond })
	n := c.issue(t, pki.RoleWorker)
	conn, ok := dialServed(t, c, n, m.addr)
	if !ok {
		t.Fatal("connection refused")
	}
	defer conn.Close()
	if got := m.h.conns.count(n.id); got != 1 {
		t.Fatalf("%d connections counted, want 1", got)
	}
	// The client reads nothing more and answers no ping.
	waitFor(t, "the silent connection is released", func() bool { return m.h.conns.count(n.id) == 0 })
}
