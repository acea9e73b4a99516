package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// threeManagers starts m1 (init) and two managers joined to it, and
// returns their configs (for restarts) and the daemons.
func threeManagers(t *testing.T) ([3]Config, [3]*Daemon) {
	t.Helper()
	ctx := context.Background()
	var cfgs [3]Config
	var ds [3]*Daemon
	for i := range cfgs {
		cfgs[i] = Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync, NoInit: i > 0}
	}
	ds[0] = startWith(t, cfgs[0])
	c := getCluster(t, ds[0])
	for i := 1; i < 3; i++ {
		ds[i] = startWith(t, cfgs[i])
		if err := ds[i].Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{cfgs[0].ListenAddr}, JoinToken: c.JoinTokens.Manager}); err != nil {
			t.Fatalf("manager join %d: %v", i, err)
		}
	}
	for _, d := range ds {
		waitUntil(t, "every manager votes", func() bool { return d.isVoter(ctx) })
	}
	return cfgs, ds
}

func createSecrets(t *testing.T, d *Daemon, prefix string, n int) map[string]string {
	t.Helper()
	ids := map[string]string{}
	for i := range n {
		name := fmt.Sprintf("%s-%d", prefix, i)
		id, err := d.secrets.Create(context.Background(), objects.Spec{Name: name, Data: []byte("v-" + name)})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		ids[name] = id
	}
	return ids
}

func checkSecrets(t *testing.T, d *Daemon, want map[string]string) {
	t.Helper()
	got, err := d.secrets.List(context.Background(), objects.Filters{})
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	for _, o := range got {
		have[o.Name] = o.ID
	}
	for name, id := range want {
		if have[name] != id {
			t.Errorf("secret %s: id %q, want %q", name, have[name], id)
		}
	}
}

func memberCount(t *testing.T, d *Daemon) int {
	t.Helper()
	list, err := d.store.Members().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

// The recovery after losing the quorum for good: two managers of three
// are gone, the survivor restarts pending, and `swarm init
// --force-new-cluster` makes it the only manager with every object and
// the cluster's identity; a dropped manager that comes back refuses to
// start from its old data, and the survivor keeps its new cluster over a
// restart.
func TestForceNewClusterFromPending(t *testing.T) {
	ctx := context.Background()
	cfgs, ds := threeManagers(t)
	before := getCluster(t, ds[0])
	secrets := createSecrets(t, ds[1], "before", 3)
	for _, d := range ds {
		d.Close()
	}
	m1 := startWith(t, cfgs[0])
	if st := m1.State(); st != swarm.LocalNodeStatePending {
		t.Fatalf("survivor alone: %q, want pending", st)
	}
	// Swarm's refusals still hold for a plain init and for a field hush
	// does not act on here.
	if _, err := m1.Init(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen}); !errors.Is(err, errdefs.ErrNoLeader) {
		t.Fatalf("plain init on a pending manager: %v", err)
	}
	if code, body := socketPost(t, m1, "/v1.41/swarm/init", swarm.InitRequest{ListenAddr: cliDefaultListen}); code != http.StatusServiceUnavailable || !strings.Contains(body, errdefs.NoLeaderMessage) {
		t.Fatalf("plain init through the API on a pending manager: %d %s", code, body)
	}
	if _, err := m1.Init(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen, ForceNewCluster: true, AutoLockManagers: true}); err == nil || !strings.Contains(err.Error(), "autolock") {
		t.Fatalf("force-new-cluster with autolock: %v", err)
	}
	// Swarm moves the manager to new addresses; hush refuses them by name.
	if _, err := m1.Init(ctx, swarm.InitRequest{ListenAddr: "127.0.0.1:2999", ForceNewCluster: true}); err == nil || !strings.Contains(err.Error(), "ListenAddr") {
		t.Fatalf("force-new-cluster on another listen address: %v", err)
	}
	if _, err := m1.Init(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen, AdvertiseAddr: "10.9.9.9", ForceNewCluster: true}); err == nil || !strings.Contains(err.Error(), "AdvertiseAddr") {
		t.Fatalf("force-new-cluster on another advertise address: %v", err)
	}
	if st := m1.State(); st != swarm.LocalNodeStatePending {
		t.Fatalf("after a refused request: %q, want pending", st)
	}
	// Through the API, as the CLI sends it.
	code, body := socketPost(t, m1, "/v1.41/swarm/init", swarm.InitRequest{ListenAddr: cliDefaultListen, ForceNewCluster: true,
		Spec: swarm.Spec{Annotations: swarm.Annotations{Labels: map[string]string{"recovered": "yes"}}}})
	if code != http.StatusOK || strings.TrimSpace(body) != `"`+m1.nodeID+`"` {
		t.Fatalf("force-new-cluster: %d %s", code, body)
	}
	if st := m1.State(); st != swarm.LocalNodeStateActive {
		t.Fatalf("after force-new-cluster: state %q", st)
	}
	checkRecovered(t, m1, before, secrets)
	if c := getCluster(t, m1); c.Spec.Labels["recovered"] != "yes" {
		t.Errorf("the request's spec was not applied: %v", c.Spec.Labels)
	}
	more := createSecrets(t, m1, "after", 1)

	// A dropped manager that comes back is told so and does not start.
	_, err := Start(ctx, withPaths(cfgs[1]))
	if !errors.Is(err, errDropped) || !strings.Contains(err.Error(), "--force-new-cluster") {
		t.Fatalf("dropped manager's start: %v", err)
	}
	if n := memberCount(t, m1); n != 1 {
		t.Fatalf("members after a dropped manager's attempt: %d", n)
	}
	// As in Swarm: the dropped managers are listed with no manager
	// status, and `node rm` takes one without a demotion; one removed
	// still learns why it must not start.
	_, others, _, err := clusterNodes{m1}.Managers(ctx)
	if err != nil || len(others) != 2 {
		t.Fatalf("node ls: %d nodes, %v", len(others), err)
	}
	for _, n := range others {
		if n.ManagerStatus != nil || n.Spec.Role != swarm.NodeRoleManager || n.Status.State != swarm.NodeStateDown {
			t.Errorf("dropped manager in node ls: %+v %q %q", n.ManagerStatus, n.Spec.Role, n.Status.State)
		}
	}
	if _, err := (clusterNodes{m1}).RemoveNode(ctx, ds[2].nodeID, true); err != nil {
		t.Fatalf("node rm of a dropped manager: %v", err)
	}
	if _, err := (clusterNodes{m1}).RemoveNode(ctx, m1.nodeID, true); err == nil {
		t.Fatal("node rm of the survivor accepted")
	}
	if _, err := Start(ctx, withPaths(cfgs[2])); !errors.Is(err, errDropped) {
		t.Fatalf("removed dropped manager's start: %v", err)
	}

	// The survivor restarts as the lone manager it became.
	m1.Close()
	m1 = startWith(t, cfgs[0])
	if st := m1.State(); st != swarm.LocalNodeStateActive {
		t.Fatalf("survivor restarted: %q", st)
	}
	checkRecovered(t, m1, before, secrets)
	checkSecrets(t, m1, more)

	// The cluster grows again: a new manager joins with the old token.
	n4 := Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync, NoInit: true}
	d4 := startWith(t, n4)
	if err := d4.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{cfgs[0].ListenAddr}, JoinToken: before.JoinTokens.Manager}); err != nil {
		t.Fatalf("joining the recovered cluster: %v", err)
	}
	waitUntil(t, "the new manager votes", func() bool { return d4.isVoter(ctx) })
	checkSecrets(t, d4, secrets)
}

// checkRecovered: the same cluster (ID, CA, tokens), every secret, one
// member, and the other managers' records kept as dropped.
func checkRecovered(t *testing.T, m *Daemon, b cluster.Cluster, secrets map[string]string) {
	t.Helper()
	ctx := context.Background()
	c := getCluster(t, m)
	if c.ID != b.ID || c.CACert != b.CACert || c.JoinTokens != b.JoinTokens {
		t.Errorf("cluster identity changed: %s/%s", c.ID, b.ID)
	}
	checkSecrets(t, m, secrets)
	if n := memberCount(t, m); n != 1 {
		t.Errorf("members after force-new-cluster: %d", n)
	}
	recs, err := nodes.List(ctx, m.store)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range recs {
		if n.ID == m.nodeID {
			continue
		}
		if n.Spec.Role != swarm.NodeRoleManager {
			t.Errorf("node %s role %q, want manager kept", n.ID, n.Spec.Role)
		}
		if _, dropped, err := m.droppedAt(ctx, m.store, n.ID, nil); err != nil || !dropped {
			t.Errorf("node %s not noted dropped: %v", n.ID, err)
		}
	}
	if m.member.ForceNew {
		t.Error("member.json still marked")
	}
}

// withPaths is startWith's config without the test's cleanup.
func withPaths(cfg Config) Config {
	cfg.Socket = filepath.Join(cfg.DataDir, "s.sock")
	cfg.SecretsDir = filepath.Join(cfg.DataDir, "run")
	return cfg
}

// Swarm allows force-new-cluster on a manager whose cluster has its
// quorum: the managers it drops stop (their etcd members are refused by
// the new cluster) with the dropped text rather than go on as the old
// cluster.
func TestForceNewClusterWithQuorum(t *testing.T) {
	ctx := context.Background()
	_, ds := threeManagers(t)
	before := getCluster(t, ds[0])
	secrets := createSecrets(t, ds[2], "s", 2)
	if _, err := ds[0].Init(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen, ForceNewCluster: true}); err != nil {
		t.Fatalf("force-new-cluster with quorum: %v", err)
	}
	checkRecovered(t, ds[0], before, secrets)
	for _, d := range ds[1:] {
		select {
		case err := <-d.Err():
			if !errors.Is(err, errDropped) {
				t.Fatalf("dropped manager's end: %v", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("a dropped manager did not stop")
		}
	}
	if n := memberCount(t, ds[0]); n != 1 {
		t.Fatalf("members: %d", n)
	}
	createSecrets(t, ds[0], "after", 1)
}

// A crash at each step of the sequence leaves the survivor, restarted,
// either as before (pending, its data the same) or as after (the lone
// active manager, every secret there).
func TestForceNewClusterCrashes(t *testing.T) {
	for _, tc := range []struct {
		point string
		after bool
	}{
		{fpForceNewMark, false},
		{fpForceNewRestart, true},
		{fpForceNewRecord, true},
		{fpForceNewUnmark, true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			ctx := context.Background()
			cfgs, ds := threeManagers(t)
			before := getCluster(t, ds[0])
			secrets := createSecrets(t, ds[0], "s", 2)
			for _, d := range ds {
				d.Close()
			}
			m1 := startWith(t, cfgs[0])
			m1.fail = failpoints{tc.point: func() error { return errors.New("injected crash at " + tc.point) }}
			if _, err := m1.Init(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen, ForceNewCluster: true}); err == nil {
				t.Fatal("the failpoint did not fire")
			}
			m1.Close()
			m1 = startWith(t, cfgs[0])
			if !tc.after {
				if st := m1.State(); st != swarm.LocalNodeStatePending {
					t.Fatalf("restarted before the commit point: %q, want pending", st)
				}
				// Its data is the same: the other managers bring it back.
				others := []*Daemon{startWith(t, cfgs[1]), startWith(t, cfgs[2])}
				waitUntil(t, "the old cluster is back", func() bool { return m1.State() == swarm.LocalNodeStateActive })
				checkSecrets(t, m1, secrets)
				if n := memberCount(t, m1); n != 3 {
					t.Fatalf("members: %d", n)
				}
				for _, d := range others {
					d.Close()
				}
				return
			}
			if st := m1.State(); st != swarm.LocalNodeStateActive {
				t.Fatalf("restarted after the commit point: %q, want active", st)
			}
			checkRecovered(t, m1, before, secrets)
			if _, err := os.Stat(filepath.Join(cfgs[0].DataDir, "member.json")); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// socketPost posts v as JSON to d's API socket; it returns the status and
// the body.
func socketPost(t *testing.T, d *Daemon, path string, v any) (int, string) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.cfg.Socket)
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Post("http://hush"+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, string(out)
}

// Swarm answers `swarm init --force-new-cluster` on a node that runs no
// manager, a worker or a manager locked since its restart, with its "not
// a swarm manager" text (moby daemon/cluster Init: the node runner's
// IsManager, false for a worker and for a locked node, whose swarmkit
// node exited), and changes nothing.
func TestForceNewClusterNotOnWorkerOrLocked(t *testing.T) {
	ctx := context.Background()
	cfg := Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync}
	m := startWith(t, cfg)
	if _, err := m.Init(ctx, swarm.InitRequest{ListenAddr: cfg.ListenAddr, AutoLockManagers: true}); err != nil {
		t.Fatalf("init --autolock: %v", err)
	}
	c := getCluster(t, m)
	w := startWith(t, Config{DataDir: t.TempDir(), NoInit: true})
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{cfg.ListenAddr}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	code, body := socketPost(t, w, "/v1.41/swarm/init", swarm.InitRequest{ListenAddr: cliDefaultListen, ForceNewCluster: true})
	if code != http.StatusServiceUnavailable || !strings.Contains(body, msgNotManager) {
		t.Errorf("force-new-cluster on a worker: %d %s", code, body)
	}
	if !w.isWorker() || w.State() != swarm.LocalNodeStateActive {
		t.Errorf("the worker changed: worker %v, state %q", w.isWorker(), w.State())
	}

	k := fetchUnlockKey(t, m)
	waitUntil(t, "the manager locks under the fetched key", func() bool { return lockedUnder(m, k) })
	m.Close()
	m = startWith(t, cfg)
	if m.State() != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted: state %q, want locked", m.State())
	}
	code, body = socketPost(t, m, "/v1.41/swarm/init", swarm.InitRequest{ListenAddr: cliDefaultListen, ForceNewCluster: true})
	if code != http.StatusServiceUnavailable || !strings.Contains(body, msgNotManager) {
		t.Errorf("force-new-cluster on a locked manager: %d %s", code, body)
	}
	if m.State() != swarm.LocalNodeStateLocked || !lockedUnder(m, k) {
		t.Fatalf("the locked manager changed: state %q", m.State())
	}
	if err := m.Unlock(ctx, k); err != nil {
		t.Fatalf("unlock after the refusal: %v", err)
	}
	waitUntil(t, "the unlocked manager serves", func() bool { return m.CheckServing() == nil })
	if got := getCluster(t, m); got.ID != c.ID {
		t.Fatalf("cluster after the refusal: %s, want %s", got.ID, c.ID)
	}
}

// A manager whose etcd member is still a learner (promoted, or joined, as
// the quorum was lost: not yet caught up, not a voter) cannot be the new
// cluster: etcd's force-new-cluster would remove every voter and keep it
// a learner (raft panics on a cluster without voters, at every restart
// once marked), and its data may lack committed writes. It is refused by
// name before the commit point, the node left as it was.
func TestForceNewClusterRefusedOnLearner(t *testing.T) {
	ctx := context.Background()
	l1 := loopbackListen(t)
	m := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: l1, RoleSyncPeriod: fastSync})
	c := getCluster(t, m)
	wcfg := Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync}
	w := startWith(t, wcfg)
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{l1}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	// The manager never promotes the learner (its background loops, the
	// promotion and the learner sweep among them, are stopped), and the
	// node never activates as a manager.
	m.mu.Lock()
	stop := m.stopBG
	m.mu.Unlock()
	stop()
	w.mu.Lock()
	w.fail = failpoints{fpPromoteActivate: func() error { return errors.New("injected: not a voter yet") }}
	w.mu.Unlock()
	if err := setRole(ctx, m, w.nodeID, swarm.NodeRoleManager); err != nil {
		t.Fatalf("promote: %v", err)
	}
	waitUntil(t, "the promoted node runs its learner", func() bool {
		list, err := m.store.Members().List(ctx)
		if err != nil || len(list) != 2 {
			return false
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.promoting != nil && (list[0].Learner || list[1].Learner)
	})
	m.Close()
	w.Close()
	w = startWith(t, wcfg)
	if st := w.State(); st != swarm.LocalNodeStatePending {
		t.Fatalf("the learner restarted alone: %q, want pending", st)
	}
	_, err := w.Init(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen, ForceNewCluster: true})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "not a voting member") {
		t.Fatalf("force-new-cluster on a learner: %v", err)
	}
	if st := w.State(); st != swarm.LocalNodeStatePending || w.member.ForceNew {
		t.Fatalf("after the refusal: %q, marked %v", st, w.member.ForceNew)
	}
}

// A force-new-cluster interrupted after its commit point on a running
// manager leaves it serving, marked, until a restart finishes it; a
// manager admitted meanwhile would be removed again by that restart
// (etcd's force-new-cluster drops every other member) and noted as
// dropped. Joins wait for the end of the recovery instead, and the
// restart finishes it with the managers it knows kept.
func TestForceNewClusterUnfinishedRefusesJoins(t *testing.T) {
	ctx := context.Background()
	cfgs, ds := threeManagers(t)
	before := getCluster(t, ds[0])
	secrets := createSecrets(t, ds[0], "s", 1)
	m1 := ds[0]
	m1.mu.Lock()
	m1.fail = failpoints{fpForceNewRecord: func() error { return errors.New("injected: store hiccup") }}
	m1.mu.Unlock()
	if _, err := m1.Init(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen, ForceNewCluster: true}); err == nil || !strings.Contains(err.Error(), msgForceNewInterrupted) {
		t.Fatalf("interrupted force-new-cluster: %v", err)
	}
	ds[1].Close()
	ds[2].Close()
	m1.mu.Lock()
	m1.fail = nil
	m1.mu.Unlock()
	m1.mu.Lock()
	marked := m1.member.ForceNew
	m1.mu.Unlock()
	if st := m1.State(); st != swarm.LocalNodeStateActive || !marked {
		t.Fatalf("after the interruption: %q, marked %v", st, marked)
	}
	n4 := Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync, NoInit: true}
	d4 := startWith(t, n4)
	err := d4.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{cfgs[0].ListenAddr}, JoinToken: before.JoinTokens.Manager})
	if err == nil || !strings.Contains(err.Error(), "force-new-cluster") {
		t.Fatalf("a manager's join during an unfinished force-new-cluster: %v", err)
	}
	if n := memberCount(t, m1); n != 1 {
		t.Fatalf("members: %d", n)
	}
	if _, err := nodes.Get(ctx, m1.store, d4.nodeID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused joiner was recorded: %v", err)
	}
	m1.Close()
	m1 = startWith(t, cfgs[0])
	checkRecovered(t, m1, before, secrets)
	// Finished, it admits managers again.
	d4.Close()
	d4 = startWith(t, Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync, NoInit: true})
	if err := d4.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{cfgs[0].ListenAddr}, JoinToken: before.JoinTokens.Manager}); err != nil {
		t.Fatalf("join after the recovery: %v", err)
	}
	waitUntil(t, "the new manager votes", func() bool { return d4.isVoter(ctx) })
}
