// Package storetest starts a real embedded store for tests.
package storetest

import (
	"context"
	"testing"

	"github.com/hush-secrets/hush/internal/store"
)

// New starts an embedded single-member etcd in a temp dir and closes it when
// the test ends.
func New(t testing.TB) *store.Store {
	t.Helper()
	s, err := store.OpenEmbedded(context.Background(), store.EmbeddedConfig{
		Dir:          t.TempDir(),
		Name:         "test",
		EtcdLogLevel: "error",
	})
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
