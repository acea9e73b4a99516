package daemon

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

// `node rm` on a manager of a cluster: Swarm's refusals in Swarm's order,
// then a forced removal of a live worker deletes its record and refuses
// the certificate it held (also after the cache is dropped, as after a
// restart, since the list is in the store), but not a certificate issued
// after the removal (a rejoin keeps the node's ID).
func TestNodeRemove(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t, syncEvery(0), workerWithoutListen())
	blk, _ := pem.Decode([]byte(w.worker.CertPEM))
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.refuseNode(w.nodeID, leaf); err != nil {
		t.Fatalf("a member's certificate refused: %v", err)
	}
	m.seen.Heartbeat(w.nodeID, time.Now())
	rm := clusterNodes{m}
	for _, tc := range []struct {
		ref   string
		force bool
		cat   error
		msg   string
	}{
		{"nosuchnode", false, errdefs.ErrNotFound, "node nosuchnode not found"},
		{m.nodeID[:6], true, errdefs.ErrFailedPrecondition, "node " + m.nodeID + " is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"},
		{w.nodeID, false, errdefs.ErrFailedPrecondition, "node " + w.nodeID + " is not down and can't be removed"},
	} {
		handled, err := rm.RemoveNode(ctx, tc.ref, tc.force)
		if !handled || !errors.Is(err, tc.cat) || err.Error() != tc.msg {
			t.Errorf("node rm %s (force %v): %v %v; want %q", tc.ref, tc.force, handled, err, tc.msg)
		}
	}
	if _, err := nodes.Get(ctx, m.store, w.nodeID); err != nil {
		t.Fatalf("a refused removal removed the record: %v", err)
	}
	if handled, err := rm.RemoveNode(ctx, w.nodeID[:8], true); !handled || err != nil {
		t.Fatalf("node rm --force: %v %v", handled, err)
	}
	if _, err := nodes.Get(ctx, m.store, w.nodeID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("record after removal: %v", err)
	}
	later := *leaf
	later.NotBefore = time.Now().Add(2*time.Second - pki.Backdate)
	for _, fresh := range []bool{false, true} {
		if fresh {
			// Emptied under its lock: the running daemon reads it too
			// (assigning a new value raced its readers).
			m.removed.mu.Lock()
			m.removed.read, m.removed.v = time.Time{}, nil
			m.removed.mu.Unlock()
		}
		if err := m.refuseNode(w.nodeID, leaf); !errors.Is(err, agent.ErrNodeRemoved) || !errors.Is(err, errdefs.ErrUnauthorized) {
			t.Fatalf("the removed node's certificate (fresh cache %v): %v", fresh, err)
		}
		if err := m.refuseNode(w.nodeID, &later); err != nil {
			t.Fatalf("a certificate issued after the removal (fresh cache %v): %v", fresh, err)
		}
	}
	if handled, err := rm.RemoveNode(ctx, w.nodeID, true); !handled || !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("removing it again: %v", err)
	}
}

// Swarm's texts for `swarm leave` on a manager without --force.
func TestLeaveManagerText(t *testing.T) {
	const pre = "You are attempting to leave the swarm on a node that is participating as a manager. "
	const suf = "The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message."
	for _, tc := range []struct {
		reach, unreach int
		ok             bool
		want           string
	}{
		{1, 0, true, pre + "Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. "},
		{2, 0, true, pre + "Removing this node leaves 1 managers out of 2. Without a Raft quorum your swarm will be inaccessible. " + suf},
		{2, 1, true, pre + "Removing this node leaves 1 managers out of 3. Without a Raft quorum your swarm will be inaccessible. " + suf},
		{3, 0, true, pre + suf},
		{0, 0, false, pre + "Doing so may lose the consensus of your cluster. " + suf},
	} {
		if got := leaveManagerText(tc.reach, tc.unreach, tc.ok); got != tc.want {
			t.Errorf("%d/%d: %q", tc.reach, tc.unreach, got)
		}
	}
}

// `swarm leave` on a manager that is an etcd member: Swarm's refusal
// without --force (a lone member is the last manager), and hush's
// refusal by name with it; the node stays active either way.
func TestLeaveMember(t *testing.T) {
	ctx := context.Background()
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))
	m := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: listen})
	err := m.Leave(ctx, false)
	const msg = "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. "
	if !errors.Is(err, errdefs.ErrUnavailable) || err.Error() != msg {
		t.Errorf("leave: %v", err)
	}
	if m.State() != swarm.LocalNodeStateActive {
		t.Fatalf("state after a refused leave: %s", m.State())
	}
	// The last voter has no one to remove its member: --force wipes it.
	if err := m.Leave(ctx, true); err != nil {
		t.Fatalf("leave --force of the last manager: %v", err)
	}
	if m.State() != swarm.LocalNodeStateInactive {
		t.Fatalf("state after leave --force: %s", m.State())
	}
	leftFiles(t, m)
}

// A worker told of its removal leaves on its own goroutine; a Close at
// the same moment stops the same runtime. Both must agree on it (under
// -race), and the node ends inactive and closed, without waiting on each
// other forever.
func TestRemovedLeaveRacesClose(t *testing.T) {
	_, w, _ := managerAndWorker(t, syncEvery(0), workerWithoutListen())
	// Stands for the agent (this test's hushd has no engine to run one):
	// it learns of the removal, then runs until stopped.
	w.mu.Lock()
	ws := w.worker
	actx, stop := context.WithCancel(context.Background())
	w.runStop = stop
	w.runDone.Add(1)
	go func() {
		defer w.runDone.Done()
		w.removedFromCluster(ws)
		<-actx.Done()
	}()
	w.mu.Unlock()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		w.Close()
	}()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return while the removed worker left")
	}
}

// A node reference resolves as Swarm's (full ID, then hostname, then ID
// prefix): a hostname that is also a prefix of another node's ID names
// the host, so `node rm --force <hostname>` never removes another node.
func TestResolveNodeOrder(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	const a, b, c = "w1aaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbb", "ccccccccccccccccccccccccc"
	for _, n := range []nodes.Node{{ID: a, Hostname: "host-a"}, {ID: b, Hostname: "w1"}, {ID: c, Hostname: "twin"}, {ID: "cdcccccccccccccccccccccc0", Hostname: "twin"}} {
		n.Spec.Role = swarm.NodeRoleWorker
		if _, err := nodes.Record(ctx, st, n); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		ref, want string
		cat       error
	}{
		{a, a, nil},
		{"w1", b, nil},
		{"w1a", a, nil},
		{"host-a", a, nil},
		{"twin", "", errdefs.ErrInvalidArgument},
		{"c", "", errdefs.ErrInvalidArgument},
		{"zz", "", errdefs.ErrNotFound},
	} {
		n, err := resolveNode(ctx, st, tc.ref)
		if tc.cat != nil {
			if !errors.Is(err, tc.cat) {
				t.Errorf("%s: %v, want %v", tc.ref, err, tc.cat)
			}
			continue
		}
		if err != nil || n.ID != tc.want {
			t.Errorf("%s: %s %v, want %s", tc.ref, n.ID, err, tc.want)
		}
	}
}

// A removal heard while a lifecycle change holds mu and ends d.bg (a
// promotion, a leave: closeStoreLocked waits for d.bg's goroutines under
// mu) gives way: the goroutine that would leave the cluster waits for mu
// only while d.bg lasts. Before, it blocked in mu.Lock and the change in
// bgDone.Wait, each waiting for the other.
func TestRemovalGivesWayToLifecycleChange(t *testing.T) {
	bg, stop := context.WithCancel(context.Background())
	ws := &workerState{}
	d := &Daemon{log: slog.New(slog.DiscardHandler), bg: bg, stopBG: stop, worker: ws}
	d.mu.Lock()
	d.removedFromCluster(ws)
	d.stopBG()
	waited := make(chan struct{})
	go func() {
		d.bgDone.Wait()
		close(waited)
	}()
	select {
	case <-waited:
		d.mu.Unlock()
	case <-time.After(time.Minute):
		d.mu.Unlock()
		<-waited
		t.Fatal("the removal's goroutine held d.bg's wait while it waited for mu")
	}
	if d.worker != ws {
		t.Fatal("the removal left the cluster although d.bg had ended")
	}
}
