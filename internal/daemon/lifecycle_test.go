package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/moby/moby/api/types/swarm"
)

// start runs a daemon without an engine on dir; it is closed when the test
// ends (Close is idempotent, so tests that restart close it first).
func start(t *testing.T, dir string) *Daemon {
	t.Helper()
	return startWith(t, Config{DataDir: dir})
}

func startWith(t *testing.T, cfg Config) *Daemon {
	t.Helper()
	cfg.Socket = filepath.Join(cfg.DataDir, "s.sock")
	cfg.SecretsDir = filepath.Join(cfg.DataDir, "run")
	d, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func getCluster(t *testing.T, d *Daemon) cluster.Cluster {
	t.Helper()
	c, err := cluster.Get(context.Background(), d.store)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// enableAutolock turns autolock on and returns the unlock key, fetched as
// `docker swarm update --autolock=true` does.
func enableAutolock(t *testing.T, d *Daemon) string {
	t.Helper()
	ctx := context.Background()
	c := getCluster(t, d)
	spec := c.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	if err := d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	return fetchUnlockKey(t, d)
}

// fetchUnlockKey is GET /swarm/unlockkey answered in full: it returns the
// key and tells the daemon it was delivered, as the API handler does.
func fetchUnlockKey(t *testing.T, d *Daemon) string {
	t.Helper()
	ctx := context.Background()
	k, err := d.UnlockKey(ctx)
	if err != nil || k == "" {
		t.Fatalf("unlock key: %q, %v", k, err)
	}
	if err := d.UnlockKeyDelivered(ctx, k); err != nil {
		t.Fatalf("recording the unlock key's delivery: %v", err)
	}
	return k
}

// checkKeyFiles asserts that the key files on disk match what the cluster
// record says: with autolock, only the locked key (never the plaintext
// one); without, only the plaintext key.
func checkKeyFiles(t *testing.T, d *Daemon, wantAutolock bool) {
	t.Helper()
	if got := getCluster(t, d).Spec.EncryptionConfig.AutoLockManagers; got != wantAutolock {
		t.Errorf("cluster record: AutoLockManagers = %v, want %v", got, wantAutolock)
	}
	if got := d.plainKey.Exists(); got == wantAutolock {
		t.Errorf("plaintext master key on disk: %v with autolock %v", got, wantAutolock)
	}
	if got := d.lockedKey.Exists(); got != wantAutolock {
		t.Errorf("locked master key on disk: %v with autolock %v", got, wantAutolock)
	}
	if d.nextKey().Exists() {
		t.Errorf("a rotated key file (%s) is left behind", d.nextKey().Path)
	}
}

// Disabling autolock writes the plaintext master key before the store
// records the change; whatever happens to the call, the key files on disk
// must match the record, so the plaintext key never sits beside a cluster
// that says it is locked.
func TestDisableAutolockCancelledKeepsNoPlainKey(t *testing.T) {
	injected := errors.New("injected store failure")
	for _, tc := range []struct {
		name string
		// cancel: the client has gone before the call is served.
		cancel bool
		// fail: the store write of the change fails.
		fail         bool
		wantErr      error
		wantAutolock bool
	}{
		// A lifecycle change finishes even when its client has left.
		{name: "client gone", cancel: true, wantAutolock: false},
		// A failed write leaves autolock on, and no plaintext key.
		{name: "store write fails", fail: true, wantErr: injected, wantAutolock: true},
		{name: "client gone and store write fails", cancel: true, fail: true, wantErr: injected, wantAutolock: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d := start(t, dir)
			k1 := enableAutolock(t, d)
			checkKeyFiles(t, d, true)

			if tc.fail {
				d.fail = failpoints{fpDisablePut: func() error { return injected }}
			}
			rctx, cancel := context.WithCancel(context.Background())
			if tc.cancel {
				cancel()
			}
			defer cancel()
			c := getCluster(t, d)
			spec := c.Spec
			spec.EncryptionConfig.AutoLockManagers = false
			err := d.Update(rctx, c.Version, spec, api.SwarmUpdateFlags{})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Update(autolock off): err %v, want %v", err, tc.wantErr)
			}
			checkKeyFiles(t, d, tc.wantAutolock)

			// And the node comes back as the record says: locked (opened
			// by the key it had) or not.
			d.Close()
			d = start(t, dir)
			if tc.wantAutolock {
				if st := d.State(); st != swarm.LocalNodeStateLocked {
					t.Fatalf("state after restart: %s, want locked", st)
				}
				if err := d.Unlock(context.Background(), k1); err != nil {
					t.Fatalf("unlock after the failed disable: %v", err)
				}
			} else if st := d.State(); st != swarm.LocalNodeStateActive {
				t.Fatalf("state after restart: %s, want active", st)
			}
			checkKeyFiles(t, d, tc.wantAutolock)
		})
	}
}

// `docker swarm leave --force` whose erase of the cluster state fails (an
// etcd error): the node is still in the cluster, so its orchestrator must
// run again, and a later leave must still work.
func TestFailedLeaveKeepsRuntime(t *testing.T) {
	ctx := context.Background()
	d := start(t, t.TempDir())
	injected := errors.New("injected etcd failure")
	d.fail = failpoints{fpLeaveErase: func() error { return injected }}

	if err := d.Leave(ctx, true); !errors.Is(err, injected) {
		t.Fatalf("leave with a failing erase: err %v, want the injected failure", err)
	}
	if st := d.State(); st != swarm.LocalNodeStateActive {
		t.Fatalf("state after the failed leave: %s, want active", st)
	}
	if _, err := d.keys.Seal([]byte("x"), []byte("failed-leave-test")); err != nil {
		t.Fatalf("keyring after the failed leave: %v", err)
	}
	// The orchestrator runs: a new service gets its task.
	var spec swarm.ServiceSpec
	spec.Name = "web"
	spec.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: "busybox"}
	if _, err := d.svcs.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	waitTasks(t, d, 1)

	d.fail = nil
	if err := d.Leave(ctx, true); err != nil {
		t.Fatalf("leave after the failed one: %v", err)
	}
	if st := d.State(); st != swarm.LocalNodeStateInactive {
		t.Fatalf("state after leave: %s, want inactive", st)
	}
}

// waitTasks waits until the store holds n tasks. Generous: it is a wait for
// the orchestrator's next pass, not a measure of its speed.
func waitTasks(t *testing.T, d *Daemon, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, tasks, err := d.svcs.Snapshot(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(tasks) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the orchestrator made %d tasks in 30 s, want %d: it does not run", len(tasks), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Init and leave finish even when the client that asked has gone: a
// lifecycle change stopped half-way leaves key files and state that do not
// match.
func TestLifecycleCallsFinishWithoutClient(t *testing.T) {
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	d := startWith(t, Config{DataDir: t.TempDir(), NoInit: true})
	if st := d.State(); st != swarm.LocalNodeStateInactive {
		t.Fatalf("state with --no-init: %s", st)
	}
	if _, err := d.Init(gone, swarm.InitRequest{ListenAddr: "0.0.0.0:2377"}); err != nil {
		t.Fatalf("init with the client gone: %v", err)
	}
	if st := d.State(); st != swarm.LocalNodeStateActive {
		t.Fatalf("state after init: %s, want active", st)
	}
	checkKeyFiles(t, d, false)
	if err := d.Leave(gone, true); err != nil {
		t.Fatalf("leave with the client gone: %v", err)
	}
	if st := d.State(); st != swarm.LocalNodeStateInactive {
		t.Fatalf("state after leave: %s, want inactive", st)
	}
	if d.plainKey.Exists() || d.lockedKey.Exists() {
		t.Errorf("key files left after leave (plain %v, locked %v)", d.plainKey.Exists(), d.lockedKey.Exists())
	}
}

// The API socket is 0660 and made without touching the process's umask:
// a directory another goroutine makes meanwhile keeps its own mode.
func TestSocketModeWithoutUmask(t *testing.T) {
	dir := t.TempDir()
	stop := make(chan struct{})
	done := make(chan error)
	go func() {
		// Directories made while the socket is being made (as etcd or a
		// restore does in the same process).
		var bad error
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- bad
				return
			default:
			}
			p := filepath.Join(dir, "d", strconv.Itoa(i))
			if err := os.MkdirAll(p, 0o700); err != nil {
				bad = err
				continue
			}
			if fi, err := os.Stat(p); err == nil && fi.Mode().Perm() != 0o700 && bad == nil {
				bad = fmt.Errorf("directory made while the socket was made has mode %v", fi.Mode().Perm())
			}
		}
	}()
	for i := 0; i < 50; i++ {
		path := filepath.Join(dir, "s"+strconv.Itoa(i)+".sock")
		ln, err := listenUnix(path)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("socket %v %v, want a 0660 socket", fi, err)
		}
		if err := ln.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("socket left after close: %v", err)
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".s*")); len(m) != 0 {
		t.Fatalf("temporary socket directories left: %v", m)
	}
}
