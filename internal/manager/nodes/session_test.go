package nodes_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

// A session open records where the node's connection came from and its
// description in one write, and writes nothing when neither changed (a
// node reopening from the same place costs no write). An open that knows
// no address keeps the recorded one; the advertised Addr is never
// touched; an IPv4 connection seen over IPv6 is recorded as IPv4.
func TestRecordSession(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	const id = "aaaaaaaaaaaaaaaaaaaaaaaaa"
	if _, err := nodes.Record(ctx, st, nodes.Node{ID: id, Addr: "127.0.0.1:0", Spec: swarm.NodeSpec{Role: swarm.NodeRoleWorker}}); err != nil {
		t.Fatal(err)
	}
	get := func() nodes.Node {
		t.Helper()
		n, err := nodes.Get(ctx, st, id)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	desc := &nodes.Description{OS: "linux"}
	v0 := get().Version
	if err := nodes.RecordSession(ctx, st, id, netip.MustParseAddr("::ffff:10.0.0.7"), desc); err != nil {
		t.Fatal(err)
	}
	n := get()
	if n.SeenAddr != "10.0.0.7" || n.Description == nil || n.Description.OS != "linux" || n.Addr != "127.0.0.1:0" {
		t.Fatalf("recorded %+v, want SeenAddr 10.0.0.7, the description, Addr kept", n)
	}
	if n.Version != v0+1 {
		t.Fatalf("version %d after one open, want %d: one write", n.Version, v0+1)
	}
	for _, tc := range []struct {
		name string
		seen netip.Addr
		desc *nodes.Description
	}{
		{"same address and description", netip.MustParseAddr("10.0.0.7"), desc},
		{"no address known, same description", netip.Addr{}, desc},
		{"same address, no description", netip.MustParseAddr("10.0.0.7"), nil},
	} {
		if err := nodes.RecordSession(ctx, st, id, tc.seen, tc.desc); err != nil {
			t.Fatal(err)
		}
		if got := get(); got.Version != n.Version || got.SeenAddr != "10.0.0.7" {
			t.Fatalf("%s: version %d, SeenAddr %q; want nothing written", tc.name, got.Version, got.SeenAddr)
		}
	}
	if err := nodes.RecordSession(ctx, st, id, netip.MustParseAddr("10.0.0.8"), nil); err != nil {
		t.Fatal(err)
	}
	if got := get(); got.SeenAddr != "10.0.0.8" || got.Description == nil {
		t.Fatalf("recorded %+v, want SeenAddr 10.0.0.8 and the description kept", got)
	}
}
