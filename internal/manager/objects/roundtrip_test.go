package objects

import (
	"fmt"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// Creating a secret is one etcd request once the manager's keys are
// loaded: on a cluster, one raft round and no read-index round per create.
func TestCreateIsOneEtcdRequest(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := t.Context()
	if _, err := m.Create(ctx, Spec{Name: "warm", Data: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	requests := storetest.CountRequests(st)
	const n = 5
	for i := range n {
		if _, err := m.Create(ctx, Spec{Name: fmt.Sprintf("s%d", i), Data: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	if got := requests.Load(); got != n {
		t.Fatalf("%d creates sent %d etcd requests, want %d", n, got, n)
	}
}

// TestRemoveByIDIsOneEtcdRequest: a remove by full ID of an object the
// mirror holds is the guarded delete alone, with no read before it.
func TestRemoveByIDIsOneEtcdRequest(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := t.Context()
	useMirror(t, m, st)
	const n = 5
	ids := make([]string, n)
	for i := range n {
		id, err := m.Create(ctx, Spec{Name: fmt.Sprintf("s%d", i), Data: []byte("v")})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	// A list waits for the mirror to hold every create.
	if objs, err := m.List(ctx, Filters{}); err != nil || len(objs) != n {
		t.Fatalf("list: %d objects, %v", len(objs), err)
	}
	requests := storetest.CountRequests(st)
	for _, id := range ids {
		if err := m.Remove(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if got := requests.Load(); got != n {
		t.Fatalf("%d removes by ID sent %d etcd requests, want %d", n, got, n)
	}
	for _, id := range ids {
		if _, err := m.Get(ctx, id); !errdefs.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("get %s after remove: %v", id, err)
		}
	}
}
