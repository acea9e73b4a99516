package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

func TestTableLifecycle(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	tb := s.Table("things")

	rev1, err := tb.Create(ctx, "id1", "Alpha", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Create(ctx, "id2", "alpha", []byte("x")); !errors.Is(err, store.ErrNameTaken) || !errdefs.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("case-insensitive duplicate name: got %v", err)
	}
	if _, err := tb.Create(ctx, "id1", "other", []byte("x")); !errors.Is(err, store.ErrNameTaken) {
		t.Fatalf("duplicate id: got %v", err)
	}
	id, err := tb.LookupName(ctx, "ALPHA")
	if err != nil || id != "id1" {
		t.Fatalf("lookup: %q %v", id, err)
	}
	o, err := tb.Get(ctx, "id1")
	if err != nil || string(o.Value) != "v1" || o.ModRev != rev1 || o.CreateRev != rev1 {
		t.Fatalf("get: %+v %v", o, err)
	}
	rev2, err := tb.Update(ctx, "id1", rev1, []byte("v2"))
	if err != nil || rev2 <= rev1 {
		t.Fatalf("update: %d %v", rev2, err)
	}
	if _, err := tb.Update(ctx, "id1", rev1, []byte("v3")); !errors.Is(err, store.ErrStale) {
		t.Fatalf("stale update: %v", err)
	}
	if _, err := tb.Update(ctx, "nope", 1, []byte("v3")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update missing: %v", err)
	}
	// A guard on a reference prefix refuses the delete while a marker exists.
	if _, err := s.Client().Put(ctx, store.RefKey("things", "id1", "owner1"), ""); err != nil {
		t.Fatal(err)
	}
	noRefs := store.NoneUnder(store.RefPrefix("things", "id1"))
	if err := tb.Delete(ctx, "id1", "Alpha", 0, []store.Cond{noRefs}); !errors.Is(err, store.ErrGuard) {
		t.Fatalf("guarded delete: %v", err)
	}
	if _, err := s.Client().Delete(ctx, store.RefKey("things", "id1", "owner1")); err != nil {
		t.Fatal(err)
	}
	if err := tb.Delete(ctx, "id1", "Alpha", 0, []store.Cond{noRefs}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := tb.Get(ctx, "id1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := tb.Delete(ctx, "id1", "Alpha", 0, nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	// The name is free again.
	if _, err := tb.Create(ctx, "id3", "alpha", []byte("x")); err != nil {
		t.Fatal(err)
	}
	all, err := tb.List(ctx)
	if err != nil || len(all) != 1 || all[0].ID != "id3" {
		t.Fatalf("list: %+v %v", all, err)
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	keys := storetest.NewKeys(t)
	open := func() *store.Store {
		s, err := store.OpenEmbedded(ctx, store.EmbeddedConfig{Dir: dir, Name: "n1", EtcdLogLevel: "error", Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	if _, err := s.Table("k").Create(ctx, "a", "a", []byte("durable")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open()
	defer s.Close()
	o, err := s.Table("k").Get(ctx, "a")
	if err != nil || string(o.Value) != "durable" {
		t.Fatalf("after reopen: %+v %v", o, err)
	}
}
