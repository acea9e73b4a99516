package daemon

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/moby/moby/api/types/swarm"
)

// A node joining with the worker token gets a worker certificate and its
// node record, but no master key and no etcd membership; it serves no
// swarm call (Swarm's not-a-manager text), refuses a second join, resumes
// worker mode after a restart, and leaves.
func TestWorkerJoin(t *testing.T) {
	mdir := t.TempDir()
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))
	m := startWith(t, Config{DataDir: mdir, ListenAddr: listen})
	c := getCluster(t, m)
	ctx := context.Background()

	wdir := t.TempDir()
	w := startWith(t, Config{DataDir: wdir, NoInit: true})
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{listen}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	checkWorker := func(w *Daemon) {
		t.Helper()
		if w.State() != swarm.LocalNodeStateActive {
			t.Fatalf("state %s, want active", w.State())
		}
		if err := w.CheckServing(); !errors.Is(err, errdefs.ErrUnavailable) || err.Error() != msgInactive {
			t.Fatalf("swarm calls on a worker: %v, want %q", err, msgInactive)
		}
		si, ok := w.WorkerInfo()
		if !ok || si.ControlAvailable || si.NodeID != w.nodeID || len(si.RemoteManagers) != 1 || si.RemoteManagers[0].Addr != listen {
			t.Fatalf("worker info %+v %v", si, ok)
		}
		for _, f := range []string{"member.json", "keys/master.key"} {
			if _, err := os.Stat(filepath.Join(wdir, f)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a worker holds %s (%v)", f, err)
			}
		}
		fi, err := os.Stat(filepath.Join(wdir, "keys", "node.key"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("node key: %v %v", fi, err)
		}
		if w.store.Members() != nil {
			t.Fatal("a worker's store is a cluster member")
		}
	}
	checkWorker(w)
	n, err := nodes.Get(ctx, m.store, w.nodeID)
	if err != nil || n.Spec.Role != swarm.NodeRoleWorker || n.Spec.Availability != swarm.NodeAvailabilityActive {
		t.Fatalf("manager's record of the worker: %+v %v", n, err)
	}
	if list, _ := m.store.Members().List(ctx); len(list) != 1 {
		t.Fatalf("a worker became an etcd member: %+v", list)
	}
	self, others, ok, err := clusterNodes{m}.Managers(ctx)
	if err != nil || !ok || self == nil || len(others) != 1 || others[0].ManagerStatus != nil || others[0].Spec.Role != swarm.NodeRoleWorker {
		t.Fatalf("node ls: %+v %v", others, err)
	}
	err = w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{listen}, JoinToken: c.JoinTokens.Worker})
	if !errors.Is(err, errdefs.ErrUnavailable) || err.Error() != msgJoined {
		t.Fatalf("second join: %v", err)
	}
	w.Close()
	w = startWith(t, Config{DataDir: wdir, NoInit: true})
	checkWorker(w)
	if err := w.Leave(ctx, false); err != nil {
		t.Fatalf("leave: %v", err)
	}
	if w.State() != swarm.LocalNodeStateInactive || w.CheckServing() == nil {
		t.Fatalf("after leave: %s", w.State())
	}
	if _, err := os.Stat(filepath.Join(wdir, "keys", "node.key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("node key kept after leave: %v", err)
	}
}
