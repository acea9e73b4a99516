package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/swarm"
)

// storeReaders are API calls that read the daemon's store without d.mu
// (each takes it once per request: curStore), named as the client sees
// them.
func storeReaders(d *Daemon) []struct {
	name string
	call func(context.Context) error
} {
	return []struct {
		name string
		call func(context.Context) error
	}{
		{"swarm inspect", func(ctx context.Context) error { _, err := d.Inspect(ctx); return err }},
		{"swarm unlock-key", func(ctx context.Context) error { _, err := d.UnlockKey(ctx); return err }},
		{"info's cluster", func(ctx context.Context) error { _, err := clusterSource{d}.Cluster(ctx); return err }},
		{"node ls", func(ctx context.Context) error { _, _, _, err := clusterNodes{d}.Managers(ctx); return err }},
		{"hush key info", func(ctx context.Context) error { _, err := d.KeyInfo(ctx); return err }},
		{"network create's pools", func(ctx context.Context) error { _, _, err := d.addrPools(ctx); return err }},
		{"swarm update's autolock check", func(ctx context.Context) error {
			d.autolockChangeAsked(ctx, swarm.Spec{}, true)
			return nil
		}},
	}
}

// readStoreDuring runs every storeReaders call in a loop while change
// (a leave, a demotion) closes the daemon's store and opens another, and
// a few rounds after it: each call either answers or fails with an
// unavailable error (the node is changing, or no longer a manager) or a
// not-found one (no cluster left);
// none panics, hangs or races with the swap (under -race, reading the
// d.store field there did).
func readStoreDuring(t *testing.T, d *Daemon, change func() error) {
	t.Helper()
	readers := storeReaders(d)
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	failed := make(chan error, len(readers))
	calls := make([]atomic.Int64, len(readers))
	for i, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Not found: the node holds no cluster any more.
				if err := r.call(ctx); err != nil && !errors.Is(err, errdefs.ErrUnavailable) && !errors.Is(err, errdefs.ErrNotFound) {
					failed <- fmt.Errorf("%s: %w", r.name, err)
					return
				}
				calls[i].Add(1)
			}
		}()
	}
	// A few rounds of each before and after the change.
	rounds := func(n int64) func() bool {
		return func() bool {
			for i := range calls {
				if calls[i].Load() < n && len(failed) == 0 {
					return false
				}
			}
			return true
		}
	}
	waitUntil(t, "every reader ran", rounds(3))
	before := make([]int64, len(calls))
	for i := range calls {
		before[i] = calls[i].Load()
	}
	err := change()
	waitUntil(t, "every reader ran after the change", func() bool {
		for i := range calls {
			if calls[i].Load() < before[i]+3 && len(failed) == 0 {
				return false
			}
		}
		return true
	})
	close(stop)
	wg.Wait()
	close(failed)
	for err := range failed {
		t.Error(err)
	}
	if err != nil {
		t.Fatalf("the change: %v", err)
	}
}

// `swarm leave --force` on a manager closes its store (and its etcd
// member) and opens an inactive node's while API calls read the store.
func TestStoreReadsDuringLeave(t *testing.T) {
	m := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t)})
	if m.store.Members() == nil {
		t.Fatal("a manager with a listen address runs no etcd member: its leave swaps no member store")
	}
	readStoreDuring(t, m, func() error { return m.Leave(context.Background(), true) })
	if st := m.State(); st != swarm.LocalNodeStateInactive {
		t.Fatalf("after the leave: %s, want inactive", st)
	}
}

// A manager demoted through another one closes its store (and its etcd
// member) and opens a worker's, from its sync loop, while API calls read
// the store.
func TestStoreReadsDuringDemotion(t *testing.T) {
	ctx := context.Background()
	ms := startManagers(t, 2)
	m := ms[1].d
	readStoreDuring(t, m, func() error {
		if err := setRole(ctx, ms[0].d, m.nodeID, swarm.NodeRoleWorker); err != nil {
			return err
		}
		waitUntil(t, "the demoted manager runs as a worker", m.isWorker)
		return nil
	})
}
