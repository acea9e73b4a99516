package store_test

import (
	"context"
	"testing"

	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/hush-secrets/hush/internal/testutil/etcdtest"
)

// TestExternalMirrorOthersWrite: a hush under one prefix of an external
// etcd that others write to. etcd's revision is global, and its watch of the
// prefix never sees those writes: a read must still end, with the mirror
// caught up by a progress notification rather than waiting for an event.
func TestExternalMirrorOthersWrite(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	s := openExternal(t, store.ExternalConfig{Endpoints: []string{srv.Endpoint}, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Prefix: "/team-a"})
	awaitReady(t, s)
	if _, err := s.Table("a").Create(ctx, "id1", "one", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	m := runMirror(t, s, "a")
	for i := 0; i < 3; i++ {
		// Someone else's write, outside hush's prefix.
		if _, err := raw.Put(ctx, "/someone-else/key", "x"); err != nil {
			t.Fatal(err)
		}
		if got := snapshot(t, m, "a"); got["id1"] != "v1" || len(got) != 1 {
			t.Fatalf("read %d: %v", i, got)
		}
	}
}

// The same on an embedded store (its in-process client): a write outside
// hush's root moves the revision that reads wait for.
func TestEmbeddedMirrorWriteOutsideRoot(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	if _, err := s.Table("a").Create(ctx, "id1", "one", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	m := runMirror(t, s, "a")
	for i := 0; i < 3; i++ {
		if _, err := s.Client().Put(ctx, "/outside-hush/key", "x"); err != nil {
			t.Fatal(err)
		}
		if got := snapshot(t, m, "a"); got["id1"] != "v1" || len(got) != 1 {
			t.Fatalf("read %d: %v", i, got)
		}
	}
}
