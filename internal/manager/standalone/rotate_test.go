package standalone

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
)

// fakeControl is the engine for deliveries: it records calls and, at each
// signal or restart, what the container's files held then.
type fakeControl struct {
	mu      sync.Mutex
	fs      *fakeFS
	stopped map[string]bool
	gone    map[string]bool
	failing error
	calls   []string // "kill c1 SIGHUP saw=<data>", "restart c1 saw=<data>"
	grant   string   // the mount whose data calls record
	target  string
	// onRunning runs at each Running, outside the lock: a test's way to
	// make something happen between a delivery's start and its swap.
	onRunning func(id string)
	// afterRunning runs once Running has its answer: a test's way to
	// change the container's state right after a delivery asked it.
	afterRunning func(id string)
}

func (c *fakeControl) Running(_ context.Context, id string) (bool, error) {
	if c.onRunning != nil {
		c.onRunning(id)
	}
	c.mu.Lock()
	gone, running := c.gone[id], !c.stopped[id]
	c.mu.Unlock()
	if c.afterRunning != nil {
		c.afterRunning(id)
	}
	if gone {
		return false, errdefs.NotFound("no such container %s", id)
	}
	return running, nil
}

func (c *fakeControl) call(s string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, s+" saw="+c.fs.data(c.grant, c.target))
	return c.failing
}

func (c *fakeControl) Kill(_ context.Context, id, sig string) error {
	return c.call("kill " + id + " " + sig)
}
func (c *fakeControl) Restart(_ context.Context, id string) error { return c.call("restart " + id) }

func (c *fakeControl) log() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.calls...)
}

// rotFixture is a fixture whose manager delivers rotations, with a
// failpoint tests can set, and whose secrets know the containers' holds.
type rotFixture struct {
	*fixture
	ctl  *fakeControl
	fail func(point string) error
}

func newRotFixture(t *testing.T) *rotFixture {
	t.Helper()
	fx := newFixture(t)
	rf := &rotFixture{fixture: fx, ctl: &fakeControl{fs: fx.fs, stopped: map[string]bool{}, gone: map[string]bool{}}}
	fx.m.control = rf.ctl
	fx.m.fail = func(p string) error {
		if rf.fail != nil {
			return rf.fail(p)
		}
		return nil
	}
	fx.secrets.UseHolders(fx.m.HeldVersions)
	fx.configs.UseHolders(fx.m.HeldVersions)
	return rf
}

// run prepares and commits a container with labels, as `docker run` does.
func (rf *rotFixture) run(t *testing.T, labels map[string]string, containerID string) string {
	t.Helper()
	ctx := context.Background()
	p, err := rf.m.Prepare(ctx, mustParse(t, labels), containerID)
	if err != nil {
		t.Fatal(err)
	}
	if err := rf.m.Commit(ctx, p.GrantID, containerID, containerID); err != nil {
		t.Fatal(err)
	}
	return p.GrantID
}

func (rf *rotFixture) rotate(t *testing.T, name, data string) {
	t.Helper()
	if _, changed, err := rf.secrets.Rotate(context.Background(), name, 0, []byte(data)); err != nil || !changed {
		t.Fatalf("rotate %s: changed %v, %v", name, changed, err)
	}
}

// version is what the grant of containerID records for its one secret.
func (rf *rotFixture) version(t *testing.T, secretID, containerID string) int {
	t.Helper()
	hs, err := rf.m.Holders(context.Background(), objects.Secret.Table, secretID)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.ID == containerID {
			return h.Version
		}
	}
	t.Fatalf("container %s holds no version of %s: %+v", containerID, secretID, hs)
	return 0
}

func TestRotationModes(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		labels    map[string]string
		target    string
		stopped   bool
		wantTree  bool
		wantCalls []string
	}{
		{name: "default reload swaps, no restart", labels: map[string]string{LabelSecrets: "db"},
			target: "/run/secrets/db", wantTree: true},
		{name: "signal after the swap", labels: map[string]string{LabelSecrets: "db", LabelRotate: "signal:SIGHUP"},
			target: "/run/secrets/db", wantTree: true, wantCalls: []string{"kill c1 SIGHUP saw=v2"}},
		{name: "signal skipped when stopped", labels: map[string]string{LabelSecrets: "db", LabelRotate: "signal:SIGHUP"},
			target: "/run/secrets/db", stopped: true, wantTree: true},
		{name: "restart after the swap", labels: map[string]string{LabelSecrets: "db", LabelRotate: "restart"},
			target: "/run/secrets/db", wantTree: true, wantCalls: []string{"restart c1 saw=v2"}},
		{name: "absolute target: new tmpfs, restart", labels: map[string]string{LabelSecretPrefix + "db": "target=/etc/db"},
			target: "/etc/db", wantCalls: []string{"restart c1 saw=v2"}},
		{name: "absolute target, stopped: new tmpfs only", labels: map[string]string{LabelSecretPrefix + "db": "target=/etc/db"},
			target: "/etc/db", stopped: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rf := newRotFixture(t)
			id := rf.secret(t, "db", "v1")
			grant := rf.run(t, tt.labels, "c1")
			rf.ctl.grant, rf.ctl.target, rf.ctl.stopped["c1"] = grant, tt.target, tt.stopped
			if rf.fs.trees[grant] != tt.wantTree {
				t.Fatalf("tree mount %v, want %v", rf.fs.trees[grant], tt.wantTree)
			}
			if n := rf.m.Sync(ctx); n != 0 || rf.fs.swaps[grant] != 0 || rf.fs.remounts[grant] != 1 {
				t.Fatalf("sync with nothing rotated: %d failed, %d swaps, %d mounts", n, rf.fs.swaps[grant], rf.fs.remounts[grant])
			}
			rf.rotate(t, "db", "v2")
			if got := rf.version(t, id, "c1"); got != 1 {
				t.Fatalf("recorded before delivery: version %d", got)
			}
			if n := rf.m.Sync(ctx); n != 0 {
				t.Fatalf("%d deliveries failed", n)
			}
			if got := rf.fs.data(grant, tt.target); got != "v2" {
				t.Fatalf("container reads %q", got)
			}
			if tt.wantTree && (rf.fs.swaps[grant] != 1 || rf.fs.remounts[grant] != 1) {
				t.Fatalf("tree: %d swaps, %d mounts; want one swap, no new mount", rf.fs.swaps[grant], rf.fs.remounts[grant])
			}
			if !tt.wantTree && rf.fs.remounts[grant] != 2 {
				t.Fatalf("per-file: %d mounts, want a new one", rf.fs.remounts[grant])
			}
			if got := strings.Join(rf.ctl.log(), "; "); got != strings.Join(tt.wantCalls, "; ") {
				t.Fatalf("engine calls %q, want %q", got, tt.wantCalls)
			}
			if got := rf.version(t, id, "c1"); got != 2 {
				t.Fatalf("recorded version %d after delivery", got)
			}
			// Done: a further sync changes nothing.
			rf.m.Sync(ctx)
			if len(rf.ctl.log()) != len(tt.wantCalls) || rf.fs.swaps[grant] > 1 {
				t.Fatalf("a second sync delivered again: %v, %d swaps", rf.ctl.log(), rf.fs.swaps[grant])
			}
		})
	}
}

// Nothing that fails records the new version: the grant keeps the one the
// container has, and a later sync delivers and records it.
func TestRotationFailuresKeepVersion(t *testing.T) {
	ctx := context.Background()
	injected := errors.New("injected")
	tests := []struct {
		name   string
		labels map[string]string
		break_ func(rf *rotFixture)
		fix    func(rf *rotFixture)
	}{
		{name: "crash before the record", labels: map[string]string{LabelSecrets: "db"},
			break_: func(rf *rotFixture) {
				rf.fail = func(p string) error {
					if p == FpRecord {
						return injected
					}
					return nil
				}
			},
			fix: func(rf *rotFixture) { rf.fail = nil }},
		{name: "swap fails", labels: map[string]string{LabelSecrets: "db"},
			break_: func(rf *rotFixture) { rf.fs.failing = true }, fix: func(rf *rotFixture) { rf.fs.failing = false }},
		{name: "signal fails", labels: map[string]string{LabelSecrets: "db", LabelRotate: "signal:SIGUSR1"},
			break_: func(rf *rotFixture) { rf.ctl.failing = injected }, fix: func(rf *rotFixture) { rf.ctl.failing = nil }},
		{name: "restart fails", labels: map[string]string{LabelSecretPrefix + "db": "target=/etc/db"},
			break_: func(rf *rotFixture) { rf.ctl.failing = injected }, fix: func(rf *rotFixture) { rf.ctl.failing = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rf := newRotFixture(t)
			id := rf.secret(t, "db", "v1")
			rf.run(t, tt.labels, "c1")
			rf.rotate(t, "db", "v2")
			tt.break_(rf)
			if n := rf.m.Sync(ctx); n != 1 {
				t.Fatalf("%d failed deliveries, want 1", n)
			}
			if got := rf.version(t, id, "c1"); got != 1 {
				t.Fatalf("a failed delivery recorded version %d", got)
			}
			// The failures in a row are counted for `rotate --wait`.
			if f, ok := rf.m.DeliveryFailure("c1"); !ok || f.Attempts != 1 || f.Err == "" {
				t.Fatalf("after one failure: %+v, %v", f, ok)
			}
			if n := rf.m.Sync(ctx); n != 1 {
				t.Fatalf("second try: %d failed deliveries, want 1", n)
			}
			if f, ok := rf.m.DeliveryFailure("c1"); !ok || f.Attempts != 2 {
				t.Fatalf("after two failures: %+v, %v", f, ok)
			}
			// Version 1 is still held: destroy refuses, naming the container.
			err := rf.secrets.Destroy(ctx, "db", 0, 1)
			if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "held by 1 container(s): c1") {
				t.Fatalf("destroy of the held version: %v", err)
			}
			tt.fix(rf)
			if n := rf.m.Sync(ctx); n != 0 {
				t.Fatalf("retry: %d failed", n)
			}
			if got := rf.version(t, id, "c1"); got != 2 {
				t.Fatalf("after the retry the grant records %d", got)
			}
			if f, ok := rf.m.DeliveryFailure("c1"); ok {
				t.Fatalf("a delivered container still shows a failure: %+v", f)
			}
			if err := rf.secrets.Destroy(ctx, "db", 0, 1); err != nil {
				t.Fatalf("destroy once the container moved on: %v", err)
			}
		})
	}
}

// Retention keeps a version a container holds however many rotations
// pass, and re-provisioning (after a reboot) gives the container the
// version its grant records, which a sync then brings forward.
func TestRotationRetentionAndReprovision(t *testing.T) {
	ctx := context.Background()
	rf := newRotFixture(t)
	id, err := rf.secrets.Create(ctx, objects.Spec{Name: "db", Data: []byte("v1"), Labels: map[string]string{objects.KeepLabel: "1"}})
	if err != nil {
		t.Fatal(err)
	}
	grant := rf.run(t, map[string]string{LabelSecrets: "db"}, "c1")
	rf.rotate(t, "db", "v2")
	rf.rotate(t, "db", "v3")
	_, vs, err := rf.secrets.Versions(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	var kept []int
	for _, v := range vs {
		kept = append(kept, v.Version)
		if v.Version == 1 && (len(v.HeldBy) != 1 || !strings.HasPrefix(v.HeldBy[0], "container:c1:")) {
			t.Fatalf("version 1 held by %v", v.HeldBy)
		}
	}
	if len(kept) != 2 || kept[0] != 1 || kept[1] != 3 {
		t.Fatalf("kept versions %v, want [1 3] (1 held, 3 current)", kept)
	}

	// A reboot: the tmpfs is gone; the reconcile makes it again with the
	// recorded version, then the sync delivers the current one.
	if err := rf.fs.Unmount(grant); err != nil {
		t.Fatal(err)
	}
	listed := rf.m.BeginList()
	if err := rf.m.Reconcile(ctx, []Container{{ID: "c1", Name: "c1"}}, listed+1); err != nil {
		t.Fatal(err)
	}
	if got := rf.fs.data(grant, "/run/secrets/db"); got != "v1" {
		t.Fatalf("re-provisioned %q, want the recorded v1", got)
	}
	rf.m.Sync(ctx)
	if got := rf.fs.data(grant, "/run/secrets/db"); got != "v3" || rf.version(t, id, "c1") != 3 {
		t.Fatalf("after sync: %q, version %d", got, rf.version(t, id, "c1"))
	}
	// A container removed before its delivery is skipped, not failed.
	rf.rotate(t, "db", "v4")
	rf.ctl.gone["c1"] = true
	if n := rf.m.Sync(ctx); n != 0 {
		t.Fatalf("a removed container counted as %d failures", n)
	}
}

// A config at its default target (/<name>) cannot be swapped: its
// rotation replaces the tmpfs and restarts the container; the held
// version is reported under the config kind, not the secret one.
func TestRotationConfig(t *testing.T) {
	ctx := context.Background()
	rf := newRotFixture(t)
	id, err := rf.configs.Create(ctx, objects.Spec{Name: "app.ini", Data: []byte("k=1")})
	if err != nil {
		t.Fatal(err)
	}
	grant := rf.run(t, map[string]string{LabelConfigs: "app.ini"}, "c1")
	rf.ctl.grant, rf.ctl.target = grant, "/app.ini"
	if h, _ := rf.m.HeldVersions(ctx, objects.Config.Name, id); len(h[1]) != 1 {
		t.Fatalf("config versions held: %v", h)
	}
	if h, _ := rf.m.HeldVersions(ctx, objects.Secret.Name, id); len(h) != 0 {
		t.Fatalf("the config's ID read as a secret's: %v", h)
	}
	if _, changed, err := rf.configs.Rotate(ctx, "app.ini", 0, []byte("k=2")); err != nil || !changed {
		t.Fatal(changed, err)
	}
	if n := rf.m.Sync(ctx); n != 0 {
		t.Fatalf("%d failed", n)
	}
	if got := strings.Join(rf.ctl.log(), "; "); got != "restart c1 saw=k=2" {
		t.Fatalf("engine calls %q", got)
	}
	if h, _ := rf.m.HeldVersions(ctx, objects.Config.Name, id); len(h[2]) != 1 || len(h[1]) != 0 {
		t.Fatalf("config versions held after the delivery: %v", h)
	}
}

// A container removed (its destroy event handled) while a rotation is
// being delivered to it keeps no tmpfs: the delivery must not make one
// again for a grant already released, which nothing would unmount until
// hushd restarts.
func TestRotationRacesRemoval(t *testing.T) {
	ctx := context.Background()
	for _, labels := range []map[string]string{
		{LabelSecrets: "db"},                         // a tree, swapped
		{LabelSecretPrefix + "db": "target=/etc/db"}, // files bound one by one, a new tmpfs
	} {
		rf := newRotFixture(t)
		rf.secret(t, "db", "v1")
		rf.run(t, labels, "c1")
		rf.rotate(t, "db", "v2")
		rf.ctl.onRunning = func(id string) {
			rf.ctl.onRunning = nil
			if err := rf.m.Released(ctx, id); err != nil {
				t.Error(err)
			}
		}
		if n := rf.m.Sync(ctx); n != 0 {
			t.Errorf("%v: a removed container counted as %d failures", labels, n)
		}
		if ids := rf.fs.ids(t); len(ids) != 0 {
			t.Errorf("%v: tmpfs left for a removed container: %v", labels, ids)
		}
		if calls := rf.ctl.log(); len(calls) != 0 {
			t.Errorf("%v: a removed container was signalled or restarted: %v", labels, calls)
		}
	}
}

// A stopped container started while its files are being replaced may have
// read (or pinned) the old ones: whether it runs is asked once the files
// are replaced, so it is still signalled or restarted onto the new ones,
// and a version it lacks is never recorded without that.
func TestRotationRacesStart(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		labels map[string]string
		target string
		want   string
	}{
		{name: "files bound one by one", labels: map[string]string{LabelSecretPrefix + "db": "target=/etc/db"},
			target: "/etc/db", want: "restart c1 saw=v2"},
		{name: "signal", labels: map[string]string{LabelSecrets: "db", LabelRotate: "signal:SIGHUP"},
			target: "/run/secrets/db", want: "kill c1 SIGHUP saw=v2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rf := newRotFixture(t)
			rf.secret(t, "db", "v1")
			grant := rf.run(t, tt.labels, "c1")
			rf.ctl.grant, rf.ctl.target = grant, tt.target
			rf.ctl.stopped["c1"] = true
			rf.rotate(t, "db", "v2")
			// `docker start` right after the delivery first asked.
			rf.ctl.afterRunning = func(string) {
				rf.ctl.afterRunning = nil
				rf.ctl.mu.Lock()
				rf.ctl.stopped["c1"] = false
				rf.ctl.mu.Unlock()
			}
			if n := rf.m.Sync(ctx); n != 0 {
				t.Fatalf("%d failed", n)
			}
			if got := strings.Join(rf.ctl.log(), "; "); got != tt.want {
				t.Fatalf("engine calls %q, want %q", got, tt.want)
			}
		})
	}
}

// The rotation loop asks for a new change notification only once the one
// it holds has fired: each one asked for is a waiter the store keeps until
// the next write to the secrets or configs tables, so asking at every
// kick and retry would pile them up while those tables stay unwritten.
func TestRotationLoopBoundsWaiters(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rf := newRotFixture(t)
	rf.secret(t, "db", "v1")
	rf.run(t, map[string]string{LabelSecrets: "db"}, "c1")
	rf.rotate(t, "db", "v2")
	// Every delivery fails, so every kick runs one.
	rf.fail = func(string) error { return errors.New("injected") }
	var mu sync.Mutex
	asked := 0
	rf.m.changed = func() <-chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		asked++
		return make(chan struct{})
	}
	synced := make(chan struct{}, 4)
	rf.ctl.afterRunning = func(string) { synced <- struct{}{} }
	done := make(chan struct{})
	go func() {
		defer close(done)
		rf.m.rotations(ctx)
	}()
	for i := range 10 {
		rf.m.poke()
		for range 2 { // asked whether c1 exists, then whether it runs
			select {
			case <-synced:
			case <-time.After(10 * time.Second):
				t.Fatalf("kick %d: no delivery tried", i)
			}
		}
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if asked != 1 {
		t.Fatalf("10 deliveries asked for %d change notifications, none of which fired; want 1", asked)
	}
}

// A rotation recorded while Commit asks the engine for an unnamed
// container's name (or while a rename is recorded) changes the grant's
// revision: the name is still recorded, on the latest revision, and the
// delivered version is kept.
func TestCommitNameRacesRecord(t *testing.T) {
	ctx := context.Background()
	rf := newRotFixture(t)
	id := rf.secret(t, "db", "v1")
	p, err := rf.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), "")
	if err != nil {
		t.Fatal(err)
	}
	rf.rotate(t, "db", "v2")
	rf.m.names = func(context.Context, string) (string, error) {
		if n := rf.m.Sync(ctx); n != 0 {
			t.Errorf("%d failed deliveries", n)
		}
		return "engine_named", nil
	}
	if err := rf.m.Commit(ctx, p.GrantID, "c9", ""); err != nil {
		t.Fatalf("commit: %v", err)
	}
	hs, err := rf.m.Holders(ctx, objects.Secret.Table, id)
	if err != nil || len(hs) != 1 || hs[0].Name != "engine_named" || hs[0].Version != 2 {
		t.Fatalf("holders %+v, %v; want engine_named at version 2", hs, err)
	}
}

// A version a grant records may be gone (retention took it in the moment
// between Prepare reading it and the grant being written, before any hold
// existed): re-provisioning after a reboot then gives the container the
// current versions and records them, rather than leaving it without its
// files for good (a tree cannot be swapped when there is no mount); the
// Sync that follows records them.
func TestReprovisionRecordedVersionGone(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t) // its secrets know no holders: retention takes v1
	fx.m.control = &fakeControl{fs: fx.fs, stopped: map[string]bool{}, gone: map[string]bool{}}
	id, err := fx.secrets.Create(ctx, objects.Spec{Name: "db", Data: []byte("v1"), Labels: map[string]string{objects.KeepLabel: "1"}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.m.Commit(ctx, p.GrantID, "c1", "c1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := fx.secrets.Rotate(ctx, "db", 0, []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := fx.secrets.ContentVersion(ctx, id, 1); err == nil {
		t.Fatal("version 1 was kept; the test needs it gone")
	}
	// The reboot: no tmpfs.
	if err := fx.fs.Unmount(p.GrantID); err != nil {
		t.Fatal(err)
	}
	listed := fx.m.BeginList()
	if err := fx.m.Reconcile(ctx, []Container{{ID: "c1", Name: "c1"}}, listed+1); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if got := fx.fs.data(p.GrantID, "/run/secrets/db"); got != "v2" {
		t.Fatalf("re-provisioned %q, want the current v2", got)
	}
	// The Sync after the reconcile records it (once it signalled or
	// restarted the container, as for any rotation).
	if n := fx.m.Sync(ctx); n != 0 {
		t.Fatalf("%d failed deliveries", n)
	}
	hs, err := fx.m.Holders(ctx, objects.Secret.Table, id)
	if err != nil || len(hs) != 1 || hs[0].Version != 2 {
		t.Fatalf("holders %+v, %v; want version 2 recorded", hs, err)
	}
}
