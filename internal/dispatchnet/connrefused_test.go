package dispatchnet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
)

// A certificate refused although it verifies (here a demoted node's old
// manager certificate, kept or stolen) takes none of the places of its
// node's current certificate: its connections count apart, and only a
// few. One refused after its handshake leaves its node's count at its
// first refused call.
func TestRefusedCertificateTakesNoPlaces(t *testing.T) {
	c := newCluster(t)
	var mu sync.Mutex
	refused := map[string]bool{}
	hook := func(_ context.Context, id string, leaf *x509.Certificate) error {
		mu.Lock()
		defer mu.Unlock()
		if refused[leaf.SerialNumber.Text(16)] {
			return errdefs.Unauthorized("node %s's certificate is superseded", id)
		}
		return nil
	}
	refuse := func(n node) {
		mu.Lock()
		refused[n.cert.Leaf.SerialNumber.Text(16)] = true
		mu.Unlock()
	}
	m := serve(t, c, newFixture(), nil, func(sc *ServerConfig) {
		sc.RefuseWorker, sc.RefuseManager = hook, hook
		sc.HeartbeatPeriod = func() time.Duration { return time.Hour }
	})
	var held []*tls.Conn
	t.Cleanup(func() {
		for _, conn := range held {
			conn.Close()
		}
	})

	current := c.issue(t, pki.RoleWorker)
	old := issueAs(t, c, current.id, pki.RoleManager, c.Cluster)
	refuse(old)
	served := 0
	for range MaxConnsPerManager {
		conn, ok := dialServed(t, c, old, m.addr)
		if !ok {
			break
		}
		held = append(held, conn)
		served++
	}
	if served >= MaxConnsPerWorker || served > MaxConnsRefused {
		t.Fatalf("a refused certificate holds %d connections, want at most %d", served, MaxConnsRefused)
	}
	for i := range MaxConnsPerWorker {
		conn, ok := dialServed(t, c, current, m.addr)
		if !ok {
			t.Fatalf("the node's current certificate: connection %d of %d refused, its refused one holding %d", i+1, MaxConnsPerWorker, served)
		}
		held = append(held, conn)
	}

	later := c.issue(t, pki.RoleWorker)
	s := open(t, connector(t, c, later, []string{m.addr}, nil))
	next(t, s)
	if got := m.h.conns.count(later.id); got != 1 {
		t.Fatalf("the session's node holds %d connections, want 1", got)
	}
	refuse(later)
	if code, we := rawPost(t, s, pathHeartbeat, map[string]string{SessionHeader: s.id}, struct{}{}); code != http.StatusUnauthorized {
		t.Fatalf("a heartbeat under a refused certificate: %d %+v, want 401", code, we)
	}
	if got := m.h.conns.count(later.id); got != 0 {
		t.Fatalf("after a refused call its connection still counts among the node's: %d", got)
	}
}

// A check that fails (the daemon's read of what it refuses, unavailable)
// is answered as it is, and ends nothing: the session opened under that
// certificate stays, and its node asks again.
func TestFailedCheckEndsNoSession(t *testing.T) {
	c := newCluster(t)
	var mu sync.Mutex
	failing := false
	hook := func(_ context.Context, id string, _ *x509.Certificate) error {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			return errdefs.Unavailable("the refusals could not be read")
		}
		return nil
	}
	m := serve(t, c, newFixture(), nil, func(sc *ServerConfig) {
		sc.RefuseWorker = hook
		sc.HeartbeatPeriod = func() time.Duration { return time.Hour }
	})
	n := c.issue(t, pki.RoleWorker)
	s := open(t, connector(t, c, n, []string{m.addr}, nil))
	next(t, s)
	mu.Lock()
	failing = true
	mu.Unlock()
	if code, we := rawPost(t, s, pathHeartbeat, map[string]string{SessionHeader: s.id}, struct{}{}); code != http.StatusServiceUnavailable {
		t.Fatalf("a heartbeat while the check fails: %d %+v, want 503", code, we)
	}
	if !m.h.current(n.id) {
		t.Fatal("a failed check ended the session")
	}
	if got := m.h.conns.count(n.id); got != 1 {
		t.Fatalf("after a failed check the node holds %d counted connections, want 1", got)
	}
	mu.Lock()
	failing = false
	mu.Unlock()
	if code, we := rawPost(t, s, pathHeartbeat, map[string]string{SessionHeader: s.id}, struct{}{}); code != http.StatusOK {
		t.Fatalf("a heartbeat once the check reads again: %d %+v", code, we)
	}
}
