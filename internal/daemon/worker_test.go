package daemon

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

// A node joining with the worker token gets a worker certificate and its
// node record, but no master key and no etcd membership; it serves no
// swarm call (Swarm's not-a-manager text), refuses a second join, resumes
// worker mode after a restart, and leaves.
func TestWorkerJoin(t *testing.T) {
	ctx := context.Background()
	m, w, c := managerAndWorker(t, syncEvery(0), workerWithoutListen())
	listen, wdir := m.cfg.ListenAddr, w.cfg.DataDir
	checkWorker := func(w *Daemon) {
		t.Helper()
		if w.State() != swarm.LocalNodeStateActive {
			t.Fatalf("state %s, want active", w.State())
		}
		if err := w.CheckServing(); !errors.Is(err, errdefs.ErrUnavailable) || err.Error() != msgNotManager {
			t.Fatalf("swarm calls on a worker: %v, want %q", err, msgNotManager)
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

// A join names its own node ID, so a recorded ID is admitted only for the
// key its record was certified for: a holder of a join token who names
// another node's ID gets a refusal and no certificate, while the node
// itself joins again with its kept key (a lost answer, a leave).
func TestJoinNodeIDBoundToKey(t *testing.T) {
	ctx := context.Background()
	m, w, c := managerAndWorker(t, syncEvery(0), workerWithoutListen())
	listen, wdir := m.cfg.ListenAddr, w.cfg.DataDir
	// A manager recorded without a key (as before keys were recorded) and
	// with no etcd member; and an etcd member named by an unrecorded ID.
	legacy := "x4u9cdtqgk1jzlw4o0wq7mdlc"
	if _, err := nodes.Record(ctx, m.store, nodes.Node{ID: legacy, Addr: "127.0.0.9:2377",
		Spec: swarm.NodeSpec{Role: swarm.NodeRoleManager}}); err != nil {
		t.Fatal(err)
	}
	roots := pinnedRoots(t, listen, c.JoinTokens.Worker)
	wkey, err := readKeyFile(filepath.Join(wdir, "keys", "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	mine, err := pki.NewCSR(wkey)
	if err != nil {
		t.Fatal(err)
	}
	_, fresh, err := newKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token, nodeID, peerURL string
		csr                          []byte
		want                         error // nil: admitted
	}{
		{"worker token, a worker's ID", c.JoinTokens.Worker, w.nodeID, "", fresh, errdefs.ErrAlreadyExists},
		{"worker token, this manager's ID", c.JoinTokens.Worker, m.nodeID, "", fresh, errdefs.ErrInvalidArgument},
		{"worker token, a manager recorded without a key", c.JoinTokens.Worker, legacy, "", fresh, errdefs.ErrAlreadyExists},
		{"manager token, a worker's ID", c.JoinTokens.Manager, w.nodeID, "https://127.0.0.1:1", fresh, errdefs.ErrAlreadyExists},
		{"manager token, a manager recorded without a key", c.JoinTokens.Manager, legacy, "https://127.0.0.1:1", fresh, errdefs.ErrAlreadyExists},
		{"manager token, this manager's ID", c.JoinTokens.Manager, m.nodeID, "https://127.0.0.1:1", fresh, errdefs.ErrInvalidArgument},
		{"manager token, the worker's own key", c.JoinTokens.Manager, w.nodeID, "https://127.0.0.1:1", mine, errdefs.ErrFailedPrecondition},
		{"worker token, the worker's own key (a retry)", c.JoinTokens.Worker, w.nodeID, "", mine, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := nodes.Get(ctx, m.store, tc.nodeID)
			resp, err := callJoin(ctx, listen, roots, &joinRequest{Token: tc.token, CSR: tc.csr, NodeID: tc.nodeID,
				Hostname: "intruder", Addr: "127.0.0.1:0", PeerURL: tc.peerURL, Availability: "active"})
			if tc.want == nil {
				if err != nil {
					t.Fatalf("retried join: %v", err)
				}
				if _, err := pki.TLSCertificate(resp.CertPEM, wkey); err != nil {
					t.Fatalf("retried join: no certificate of the worker's key: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || resp != nil {
				t.Fatalf("join: %v (answer %v), want %v and no answer", err, resp != nil, tc.want)
			}
			if errors.Is(err, errdefs.ErrAlreadyExists) && !strings.Contains(err.Error(), "already belongs to a node of this swarm") {
				t.Fatalf("refusal text: %q", err)
			}
			after, _ := nodes.Get(ctx, m.store, tc.nodeID)
			if recordChanged(before, after) {
				t.Fatalf("a refused join changed the record: %+v -> %+v", before, after)
			}
			if list, _ := m.store.Members().List(ctx); len(list) != 1 {
				t.Fatalf("a refused join changed the membership: %+v", list)
			}
		})
	}

	// A join whose answer was lost: the node asks again with the key it
	// kept and is admitted to the record the first answer made.
	w2dir := t.TempDir()
	w2 := startWith(t, Config{DataDir: w2dir, NoInit: true})
	_, csr2, err := w2.joinKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := callJoin(ctx, listen, roots, &joinRequest{Token: c.JoinTokens.Worker, CSR: csr2, NodeID: w2.nodeID,
		Addr: "127.0.0.1:0", Availability: "active"}); err != nil {
		t.Fatalf("first try: %v", err)
	}
	if err := w2.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{listen}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("join after a lost answer: %v", err)
	}
	if _, err := os.Stat(filepath.Join(w2dir, "keys", "join.key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("join key kept by a worker: %v", err)
	}

	// Leave and join again: the same node, under its ID, with its key.
	if err := w.Leave(ctx, false); err != nil {
		t.Fatalf("leave: %v", err)
	}
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{listen}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("join after leave: %v", err)
	}
	if si, ok := w.WorkerInfo(); !ok || si.NodeID != w.nodeID {
		t.Fatalf("after rejoining: %+v %v", si, ok)
	}
	// Left and removed (record deleted): its join makes a new record.
	if err := w.Leave(ctx, false); err != nil {
		t.Fatalf("leave: %v", err)
	}
	if err := nodes.Remove(ctx, m.store, w.nodeID, time.Now().Add(-2*time.Second).Truncate(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{listen}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("join after node rm: %v", err)
	}
	if n, err := nodes.Get(ctx, m.store, w.nodeID); err != nil || n.Spec.Role != swarm.NodeRoleWorker || n.KeyFP == "" {
		t.Fatalf("record after rejoining: %+v %v", n, err)
	}
}

// pinnedRoots fetches the manager's CA and checks it against token.
func pinnedRoots(t *testing.T, listen, token string) []*x509.Certificate {
	t.Helper()
	tok, err := pki.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := fetchCA(context.Background(), listen)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.VerifyCA(tok, bundle, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return roots
}
