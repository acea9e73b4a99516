package events

import (
	"context"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/hush-secrets/hush/internal/testutil/etcdtest"
)

// TestWaitOthersWriteExternal: under a prefix of an external etcd that
// others write to, a history read must not wait for a revision that the
// source's prefix-limited watch never sees as an event.
func TestWaitOthersWriteExternal(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	st, err := store.OpenExternal(ctx, store.ExternalConfig{Endpoints: []string{srv.Endpoint}, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Prefix: "/team-a", Keys: storetest.NewKeys(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	select {
	case <-st.Ready():
	case <-time.After(60 * time.Second):
		t.Fatal("external store not ready within 60s")
	}
	s := runSource(t, st, Config{})
	for i := 0; i < 3; i++ {
		if _, err := raw.Put(ctx, "/someone-else/key", "x"); err != nil {
			t.Fatal(err)
		}
		if err := s.Wait(ctx); err != nil {
			t.Fatalf("wait %d: %v", i, err)
		}
	}
}
