package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
)

// A Detached store (a worker's) refuses every read and write with the
// refusal it was given, sealed tables included, and never blocks a watch
// past its context.
func TestDetachedRefuses(t *testing.T) {
	ctx := context.Background()
	no := errdefs.Unavailable("no store here")
	s := store.Detached(no, nil)
	if !store.IsDetached(s) {
		t.Fatal("not detached")
	}
	tbl := s.Table("secrets")
	if _, err := tbl.List(ctx); !errors.Is(err, errdefs.ErrUnavailable) || !errors.Is(err, no) {
		t.Fatalf("list: %v", err)
	}
	if _, err := tbl.Get(ctx, "x"); !errors.Is(err, no) {
		t.Fatalf("get: %v", err)
	}
	if _, err := tbl.Create(ctx, "x", "n", []byte("v")); !errors.Is(err, no) {
		t.Fatalf("create: %v", err)
	}
	if _, err := s.Revision(ctx); !errors.Is(err, no) {
		t.Fatalf("revision: %v", err)
	}
	if s.Members() != nil {
		t.Fatal("a detached store has members")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}
