// Package storetest starts a real embedded store for tests.
package storetest

import (
	"context"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/store"
)

// New starts an embedded single-member etcd in a temp dir, sealing under a
// fresh master key, and closes it when the test ends.
func New(t testing.TB) *store.Store {
	t.Helper()
	return NewIn(t, t.TempDir(), NewKeys(t))
}

// NewKeys returns a holder loaded with a fresh master key.
func NewKeys(t testing.TB) *keyring.Holder {
	t.Helper()
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	var h keyring.Holder
	h.Set(kr)
	return &h
}

// NewIn starts the store in dir, sealing with keys.
func NewIn(t testing.TB, dir string, keys store.Keys) *store.Store {
	t.Helper()
	s, err := store.OpenEmbedded(context.Background(), store.EmbeddedConfig{
		Dir:          dir,
		Name:         "test",
		EtcdLogLevel: "error",
		Keys:         keys,
	})
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// RunMirror runs mir until the test ends and waits for its first snapshot.
func RunMirror(t testing.TB, mir *store.Mirror) *store.Mirror {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { mir.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := mir.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return mir
}
