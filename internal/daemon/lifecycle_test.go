package daemon

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/moby/moby/api/types/swarm"
	"time"
)

func start(t *testing.T, dir string) *Daemon {
	t.Helper()
	d, err := Start(context.Background(), Config{DataDir: dir, Socket: filepath.Join(dir, "s.sock"), SecretsDir: filepath.Join(dir, "run")})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// A rotation that crashed after cluster.Put and before the rename.
func TestUnlockAfterInterruptedRotationFollowsRecordedKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := start(t, dir)
	c, _ := cluster.Get(ctx, d.store)
	spec := c.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	if err := d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	k1, _ := d.UnlockKey(ctx)
	// Emulate setAutolockLocked(rotate=true) up to and including cluster.Put.
	d.mu.Lock()
	c, _ = cluster.Get(ctx, d.store)
	k2, _ := keyring.GenerateUnlockKey()
	if err := d.nextKey().Store(d.mk, k2); err != nil {
		t.Fatal(err)
	}
	_ = c.SetUnlockKey(&d.keys, k2)
	if err := cluster.Put(ctx, d.store, &c); err != nil {
		t.Fatal(err)
	}
	d.mu.Unlock()
	d.Close() // crash before os.Rename

	d = start(t, dir)
	// The operator never saw k2 (the rotate call failed), so uses k1.
	if err := d.Unlock(ctx, k1); err != nil {
		t.Fatal(err)
	}
	shown, _ := d.UnlockKey(ctx)
	t.Logf("unlock-key now shows k2: %v", shown == k2)
	d.Close()

	d = start(t, dir)
	defer d.Close()
	if err := d.Unlock(ctx, shown); err != nil {
		t.Fatalf("the key `docker swarm unlock-key` shows no longer unlocks: %v", err)
	}
}

// Client disconnects while `docker swarm update --autolock=false` runs.
func TestDisableAutolockCancelledKeepsNoPlainKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := start(t, dir)
	defer d.Close()
	c, _ := cluster.Get(ctx, d.store)
	spec := c.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	if err := d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	if d.plainKey.Exists() {
		t.Fatal("plain key present with autolock on")
	}
	c, _ = cluster.Get(ctx, d.store)
	rctx, cancel := context.WithCancel(ctx)
	go func() {
		for !d.plainKey.Exists() {
		}
		cancel()
	}()
	spec.EncryptionConfig.AutoLockManagers = false
	err := d.Update(rctx, c.Version, spec, api.SwarmUpdateFlags{})
	c, _ = cluster.Get(ctx, d.store)
	t.Logf("update err: %v; autolock in record: %v; plaintext master.key on disk: %v",
		err, c.Spec.EncryptionConfig.AutoLockManagers, d.plainKey.Exists())
	if err != nil && c.Spec.EncryptionConfig.AutoLockManagers && d.plainKey.Exists() {
		t.Fatal("autolock is on but the master key sits in plaintext on disk")
	}
}

// `docker swarm leave --force` interrupted (Ctrl-C, or an etcd error).
func TestFailedLeaveKeepsRuntime(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := start(t, dir)
	defer d.Close()
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err := d.Leave(cctx, true)
	t.Logf("leave err: %v; state: %s; runtime running: %v", err, d.State(), d.runStop != nil)
	var spec swarm.ServiceSpec
	spec.Name = "web"
	spec.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: "busybox"}
	_, err = d.svcs.Create(ctx, spec)
	if d.State() == swarm.LocalNodeStateInactive {
		// The leave went through (its erase ignores the client's
		// cancellation): with no cluster there is no keyring, and the
		// store refuses every write.
		if !errdefs.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("service create on a node that left: %v, want unavailable", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	_, tasks, _ := d.svcs.Snapshot(ctx)
	if d.State() == swarm.LocalNodeStateActive && len(tasks) == 0 {
		t.Fatal("node reports active but no orchestrator runs: services never get tasks")
	}
}
