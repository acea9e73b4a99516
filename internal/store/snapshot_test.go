package store_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/store"
)

// packageKeys seals every store these tests open, so that a store reopened
// (after a restart, or restored from a snapshot) opens with the same keys.
var packageKeys = sync.OnceValue(func() *keyring.Holder {
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		panic(err) // test setup only
	}
	kr, err := keyring.New(mk)
	if err != nil {
		panic(err)
	}
	var h keyring.Holder
	h.Set(kr)
	return &h
})

func openAt(t *testing.T, dir, name string) *store.Store {
	t.Helper()
	s, err := store.OpenEmbedded(context.Background(), store.EmbeddedConfig{Dir: dir, Name: name, Keys: packageKeys()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func memberID(t *testing.T, s *store.Store) uint64 {
	t.Helper()
	resp, err := s.Client().MemberList(context.Background())
	if err != nil || len(resp.Members) != 1 {
		t.Fatalf("member list: %v %v", resp, err)
	}
	return resp.Members[0].ID
}

// TestSnapshotRestore: a snapshot holds exactly what was written before it
// was taken, with the same revisions, and restores as a new member.
func TestSnapshotRestore(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openAt(t, filepath.Join(root, "a"), "node")
	tb := s.Table("things")
	rev, err := tb.Create(ctx, "id1", "one", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Written after Snapshot returned: not in it.
	if _, err := tb.Create(ctx, "id2", "two", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, "snap.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, snap); err != nil {
		t.Fatal(err)
	}
	snap.Close()
	f.Close()
	oldMember := memberID(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(root, "b")
	if err := store.RestoreSnapshot(store.RestoreConfig{Snapshot: path, Dir: dir, Name: "node"}); err != nil {
		t.Fatal(err)
	}
	r := openAt(t, dir, "node")
	defer r.Close()
	o, err := r.Table("things").Get(ctx, "id1")
	if err != nil || string(o.Value) != "v1" || o.ModRev != rev {
		t.Fatalf("restored object: %+v %v (want revision %d)", o, err, rev)
	}
	if _, err := r.Table("things").Get(ctx, "id2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an object written after the snapshot was restored: %v", err)
	}
	if id, err := r.Table("things").LookupName(ctx, "one"); err != nil || id != "id1" {
		t.Fatalf("name index after restore: %q %v", id, err)
	}
	if m := memberID(t, r); m == oldMember {
		t.Fatalf("restored member kept the old member ID %x", m)
	}
	// The restored member takes writes.
	if _, err := r.Table("things").Create(ctx, "id3", "three", []byte("v3")); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreRefusesDamagedSnapshot(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openAt(t, filepath.Join(root, "a"), "node")
	if _, err := s.Table("things").Create(ctx, "id1", "one", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(snap)
	snap.Close()
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	path := filepath.Join(root, "snap.db")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := store.RestoreSnapshot(store.RestoreConfig{Snapshot: path, Dir: filepath.Join(root, "b"), Name: "node"}); err == nil {
		t.Fatal("a damaged snapshot was restored")
	}
	if err := store.RestoreSnapshot(store.RestoreConfig{Snapshot: filepath.Join(root, "none"), Dir: filepath.Join(root, "c"), Name: "node"}); err == nil {
		t.Fatal("a missing snapshot was restored")
	}
}
