package dispatchnet

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
)

// TestSessionOpensBounded: each session a node opens costs the manager a
// full set (every data version its tasks hold read and decrypted again)
// and may write its node record (the description); a node opening
// sessions in a loop, or two hosts sharing one identity replacing each
// other's session, is refused past a burst, and the refusal costs
// nothing of that. Another node is not held to the first one's count.
func TestSessionOpensBounded(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	var described atomic.Int32
	m := serve(t, c, f, nil, func(sc *ServerConfig) {
		sc.OpenBurst, sc.OpenEvery = 3, time.Hour
		sc.Describe = func(context.Context, string, netip.Addr, *Description) error {
			described.Add(1)
			return nil
		}
	})
	w := c.issue(t, pki.RoleWorker)
	openOnce := func(n node) error {
		t.Helper()
		p := c.params(n, nil)
		conn, err := NewConnector(ClientConfig{Managers: []string{m.addr}, TLS: p.ClientConfig,
			Describe: func() Description { return Description{OS: "linux"} }})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := conn.Open(ctx)
		if err == nil {
			s.(*Session).Close()
		}
		return err
	}
	for i := range 3 {
		if err := openOnce(w); err != nil {
			t.Fatalf("open %d: %v", i+1, err)
		}
	}
	err := openOnce(w)
	if !errdefs.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("open past the burst: %v, want unavailable", err)
	}
	if n := described.Load(); n != 3 {
		t.Fatalf("%d descriptions recorded, want 3: a refused open must cost nothing", n)
	}
	if err := openOnce(c.issue(t, pki.RoleWorker)); err != nil {
		t.Fatalf("another node's open: %v", err)
	}
}
