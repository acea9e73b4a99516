package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/testutil/etcdtest"
	"github.com/moby/moby/api/types/swarm"
)

// Autolock on managers over an external etcd works as on embedded ones:
// enabled and fetched through one manager, both lock; a restarted manager
// is locked, refuses a wrong key, and serves once unlocked; `swarm leave
// --force` on a locked manager leaves as an unlocked one's does (there is
// no etcd membership to remove), its key files gone, the cluster kept.
func TestExternalLockedManagerUnlockAndLeave(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	a, _ := externalManager(t, srv, "/team", false)
	c := getCluster(t, a)
	b, bdir := externalManager(t, srv, "/team", true)
	if err := b.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{a.listen.Listen}, JoinToken: c.JoinTokens.Manager}); err != nil {
		t.Fatalf("manager join: %v", err)
	}
	id, err := a.secrets.Create(ctx, objects.Spec{Name: "ext-autolock", Data: []byte(secretValue)})
	if err != nil {
		t.Fatal(err)
	}
	c = getCluster(t, a)
	spec := c.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	if err := a.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatalf("enabling autolock: %v", err)
	}
	k := fetchUnlockKey(t, a)
	for _, d := range []*Daemon{a, b} {
		waitUntil(t, "each manager locks under the fetched key", func() bool { return lockedUnder(d, k) })
	}

	bcfg := externalCfg(srv, bdir, "/team")
	bcfg.ListenAddr, bcfg.NoInit, bcfg.RoleSyncPeriod = b.listen.Listen, true, fastSync
	b.Close()
	b = startWith(t, bcfg)
	if st := b.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: state %q, want locked", st)
	}
	if err := b.CheckServing(); err == nil || err.Error() != msgLocked {
		t.Fatalf("locked manager serves: %v", err)
	}
	if err := b.Unlock(ctx, "SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("unlock with a wrong key: %v", err)
	}
	b.unlock.reset()
	if err := b.Unlock(ctx, k); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	waitUntil(t, "the unlocked manager serves", func() bool { return b.CheckServing() == nil && b.joinSvc != nil })
	checkSecret(t, b, id)
	if !lockedUnder(b, k) || b.store.Members() == nil {
		t.Fatal("the unlocked manager's files or registry")
	}

	// A leave --force that comes between an unlock and the start of the
	// manager it unlocked (serveUnlockedMember, which runs without mu) is
	// refused: it would take the membership the start uses.
	b.Close()
	b = startWith(t, bcfg)
	b.mu.Lock()
	member, err := b.unlockLocked(ctx, k)
	b.mu.Unlock()
	if err != nil || !member {
		t.Fatalf("unlock: member %v, %v", member, err)
	}
	if err := b.Leave(ctx, true); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("leave --force during an unlock: %v", err)
	}
	if err := b.serveUnlockedMember(ctx); err != nil {
		t.Fatalf("starting the unlocked manager: %v", err)
	}
	waitUntil(t, "the unlocked manager serves", func() bool { return b.CheckServing() == nil })

	// Locked again, then leave --force.
	b.Close()
	b = startWith(t, bcfg)
	if st := b.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted manager: state %q, want locked", st)
	}
	if err := b.Leave(ctx, false); err == nil || err.Error() != msgLeaveLocked {
		t.Fatalf("leave without --force on the locked manager: %v", err)
	}
	if err := b.Leave(ctx, true); err != nil {
		t.Fatalf("leave --force on the locked manager: %v", err)
	}
	if b.State() != swarm.LocalNodeStateInactive {
		t.Fatalf("after leave --force: state %s", b.State())
	}
	for _, f := range []string{"keys/master.key", "keys/master.key.locked", "keys/master.key.locked.next", "member.json"} {
		if exists(t, bdir, f) {
			t.Errorf("the manager that left keeps %s", f)
		}
	}
	checkSecret(t, a, id)

	// The last manager, locked, leaves with --force: the cluster is
	// erased, as an unlocked last manager's leave erases it.
	if err := setRole(ctx, a, b.nodeID, swarm.NodeRoleWorker); err != nil {
		t.Fatalf("demoting the manager that left: %v", err)
	}
	if _, err := (clusterNodes{a}).RemoveNode(ctx, b.nodeID, true); err != nil {
		t.Fatalf("node rm: %v", err)
	}
	acfg := a.cfg
	a.Close()
	a = startWith(t, acfg)
	if st := a.State(); st != swarm.LocalNodeStateLocked {
		t.Fatalf("restarted last manager: state %q, want locked", st)
	}
	if err := a.Leave(ctx, true); err != nil {
		t.Fatalf("leave --force on the locked last manager: %v", err)
	}
	for k := range srv.Dump(t) {
		if strings.HasPrefix(k, "/team/hush/v1/") {
			t.Fatalf("left after the last manager's leave: %q", k)
		}
	}
	if a.State() != swarm.LocalNodeStateInactive || a.hasKeyFiles() || exists(t, a.cfg.DataDir, "member.json") {
		t.Fatal("the locked last manager did not leave")
	}
}
