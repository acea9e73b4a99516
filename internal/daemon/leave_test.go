package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

// threeJoinedManagers starts a manager and joins two more with the manager
// token; it returns them and the configurations to restart the joiners.
func threeJoinedManagers(t *testing.T) ([]*Daemon, []Config, string) {
	t.Helper()
	ctx := context.Background()
	l1 := loopbackListen(t)
	m1 := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: l1, RoleSyncPeriod: fastSync})
	c := getCluster(t, m1)
	ds, cfgs := []*Daemon{m1}, []Config{{}}
	for range 2 {
		cfg := Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync}
		m := startWith(t, cfg)
		if err := m.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{l1}, JoinToken: c.JoinTokens.Manager}); err != nil {
			t.Fatalf("manager join: %v", err)
		}
		// As in Swarm, the join answers once the node is Ready.
		if n, err := nodes.Get(ctx, m1.store, m.nodeID); err != nil || n.Status == nil || n.Status.State != swarm.NodeStateReady {
			t.Fatalf("the joined manager's status as its join returned: %+v %v, want ready", n.Status, err)
		}
		waitUntil(t, "the joined manager votes", func() bool { return m.isVoter(ctx) })
		ds, cfgs = append(ds, m), append(cfgs, cfg)
	}
	return ds, cfgs, c.JoinTokens.Manager
}

func voters(t *testing.T, m *Daemon) int {
	t.Helper()
	list, err := m.store.Members().List(context.Background())
	if err != nil {
		t.Fatalf("members: %v", err)
	}
	n := 0
	for _, mb := range list {
		if !mb.Learner {
			n++
		}
	}
	return n
}

// leftFiles checks that a node that left holds no manager state and kept
// its key to join again.
func leftFiles(t *testing.T, d *Daemon) {
	t.Helper()
	dir := d.cfg.DataDir
	if d.store.Members() != nil {
		t.Error("the node that left still runs a cluster member")
	}
	for f, want := range map[string]bool{"member.json": false, "keys/master.key": false,
		"leaving.json": false, "worker.json": false, "keys/join.key": true, "etcd-crl.der": false} {
		if exists(t, dir, f) != want {
			t.Errorf("%s exists=%v after leaving, want %v", f, !want, want)
		}
	}
}

// writeAndRead writes through one manager and reads it linearizably on
// another.
func writeAndRead(t *testing.T, w, r *Daemon, val string) {
	t.Helper()
	ctx := context.Background()
	if err := storetest.RawPut(ctx, w.store, "/hush-test/leave", val); err != nil {
		t.Fatalf("write after the leave: %v", err)
	}
	got, ok, err := storetest.RawGet(ctx, r.store, "/hush-test/leave")
	if err != nil || !ok || got != val {
		t.Fatalf("read after the leave: %q %v %v", got, ok, err)
	}
}

// `swarm leave --force` on a manager of three: refused while leaving
// would lose the quorum (one other manager down), the node staying a
// voter; with all up its member is removed, its state wiped, the other
// two keep writing, node ls lists it Down and Unreachable (as Swarm until
// demote and rm), and it can join again.
func TestLeaveManagerOfCluster(t *testing.T) {
	ctx := context.Background()
	ms, cfgs, token := threeJoinedManagers(t)
	m1, m2, m3 := ms[0], ms[1], ms[2]

	m3.Close()
	err := m2.Leave(ctx, true)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "can't remove member from the raft: this would result in a loss of quorum") {
		t.Fatalf("leave losing quorum: %v", err)
	}
	if !m2.isVoter(ctx) || exists(t, m2.cfg.DataDir, "leaving.json") {
		t.Fatal("a refused leave did not leave the node a member")
	}
	m3 = startWith(t, cfgs[2])
	waitUntil(t, "the restarted manager votes", func() bool { return m3.isVoter(ctx) })

	if err := m3.Leave(ctx, true); err != nil {
		t.Fatalf("leave --force: %v", err)
	}
	if st := m3.State(); st != swarm.LocalNodeStateInactive {
		t.Fatalf("state after leave %q", st)
	}
	leftFiles(t, m3)
	if n := voters(t, m1); n != 2 {
		t.Fatalf("%d voters after the leave, want 2", n)
	}
	writeAndRead(t, m1, m2, "a")
	writeAndRead(t, m2, m1, "b")
	_, others, ok, err := clusterNodes{m1}.Managers(ctx)
	if err != nil || !ok {
		t.Fatalf("node ls: %v", err)
	}
	found := false
	for _, n := range others {
		if n.ID != m3.nodeID {
			continue
		}
		found = true
		if n.Spec.Role != swarm.NodeRoleManager || n.ManagerStatus == nil || n.ManagerStatus.Reachability != swarm.ReachabilityUnreachable || n.Status.State != swarm.NodeStateDown {
			t.Errorf("node ls shows the manager that left as %+v %+v", n.ManagerStatus, n.Status)
		}
	}
	if !found {
		t.Fatal("node ls does not list the manager that left")
	}

	if err := m3.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{m1.listen.Advertise}, JoinToken: token}); err != nil {
		t.Fatalf("join again: %v", err)
	}
	waitUntil(t, "the manager that left votes again", func() bool { return m3.isVoter(ctx) })
	if n := voters(t, m1); n != 3 {
		t.Fatalf("%d voters after joining again, want 3", n)
	}
}

// A leave stopped at each step as by a crash: the restarted node is
// either still a voter with its data or has fully left, and the other
// two keep their quorum either way.
func TestLeaveCrashes(t *testing.T) {
	ctx := context.Background()
	ms, cfgs, token := threeJoinedManagers(t)
	m1, m2, m3 := ms[0], ms[1], ms[2]
	for _, step := range []struct {
		point string
		left  bool
	}{
		{fpLeaveMark, false},
		{fpLeaveRemove, true},
		{fpLeaveWipe, true},
		{fpLeaveUnmark, true},
	} {
		outer := t
		t.Run(step.point, func(t *testing.T) {
			writeAndRead(t, m1, m3, step.point)
			hit := crashAt(m3, step.point)
			if err := m3.Leave(ctx, true); err == nil {
				t.Fatal("the failpoint did not stop the leave")
			}
			select {
			case <-hit:
			default:
				t.Fatal("the failpoint did not fire")
			}
			m3.Close()
			writeAndRead(t, m1, m2, step.point+"-while-down")
			m3 = startWith(outer, cfgs[2])
			if !step.left {
				waitUntil(t, "the restarted node votes", func() bool { return m3.isVoter(ctx) })
				got, ok, err := storetest.RawGet(ctx, m3.store, "/hush-test/leave")
				if err != nil || !ok || got != step.point+"-while-down" {
					t.Fatalf("the member's data after the restart: %q %v %v", got, ok, err)
				}
				if n := voters(t, m1); n != 3 {
					t.Fatalf("%d voters, want 3", n)
				}
				return
			}
			if st := m3.State(); st != swarm.LocalNodeStateInactive {
				t.Fatalf("state after the restart %q, want inactive", st)
			}
			leftFiles(t, m3)
			if n := voters(t, m1); n != 2 {
				t.Fatalf("%d voters, want 2", n)
			}
			writeAndRead(t, m2, m1, step.point+"-after")
			if err := m3.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{m1.listen.Advertise}, JoinToken: token}); err != nil {
				t.Fatalf("join again: %v", err)
			}
			waitUntil(t, "the node votes again", func() bool { return m3.isVoter(ctx) })
		})
	}
}

// `swarm leave --force` on a manager restarted locked (autolock): its
// node key is sealed, so it cannot ask another manager to remove its
// member; as Swarm's, its state is wiped and its member stays in the
// membership (down, as it was while locked) until the node is demoted.
// The node is inactive, holds no manager files, a restart keeps it so,
// and the other two keep their quorum.
func TestLeaveLockedManagerForce(t *testing.T) {
	ctx := context.Background()
	ms := startManagers(t, 3)
	m1, m2, m3 := ms[0], ms[1], ms[2]
	c := getCluster(t, m1.d)
	spec := c.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	if err := m1.d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	key := fetchUnlockKey(t, m1.d)
	for _, m := range ms {
		waitUntil(t, "every manager locks", func() bool { return lockedUnder(m.d, key) })
	}
	// A leave of the running manager stopped (as by a crash) before its
	// member was removed, restarted locked: its sealed key cannot ask for
	// the removal, so it stays a (locked) member with its files.
	hit := crashAt(m3.d, fpLeaveRemove)
	if err := m3.d.Leave(ctx, true); err == nil {
		t.Fatal("the failpoint did not stop the leave")
	}
	<-hit
	m3.restart(t)
	if st := m3.d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: state %q, want locked", st)
	}
	if !exists(t, m3.cfg.DataDir, "member.json") || !lockedUnder(m3.d, key) || exists(t, m3.cfg.DataDir, "leaving.json") {
		t.Fatal("an unfinished leave restarted locked wiped the member or kept its marker")
	}
	if n := voters(t, m1.d); n != 3 {
		t.Fatalf("%d voters, want 3", n)
	}
	if err := m3.d.Leave(ctx, true); err != nil {
		t.Fatalf("leave --force on the locked manager: %v", err)
	}
	check := func(m *clusterNode, when string) {
		if st := m.d.State(); st != swarm.LocalNodeStateInactive {
			t.Fatalf("%s: state %q, want inactive", when, st)
		}
		for _, f := range []string{"member.json", "keys/master.key", "keys/master.key.locked", "etcd.locked", "leaving.json"} {
			if exists(t, m.cfg.DataDir, f) {
				t.Errorf("%s: %s is left", when, f)
			}
		}
		if m.d.store.Members() != nil {
			t.Errorf("%s: the node still runs a member", when)
		}
		// Its store is a fresh lone one: none of the cluster's data.
		n, err := storetest.Count(ctx, m.d.store, "/hush/")
		if err != nil || n != 0 {
			t.Errorf("%s: the store holds %d cluster keys (%v)", when, n, err)
		}
	}
	check(m3, "after the leave")
	m3.restart(t)
	check(m3, "after a restart")
	writeAndRead(t, m1.d, m2.d, "after-locked-leave")

	// Its member stays until the node is demoted.
	if n := voters(t, m1.d); n != 3 {
		t.Fatalf("%d voters after the locked leave, want 3 (its member stays)", n)
	}
	if err := setRole(ctx, m1.d, m3.d.nodeID, swarm.NodeRoleWorker); err != nil {
		t.Fatalf("demoting the manager that left locked: %v", err)
	}
	waitUntil(t, "the demotion removes its member", func() bool { return voters(t, m1.d) == 2 })

	// Stopped as by a crash before its wipe, the restart finishes it.
	m2.restart(t)
	if st := m2.d.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: state %q, want locked", st)
	}
	hit = crashAt(m2.d, fpLeaveWipe)
	if err := m2.d.Leave(ctx, true); err == nil {
		t.Fatal("the failpoint did not stop the leave")
	}
	<-hit
	m2.restart(t)
	check(m2, "after a crash before the wipe")
}

// A leave stopped (as by a crash) after its member was removed, restarted
// while no other manager answers: the removal is known from the marker,
// so the wipe finishes; the node does not start again as a member whose
// etcd member is gone (a voter that can never rejoin).
func TestLeaveRemovedThenOthersDown(t *testing.T) {
	ctx := context.Background()
	ms, cfgs, _ := threeJoinedManagers(t)
	m1, m2, m3 := ms[0], ms[1], ms[2]
	hit := crashAt(m3, fpLeaveWipe)
	if err := m3.Leave(ctx, true); err == nil {
		t.Fatal("the failpoint did not stop the leave")
	}
	<-hit
	if n := voters(t, m1); n != 2 {
		t.Fatalf("%d voters after the removal, want 2", n)
	}
	m3.Close()
	m1.Close()
	m2.Close()
	m3 = startWith(t, cfgs[2])
	if st := m3.State(); st != swarm.LocalNodeStateInactive {
		t.Fatalf("state after the restart %q, want inactive", st)
	}
	leftFiles(t, m3)
}

// Only the cluster's only voter leaves without a removal; a learner (a
// manager still joining) beside a single voter asks for its removal, as
// does any voter among several.
func TestLeaveNeedsRemoval(t *testing.T) {
	v := func(name string) store.Member { return store.Member{Name: name} }
	l := func(name string) store.Member { return store.Member{Name: name, Learner: true} }
	for _, c := range []struct {
		what string
		list []store.Member
		want bool
	}{
		{"the only voter", []store.Member{v("self")}, false},
		{"the only voter beside a learner", []store.Member{v("self"), l("other")}, false},
		{"a learner beside the only voter", []store.Member{v("other"), l("self")}, true},
		{"a voter of two", []store.Member{v("self"), v("other")}, true},
		{"not listed", []store.Member{v("other")}, true},
	} {
		if got := leaveNeedsRemoval(c.list, "self"); got != c.want {
			t.Errorf("%s: %v, want %v", c.what, got, c.want)
		}
	}
}

// A running manager of an autolocked cluster leaves with --force; the
// leave is stopped (as by a crash) after its member was removed, and the
// restart comes up locked (its key files are locked). The marker knows
// the removal: the wipe finishes, and the node is not left a locked
// "member" whose etcd member is gone (no unlock could ever start it).
func TestLeaveRemovedThenRestartedLocked(t *testing.T) {
	ctx := context.Background()
	ms := startManagers(t, 3)
	m1, m2, m3 := ms[0], ms[1], ms[2]
	c := getCluster(t, m1.d)
	spec := c.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	if err := m1.d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	key := fetchUnlockKey(t, m1.d)
	for _, m := range ms {
		waitUntil(t, "every manager locks", func() bool { return lockedUnder(m.d, key) })
	}
	hit := crashAt(m3.d, fpLeaveWipe)
	if err := m3.d.Leave(ctx, true); err == nil {
		t.Fatal("the failpoint did not stop the leave")
	}
	<-hit
	if n := voters(t, m1.d); n != 2 {
		t.Fatalf("%d voters after the removal, want 2", n)
	}
	m3.restart(t)
	if st := m3.d.State(); st != swarm.LocalNodeStateInactive {
		t.Fatalf("restarted after its member's removal: state %q, want inactive", st)
	}
	for _, f := range []string{"member.json", "keys/master.key", "keys/master.key.locked", "leaving.json"} {
		if exists(t, m3.cfg.DataDir, f) {
			t.Errorf("%s is left after the finished leave", f)
		}
	}
	writeAndRead(t, m1.d, m2.d, "after-removed-locked-restart")
}
