package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/testutil/etcdtest"
	"github.com/moby/moby/api/types/swarm"
)

// externalManager is a hushd on srv under prefix with a listen address.
func externalManager(t *testing.T, srv *etcdtest.Server, prefix string, noInit bool) (*Daemon, string) {
	t.Helper()
	dir := t.TempDir()
	cfg := externalCfg(srv, dir, prefix)
	cfg.ListenAddr, cfg.NoInit, cfg.RoleSyncPeriod = loopbackListen(t), noInit, fastSync
	return startWith(t, cfg), dir
}

// managerView is `docker node ls`'s MANAGER STATUS on m: node ID → status.
func managerView(ctx context.Context, m *Daemon) (map[string]swarm.ManagerStatus, error) {
	self, others, ok, err := clusterNodes{m}.Managers(ctx)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("not a manager of a cluster")
	}
	out := map[string]swarm.ManagerStatus{m.nodeID: *self}
	for _, n := range others {
		if n.ManagerStatus != nil {
			out[n.ID] = *n.ManagerStatus
		}
	}
	return out, nil
}

// agreeOn waits until every manager's node ls shows want reachable, the
// others unreachable or gone, and the same leader, among want.
func agreeOn(t *testing.T, ctx context.Context, leaderAmong []string, reachable []string, ms ...*Daemon) string {
	t.Helper()
	var leader string
	waitUntil(t, "the managers agree on node ls", func() bool {
		leader = ""
		for _, m := range ms {
			v, err := managerView(ctx, m)
			if err != nil {
				return false
			}
			lead := ""
			for id, s := range v {
				if s.Leader {
					if lead != "" {
						return false
					}
					lead = id
				}
			}
			if lead == "" || leader != "" && lead != leader {
				return false
			}
			leader = lead
			for _, id := range reachable {
				if v[id].Reachability != swarm.ReachabilityReachable {
					return false
				}
			}
		}
		for _, id := range leaderAmong {
			if id == leader {
				return true
			}
		}
		return false
	})
	return leader
}

// Several hush managers over one external etcd: joins as a manager (no
// etcd membership change; the answer names the store) and as a worker,
// refusals of a joiner on another prefix, other endpoints or an embedded
// store, node ls agreeing on every manager, a secret written on one read
// on the other, promotion and demotion of a worker that runs on the same
// etcd, the last manager's demotion refused, and the election moving to
// the other manager when the leader stops.
func TestExternalManagers(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	// The joiners refused below start first: a hushd under another prefix
	// of a busy etcd waits for revisions its watch never sees (see
	// DESIGN.md "External etcd", known limits).
	other, _ := externalManager(t, srv, "/elsewhere", true)
	mcfg := externalCfg(srv, t.TempDir(), "/team")
	mcfg.External.Endpoints = append(mcfg.External.Endpoints, "https://127.0.0.1:1")
	mcfg.ListenAddr, mcfg.NoInit = loopbackListen(t), true
	more := startWith(t, mcfg)
	emb := startWith(t, Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t)})
	a, _ := externalManager(t, srv, "/team", false)
	if a.member == nil || a.member.External == nil || a.store.Members() == nil {
		t.Fatal("--listen-addr on an external store made no manager of a cluster")
	}
	c := getCluster(t, a)
	l1 := a.listen.Listen
	join := func(d *Daemon, token string) error {
		return d.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{l1}, JoinToken: token})
	}

	t.Run("a joiner on another prefix, other endpoints or an embedded store is refused", func(t *testing.T) {
		if err := join(other, c.JoinTokens.Manager); !errors.Is(err, errdefs.ErrInvalidArgument) ||
			!strings.Contains(err.Error(), `--external-etcd-prefix "/elsewhere" differs from this swarm's prefix "/team"`) {
			t.Fatalf("another prefix: %v", err)
		}
		if err := join(more, c.JoinTokens.Manager); !errors.Is(err, errdefs.ErrInvalidArgument) ||
			!strings.Contains(err.Error(), "differs from this swarm's external etcd endpoints") {
			t.Fatalf("other endpoints: %v", err)
		}
		if err := join(emb, c.JoinTokens.Manager); !errors.Is(err, errdefs.ErrInvalidArgument) ||
			!strings.Contains(err.Error(), "this swarm keeps its store in an external etcd") {
			t.Fatalf("an embedded joiner: %v", err)
		}
		for _, d := range []*Daemon{other, more, emb} {
			if d.State() != swarm.LocalNodeStateInactive || d.plainKey.Exists() {
				t.Fatalf("a refused joiner changed: state %s, key %v", d.State(), d.plainKey.Exists())
			}
		}
		if list, err := a.store.Members().List(ctx); err != nil || len(list) != 1 {
			t.Fatalf("managers after refused joins: %+v %v", list, err)
		}
	})

	b, bdir := externalManager(t, srv, "/team", true)
	if err := join(b, c.JoinTokens.Manager); err != nil {
		t.Fatalf("manager join: %v", err)
	}
	if b.member == nil || b.member.External == nil || b.member.External.Prefix != "/team" || len(b.member.InitialCluster) != 0 {
		t.Fatalf("the joined manager's membership: %+v", b.member)
	}
	if entries, _ := os.ReadDir(filepath.Join(bdir, "etcd")); len(entries) != 0 {
		t.Fatal("the joined manager started an etcd member of its own")
	}
	if err := b.CheckServing(); err != nil {
		t.Fatalf("the joined manager does not serve: %v", err)
	}
	if got := getCluster(t, b); got.ID != c.ID {
		t.Fatalf("joined cluster %s, want %s", got.ID, c.ID)
	}
	agreeOn(t, ctx, []string{a.nodeID, b.nodeID}, []string{a.nodeID, b.nodeID}, a, b)

	id, err := a.secrets.Create(ctx, objects.Spec{Name: "db-password", Data: []byte("s3cret")})
	if err != nil {
		t.Fatal(err)
	}
	if o, err := b.secrets.Get(ctx, "db-password"); err != nil || o.ID != id {
		t.Fatalf("the other manager reads %+v, %v", o.ID, err)
	}

	// A worker without an etcd client of its own, as on embedded clusters.
	w := startWith(t, Config{DataDir: t.TempDir(), NoInit: true, RoleSyncPeriod: fastSync})
	if err := join(w, c.JoinTokens.Worker); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	if !w.isWorker() {
		t.Fatal("not a worker")
	}

	t.Run("promote and demote a worker on the same etcd", func(t *testing.T) {
		p, pdir := externalManager(t, srv, "/team", true)
		if err := join(p, c.JoinTokens.Worker); err != nil {
			t.Fatalf("worker join: %v", err)
		}
		if err := setRole(ctx, a, p.nodeID, swarm.NodeRoleManager); err != nil {
			t.Fatalf("promote: %v", err)
		}
		waitUntil(t, "the promoted node serves as a manager", func() bool { return p.isVoter(ctx) && p.CheckServing() == nil })
		if !exists(t, pdir, "keys/master.key") || exists(t, pdir, "worker.json") {
			t.Fatal("promoted node's files")
		}
		if got, err := cluster.Get(ctx, p.store); err != nil || got.ID != c.ID {
			t.Fatalf("promoted node reads cluster %v, %v", got.ID, err)
		}
		agreeOn(t, ctx, []string{a.nodeID, b.nodeID, p.nodeID}, []string{a.nodeID, b.nodeID, p.nodeID}, a, b, p)
		if err := setRole(ctx, b, p.nodeID, swarm.NodeRoleWorker); err != nil {
			t.Fatalf("demote: %v", err)
		}
		waitUntil(t, "the demoted manager is a worker", p.isWorker)
		if exists(t, pdir, "keys/master.key") || exists(t, pdir, "member.json") {
			t.Fatal("the demoted node kept a manager's files")
		}
		if id := certRole(p.cert.Load().Leaf); id != pki.RoleWorker {
			t.Fatalf("demoted node's certificate role %s", id)
		}
		if p.store.External() {
			t.Fatal("the demoted node still holds a client of the external etcd")
		}
		if list, err := a.store.Members().List(ctx); err != nil || len(list) != 2 {
			t.Fatalf("managers after the demotion: %+v %v", list, err)
		}
	})

	// A restarted manager resumes (its daemon outlives the subtests).
	bcfg := externalCfg(srv, bdir, "/team")
	bcfg.ListenAddr, bcfg.NoInit, bcfg.RoleSyncPeriod = b.listen.Listen, true, fastSync
	b.Close()
	b = startWith(t, bcfg)
	if b.State() != swarm.LocalNodeStateActive || b.member == nil || b.store.Members() == nil {
		t.Fatalf("after a restart: state %s, member %v", b.State(), b.member != nil)
	}
	if _, err := fetchCA(ctx, b.listen.Listen); err != nil {
		t.Fatalf("join service after a restart: %v", err)
	}
	agreeOn(t, ctx, []string{a.nodeID, b.nodeID}, []string{a.nodeID, b.nodeID}, a, b)

	t.Run("a manager leaves with --force; the others keep the cluster", func(t *testing.T) {
		q, qdir := externalManager(t, srv, "/team", true)
		if err := join(q, c.JoinTokens.Manager); err != nil {
			t.Fatalf("manager join: %v", err)
		}
		if err := q.Leave(ctx, false); !errors.Is(err, errdefs.ErrUnavailable) || !strings.HasPrefix(err.Error(), leaveManagerPrefix) {
			t.Fatalf("leave without --force: %v", err)
		}
		if err := q.Leave(ctx, true); err != nil {
			t.Fatalf("leave --force: %v", err)
		}
		if q.State() != swarm.LocalNodeStateInactive || exists(t, qdir, "keys/master.key") || exists(t, qdir, "member.json") {
			t.Fatal("the manager that left kept its state or files")
		}
		if _, err := b.secrets.Get(ctx, "db-password"); err != nil {
			t.Fatalf("the cluster after a manager left: %v", err)
		}
		waitUntil(t, "the manager that left shows unreachable", func() bool {
			v, err := managerView(ctx, a)
			return err == nil && v[q.nodeID].Reachability == swarm.ReachabilityUnreachable
		})
		if err := setRole(ctx, a, q.nodeID, swarm.NodeRoleWorker); err != nil {
			t.Fatalf("demoting the manager that left: %v", err)
		}
		if _, err := (clusterNodes{a}).RemoveNode(ctx, q.nodeID, true); err != nil {
			t.Fatalf("node rm: %v", err)
		}
	})

	// The leader stops: the other takes the election and serves writes.
	leader := agreeOn(t, ctx, []string{a.nodeID, b.nodeID}, nil, a, b)
	stay, gone := a, b
	if leader == a.nodeID {
		stay, gone = b, a
	}
	gone.Close()
	agreeOn(t, ctx, []string{stay.nodeID}, []string{stay.nodeID}, stay)
	if _, err := stay.secrets.Create(ctx, objects.Spec{Name: "after-failover", Data: []byte("x")}); err != nil {
		t.Fatalf("write after the leader stopped: %v", err)
	}
	v, err := managerView(ctx, stay)
	if err != nil || v[gone.nodeID].Reachability != swarm.ReachabilityUnreachable {
		t.Fatalf("the stopped manager in node ls: %+v %v", v[gone.nodeID], err)
	}
	// Swarm's quorum refusals do not apply (etcd's quorum is its
	// operator's): the stopped manager can be demoted; the last cannot.
	if err := setRole(ctx, stay, gone.nodeID, swarm.NodeRoleWorker); err != nil {
		t.Fatalf("demoting the stopped manager: %v", err)
	}
	if err := setRole(ctx, stay, stay.nodeID, swarm.NodeRoleWorker); !errors.Is(err, errdefs.ErrFailedPrecondition) ||
		err.Error() != "attempting to demote the last manager of the swarm" {
		t.Fatalf("demoting the last manager: %v", err)
	}
	if err := stay.Leave(ctx, false); err == nil || err.Error() != leaveManagerText(1, 0, true) {
		t.Fatalf("leave of the last manager without --force: %v", err)
	}
	if err := stay.Leave(ctx, true); err != nil {
		t.Fatalf("leave --force of the last manager: %v", err)
	}
	for k := range srv.Dump(t) {
		if strings.HasPrefix(k, "/team/hush/v1/") {
			t.Fatalf("left after the last manager's leave: %q", k)
		}
	}
	if stay.State() != swarm.LocalNodeStateInactive || stay.plainKey.Exists() || stay.member != nil {
		t.Fatal("the last manager did not leave")
	}
}

// `docker swarm init --listen-addr` on a --no-init hushd over an external
// etcd makes a manager others can join, as hushd's own --listen-addr does.
func TestExternalInitListen(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	cfg := externalCfg(srv, t.TempDir(), "/init")
	cfg.NoInit = true
	d := startWith(t, cfg)
	listen := loopbackListen(t)
	if _, err := d.swarmController().InitWithKey(ctx, swarm.InitRequest{ListenAddr: listen, AdvertiseAddr: "127.0.0.1"}, nil); err != nil {
		t.Fatalf("init --listen-addr: %v", err)
	}
	if d.member == nil || d.member.External == nil || d.member.External.Prefix != "/init" {
		t.Fatalf("membership after init: %+v", d.member)
	}
	if _, err := fetchCA(ctx, listen); err != nil {
		t.Fatalf("join service: %v", err)
	}
	if list, err := d.store.Members().List(ctx); err != nil || len(list) != 1 || list[0].Name != d.nodeID {
		t.Fatalf("managers: %+v %v", list, err)
	}
}

// A worker promoted in a cluster over an external etcd while it has no
// --external-etcd (or another prefix) is refused by the manager before
// anything is issued: no manager certificate, no master key, no entry in
// the managers' registry; the refusal tells the worker what to start with.
func TestExternalPromoteMismatchedWorker(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	a, _ := externalManager(t, srv, "/team", false)
	c := getCluster(t, a)
	join := func(d *Daemon) error {
		return d.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{a.listen.Listen}, JoinToken: c.JoinTokens.Worker})
	}
	// An hour: only the test's own sync rounds run.
	emb := startWith(t, Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: time.Hour})
	ocfg := externalCfg(srv, t.TempDir(), "/elsewhere")
	ocfg.ListenAddr, ocfg.NoInit, ocfg.RoleSyncPeriod = loopbackListen(t), true, time.Hour
	other := startWith(t, ocfg)
	for _, tc := range []struct {
		name string
		w    *Daemon
		want string
	}{
		{"embedded", emb, `this swarm keeps its store in an external etcd (` + srv.Endpoint + `, prefix "/team"): start the joining node with --external-etcd`},
		{"other prefix", other, `--external-etcd-prefix "/elsewhere" differs from this swarm's prefix "/team"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := join(tc.w); err != nil {
				t.Fatalf("worker join: %v", err)
			}
			if err := setRole(ctx, a, tc.w.nodeID, swarm.NodeRoleManager); err != nil {
				t.Fatalf("promote: %v", err)
			}
			err := tc.w.syncOnce(ctx)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("promotion of a worker with another store: %v", err)
			}
			if list, err := a.store.Members().List(ctx); err != nil || len(list) != 1 || list[0].ID != a.nodeID {
				t.Fatalf("managers' registry after the refused promotion: %+v %v", list, err)
			}
			if !tc.w.isWorker() || tc.w.plainKey.Exists() || certRole(tc.w.cert.Load().Leaf) != pki.RoleWorker {
				t.Fatal("the refused worker changed")
			}
		})
	}
}

// Autolock on managers over an external etcd: a restarted manager is
// locked; unlocked, it serves again; locked, `swarm leave --force` takes
// it out as it does an unlocked one (key files and membership wiped,
// inactive), and the other manager keeps the cluster.
func TestExternalManagersAutolock(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	a, adir := externalManager(t, srv, "/lock", false)
	c := getCluster(t, a)
	b, bdir := externalManager(t, srv, "/lock", true)
	if err := b.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{a.listen.Listen}, JoinToken: c.JoinTokens.Manager}); err != nil {
		t.Fatalf("manager join: %v", err)
	}
	spec := c.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	if err := a.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	k := fetchUnlockKey(t, a)
	waitUntil(t, "the joined manager locks under the fetched key", func() bool { return lockedUnder(b, k) })
	restart := func() {
		cfg := externalCfg(srv, bdir, "/lock")
		cfg.ListenAddr, cfg.NoInit, cfg.RoleSyncPeriod = b.listen.Listen, true, fastSync
		b.Close()
		b = startWith(t, cfg)
		if st := b.State(); st != swarm.LocalNodeStateLocked {
			t.Fatalf("restarted manager: state %q, want locked", st)
		}
	}
	restart()
	if err := b.Unlock(ctx, k); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	waitUntil(t, "the unlocked manager serves", func() bool { return b.CheckServing() == nil })
	if got := getCluster(t, b); got.ID != c.ID {
		t.Fatalf("unlocked manager reads cluster %s, want %s", got.ID, c.ID)
	}
	restart()
	if err := b.Leave(ctx, true); err != nil {
		t.Fatalf("leave --force on the locked manager: %v", err)
	}
	if b.State() != swarm.LocalNodeStateInactive || exists(t, bdir, "member.json") || b.lockedKey.Exists() || b.plainKey.Exists() {
		t.Fatal("the locked manager that left kept its state or files")
	}
	if _, err := a.secrets.Create(ctx, objects.Spec{Name: "after-leave", Data: []byte("x")}); err != nil {
		t.Fatalf("the cluster after a locked manager left: %v", err)
	}
	// Demoted and removed, the other is gone: the locked last manager's
	// leave erases the cluster under the prefix.
	if err := setRole(ctx, a, b.nodeID, swarm.NodeRoleWorker); err != nil {
		t.Fatalf("demoting the manager that left: %v", err)
	}
	if _, err := (clusterNodes{a}).RemoveNode(ctx, b.nodeID, true); err != nil {
		t.Fatalf("node rm: %v", err)
	}
	acfg := externalCfg(srv, adir, "/lock")
	acfg.ListenAddr, acfg.NoInit, acfg.RoleSyncPeriod = a.listen.Listen, true, fastSync
	a.Close()
	a = startWith(t, acfg)
	if st := a.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted last manager: state %q, want locked", st)
	}
	if err := a.Leave(ctx, true); err != nil {
		t.Fatalf("leave --force on the locked last manager: %v", err)
	}
	for k := range srv.Dump(t) {
		if strings.HasPrefix(k, "/lock/hush/v1/") {
			t.Fatalf("left after the locked last manager's leave: %q", k)
		}
	}
	if a.State() != swarm.LocalNodeStateInactive || a.lockedKey.Exists() || exists(t, adir, "member.json") {
		t.Fatal("the locked last manager did not leave")
	}
}
