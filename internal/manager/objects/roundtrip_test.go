package objects

import (
	"fmt"
	"testing"

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
