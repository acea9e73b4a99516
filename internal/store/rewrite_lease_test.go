package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// A cluster member's store holds lease-bound keys that are not sealed (an
// election's keys, presence claims): a master-key rotation goes past them,
// neither failing on them nor sealing them (their readers are etcd's
// election and Present, which read them raw).
func TestRewriteSkipsLeaseBoundKeys(t *testing.T) {
	ctx := context.Background()
	keys := storetest.NewKeys(t)
	st := storetest.NewIn(t, t.TempDir(), keys)
	m := objects.New(objects.Secret, st, keys, nil)
	st.RegisterInner(objects.Secret.Table, m.RewrapData)
	st.RegisterInner(objects.FingerprintTable, objects.RewrapFingerprintKey)
	if _, err := m.Create(ctx, objects.Spec{Name: "s", Data: []byte("data")}); err != nil {
		t.Fatal(err)
	}
	l, err := st.Campaign(ctx, "orchestrator", "m1", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Resign(context.Background()) }()
	p, err := st.NewPresence("m1", 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Claim(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	runPresence(t, p)
	waitPresent(t, st, "n1", []string{"m1"}, 10*time.Second)

	oldID, _ := rotate(t, keys)
	if left, err := st.Referencing(ctx, oldID); err != nil || left == 0 {
		t.Fatalf("before the re-wrap: %d values need the old key, %v", left, err)
	}
	if _, err := st.Rewrap(ctx, nil); err != nil {
		t.Fatalf("re-wrap with an election and presence claims: %v", err)
	}
	if left, err := st.Referencing(ctx, oldID); err != nil || left != 0 {
		t.Fatalf("after the re-wrap: %d values need the old key, %v", left, err)
	}
	// Untouched: the leadership holds and the claim reads as before.
	if err := l.Check(ctx); err != nil {
		t.Fatalf("leadership after the re-wrap: %v", err)
	}
	waitPresent(t, st, "n1", []string{"m1"}, time.Second)
	for k, v := range rawKVs(t, st) {
		if len(v) > 3 && string(v[:3]) == "\xffhs" {
			continue
		}
		if !store.LeaseBoundForTest(k) {
			t.Errorf("%s not sealed", k)
		}
	}
}
