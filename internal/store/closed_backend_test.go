package store_test

import (
	"errors"
	"testing"

	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// CompactAll's defragment and the quota reclaim's backend commits call
// the embedded server's backend directly, not through the client the
// closing gate covers. One that runs after the store closed (its caller
// passed the gated compaction or read just before a leave or a role
// change closed it) reached the closed backend, where etcd ends the
// process (a fatal log: a commit on a closed bolt database), the crash
// the gate exists to prevent. They are gated too: after Close they fail
// with ErrClosed.
func TestClosedStoreBackendCallsRefused(t *testing.T) {
	s := storetest.New(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := store.DefragForTest(s); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("defragment after Close: %v; want ErrClosed", err)
	}
	if err := store.ForceCommitForTest(s); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("backend commit after Close: %v; want ErrClosed", err)
	}
}
