package daemon

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// A worker runs only the agent (issue 9): no embedded etcd, no etcd data
// in its data dir, after its join and after a restart that finds
// worker.json. Every path that reads the store on a worker gets Swarm's
// not-a-manager refusal rather than a nil store; its leave brings back
// what an inactive node holds.
func TestWorkerHoldsNoStore(t *testing.T) {
	ctx := context.Background()
	_, w, _ := managerAndWorker(t, syncEvery(0), workerWithoutListen())
	wdir := w.cfg.DataDir
	etcdDir := filepath.Join(wdir, "etcd")
	checkNoStore := func(w *Daemon, when string) {
		t.Helper()
		if _, err := os.Stat(etcdDir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: a worker's data dir holds etcd data (%v)", when, err)
		}
		st := w.curStore()
		if st == nil {
			t.Fatalf("%s: a worker's store is nil: a reader would crash the daemon", when)
		}
		if _, err := nodes.List(ctx, st); !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), msgNotManager) {
			t.Fatalf("%s: reading a worker's store: %v, want %q", when, err, msgNotManager)
		}
		if _, err := cluster.Get(ctx, st); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("%s: reading the cluster on a worker: %v", when, err)
		}
		// The API: swarm calls refused with Swarm's text, the node's own
		// description served, nothing a 500 or a crash.
		for _, c := range []struct {
			method, path string
			want         int
		}{
			{"GET", "/_ping", http.StatusOK},
			{"GET", "/info", http.StatusOK},
			{"GET", "/v1.44/secrets", http.StatusServiceUnavailable},
			{"GET", "/v1.44/configs", http.StatusServiceUnavailable},
			{"GET", "/v1.44/services", http.StatusServiceUnavailable},
			{"GET", "/v1.44/nodes", http.StatusServiceUnavailable},
			{"GET", "/v1.44/tasks", http.StatusServiceUnavailable},
			{"GET", "/v1.44/swarm", http.StatusServiceUnavailable},
			{"POST", "/v1.44/swarm/update?version=1", http.StatusServiceUnavailable},
			{"GET", "/v1.44/swarm/unlockkey", http.StatusServiceUnavailable},
			{"POST", "/v1.44/networks/create", http.StatusServiceUnavailable},
			{"POST", "/hush/v1/backup", http.StatusServiceUnavailable},
			// Lifecycle calls a worker answers itself (0: any answer
			// but a 500).
			{"POST", "/v1.44/swarm/unlock", 0},
			{"POST", "/v1.44/swarm/join", 0},
			{"POST", "/v1.44/swarm/init", 0},
			{"GET", "/v1.44/events?since=1&until=2", 0},
		} {
			body := strings.NewReader("{}")
			if c.path == "/v1.44/networks/create" {
				body = strings.NewReader(`{"Name":"nostore-test","Driver":"overlay"}`)
			}
			req := httptest.NewRequest(c.method, c.path, body)
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			w.serveAPI(rec, req)
			if c.want == 0 {
				if rec.Code == http.StatusInternalServerError {
					t.Errorf("%s: %s %s on a worker: %d %s", when, c.method, c.path, rec.Code, rec.Body)
				}
				t.Logf("%s: %s %s on a worker: %d %s", when, c.method, c.path, rec.Code, strings.TrimSpace(rec.Body.String()))
				continue
			}
			if rec.Code != c.want {
				t.Errorf("%s: %s %s on a worker: %d %s, want %d", when, c.method, c.path, rec.Code, rec.Body, c.want)
			}
			if c.want == http.StatusServiceUnavailable && !strings.Contains(rec.Body.String(), "Worker nodes can't be used") {
				t.Errorf("%s: %s %s on a worker: %s, want Swarm's not-a-manager text", when, c.method, c.path, rec.Body)
			}
		}
		if err := w.CheckServing(); err == nil || err.Error() != msgNotManager {
			t.Fatalf("%s: swarm calls on a worker: %v", when, err)
		}
	}
	checkNoStore(w, "after the join")
	w.Close()
	w = startWith(t, Config{DataDir: wdir, NoInit: true})
	checkNoStore(w, "after a restart")
	if err := w.Leave(ctx, false); err != nil {
		t.Fatalf("leave: %v", err)
	}
	// Inactive again: the node holds an inactive node's empty store, so
	// that a later init or manager join finds what it expects.
	if w.State() != swarm.LocalNodeStateInactive || w.CheckServing() == nil || w.CheckServing().Error() != msgInactive {
		t.Fatalf("after leave: %s %v", w.State(), w.CheckServing())
	}
	if _, err := nodes.List(ctx, w.curStore()); err != nil {
		t.Fatalf("an inactive node's store after a worker's leave: %v", err)
	}
}

// A node that joined as a worker and is later restarted with etcd data
// left over (a crash between worker.json and the removal of the inactive
// node's store) removes it at start.
func TestWorkerStartRemovesLeftoverStore(t *testing.T) {
	_, w, _ := managerAndWorker(t, syncEvery(0), workerWithoutListen())
	wdir := w.cfg.DataDir
	w.Close()
	if err := os.MkdirAll(filepath.Join(wdir, "etcd", "member"), 0o700); err != nil {
		t.Fatal(err)
	}
	w = startWith(t, Config{DataDir: wdir, NoInit: true})
	if _, err := os.Stat(filepath.Join(wdir, "etcd")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a restarted worker kept etcd data (%v)", err)
	}
	if w.State() != swarm.LocalNodeStateActive {
		t.Fatalf("state %s", w.State())
	}
}

// The store follows the role (issue 9): a promoted worker becomes an etcd
// member through the join path, a demoted manager holds no store again
// (its etcd data gone), and a worker the managers removed (`node rm`)
// leaves back to an inactive node's empty store.
func TestWorkerRoleChangesHoldNoStore(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t)
	etcdDir := filepath.Join(w.cfg.DataDir, "etcd")
	detached := func(when string) {
		t.Helper()
		if _, err := os.Stat(etcdDir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: a worker's data dir holds etcd data (%v)", when, err)
		}
		if !store.IsDetached(w.curStore()) {
			t.Fatalf("%s: a worker holds a store", when)
		}
	}
	detached("after the join")
	promoted(t, m, w, "the promoted worker votes")
	if _, err := os.Stat(etcdDir); err != nil {
		t.Fatalf("a promoted worker's member keeps no data: %v", err)
	}
	if _, err := nodes.List(ctx, w.curStore()); store.IsDetached(w.curStore()) || err != nil {
		t.Fatalf("a promoted worker reads the cluster: %v", err)
	}
	demoted(t, m, w, "the demoted manager is a worker")
	detached("after a demotion")
	w.mu.Lock()
	ws := w.worker
	w.mu.Unlock()
	w.removedFromCluster(ws)
	waitUntil(t, "the removed worker leaves", func() bool { return w.State() == swarm.LocalNodeStateInactive })
	w.mu.Lock()
	st := w.store
	w.mu.Unlock()
	if store.IsDetached(st) {
		t.Fatal("an inactive node after a removal holds no store")
	}
	if _, err := nodes.List(ctx, st); err != nil {
		t.Fatalf("an inactive node's store after a removal: %v", err)
	}
}
