package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// A store closed while callers still hold it (the daemon replaces its
// store at a leave or a role change while requests that took it run)
// refuses every request made after with ErrClosed, an unavailable error,
// and ends those in flight: none reaches the stopped etcd server, whose
// backend the in-process client would read (a nil pointer: a panic of
// the whole daemon).
func TestClosedStoreRefuses(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	tb := s.Table("things")
	if _, err := tb.Create(ctx, "id1", "one", []byte("v")); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls atomic.Int64
	failed := make(chan error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if i%2 == 0 {
					_, err = tb.Get(ctx, "id1")
				} else {
					_, err = tb.Create(ctx, fmt.Sprintf("c%d-%d", i, n), "", []byte("v"))
				}
				if err != nil && !errdefs.Is(err, errdefs.ErrUnavailable) {
					failed <- err
					return
				}
				calls.Add(1)
			}
		}()
	}
	for calls.Load() < 20 && len(failed) == 0 {
		if _, err := tb.Get(ctx, "id1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	closedAt := calls.Load()
	for calls.Load() < closedAt+20 && len(failed) == 0 {
		if _, err := tb.Get(ctx, "id1"); err == nil {
			t.Fatal("a closed store answered a read")
		}
	}
	close(stop)
	wg.Wait()
	close(failed)
	for err := range failed {
		t.Errorf("a request around the close: %v (want an unavailable error)", err)
	}
	if _, err := tb.Get(ctx, "id1"); !errors.Is(err, store.ErrClosed) || !errdefs.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("read from a closed store: %v, want ErrClosed", err)
	}
	if _, err := tb.Create(ctx, "id2", "two", []byte("v")); !errors.Is(err, store.ErrClosed) || !errdefs.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("write to a closed store: %v, want ErrClosed", err)
	}
}
