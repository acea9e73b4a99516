package dispatchnet

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/pki"
)

// A session open hands the manager's hook the IP its connection comes
// from (Swarm records it as a worker's Status.Addr), taken from the TCP
// peer, and does so for a node that describes nothing too.
func TestSessionPeerAddr(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	var mu sync.Mutex
	var got []netip.Addr
	m := serve(t, c, f, nil, func(sc *ServerConfig) {
		sc.Describe = func(_ context.Context, _ string, peer netip.Addr, _ *Description) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, peer)
			return nil
		}
	})
	w := c.issue(t, pki.RoleWorker)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.7")}}
	conn, err := NewConnector(ClientConfig{Managers: []string{m.addr}, TLS: c.params(w, nil).ClientConfig, Dial: d.DialContext})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := conn.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.(*Session).Close()
	mu.Lock()
	defer mu.Unlock()
	if want := netip.MustParseAddr("127.0.0.7"); len(got) != 1 || got[0] != want {
		t.Fatalf("the hook saw %v, want one open from %v", got, want)
	}
}
