package daemon

import (
	"context"
	"net"
	"testing"

	"github.com/hush-secrets/hush/internal/manager/nodes"
)

// A worker's Status.Addr (`docker node ls`/`node inspect`) is the IP its
// dispatcher session comes from, as the manager holding the session sees
// it: Swarm's dispatcher takes it from the session's peer address, for a
// worker that gave --advertise-addr too. hush showed the address the
// worker said at join: its hushd's default 127.0.0.1 for one joined
// without --advertise-addr, wherever it ran. The address the worker
// advertised stays recorded apart (a promotion needs it). This test's
// daemons have no engine, so no worker agent: the session is opened
// under the worker's certificate as its agent would, from another
// loopback address, as a worker on another host is seen.
func TestWorkerStatusAddrObserved(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []pairOption
		from string
	}{
		{"no advertise address", []pairOption{workerWithoutListen()}, "127.0.0.5"},
		{"advertise address given", nil, "127.0.0.6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			m, w, _ := managerAndWorker(t, tc.opts...)
			before, err := nodes.Get(ctx, m.store, w.nodeID)
			if err != nil {
				t.Fatal(err)
			}
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.from)}}
			if err := openSessionFrom(t, m, *w.cert.Load(), d.DialContext); err != nil {
				t.Fatalf("session open: %v", err)
			}
			// The open records the address before it is answered.
			_, others, ok, err := clusterNodes{m}.Managers(ctx)
			if err != nil || !ok || len(others) != 1 {
				t.Fatalf("node list: %d others, ok %v, %v", len(others), ok, err)
			}
			if got := others[0].Status.Addr; got != tc.from {
				t.Fatalf("the worker's Status.Addr is %q, want %q (where its session comes from)", got, tc.from)
			}
			after, err := nodes.Get(ctx, m.store, w.nodeID)
			if err != nil {
				t.Fatal(err)
			}
			if after.Addr != before.Addr {
				t.Fatalf("the worker's advertised address %q was replaced by %q", before.Addr, after.Addr)
			}
		})
	}
}
