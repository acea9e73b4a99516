package standalone

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// fakeFS keeps mounts in memory: metadata and a copy of each file's data,
// so tests can check what a container would read.
type fakeFS struct {
	mu      sync.Mutex
	mounts  map[string][]secretfs.File
	trees   map[string]bool // mounts served from one swappable directory
	dirs    map[string]bool // directories without a complete mount
	failing bool
	// swaps and remounts count the rotations delivered per mount.
	swaps, remounts map[string]int
}

func newFakeFS() *fakeFS {
	return &fakeFS{mounts: map[string][]secretfs.File{}, trees: map[string]bool{}, dirs: map[string]bool{},
		swaps: map[string]int{}, remounts: map[string]int{}}
}

func cloneFiles(files []secretfs.File) []secretfs.File {
	cp := make([]secretfs.File, len(files))
	for i, x := range files {
		cp[i] = x
		cp[i].Data = slices.Clone(x.Data)
	}
	return cp
}

func (f *fakeFS) Swap(_ context.Context, id string, files []secretfs.File) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing {
		return errors.New("swap refused")
	}
	if _, ok := f.mounts[id]; !ok || !f.trees[id] {
		return errors.New("no tree mount to swap")
	}
	f.mounts[id] = cloneFiles(files)
	f.swaps[id]++
	return nil
}

// data returns what a container of mount id reads at target.
func (f *fakeFS) data(id, target string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, x := range f.mounts[id] {
		if x.Target == target {
			return string(x.Data)
		}
	}
	return "<none>"
}

func (f *fakeFS) Root() string { return "/fake/root" }

func (f *fakeFS) Mount(_ context.Context, id string, files []secretfs.File, tree bool) ([]secretfs.Binding, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing {
		return nil, errors.New("tmpfs refused")
	}
	if _, ok := f.mounts[id]; ok {
		return nil, errors.New("already mounted")
	}
	var b []secretfs.Binding
	if tree {
		if ok, why := secretfs.Swappable(files); !ok {
			return nil, errors.New(why)
		}
		b = []secretfs.Binding{{HostPath: path.Join(f.Root(), id, "s"), ContainerPath: secretfs.SecretsDir}}
	} else {
		for i, x := range files {
			b = append(b, secretfs.Binding{HostPath: path.Join(f.Root(), id, string(rune('0'+i))), ContainerPath: x.Target})
		}
	}
	f.mounts[id] = cloneFiles(files)
	f.trees[id] = tree
	f.remounts[id]++
	delete(f.dirs, id)
	return b, nil
}

func (f *fakeFS) Mounted(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.mounts[id]
	return ok
}

func (f *fakeFS) Unmount(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounts, id)
	delete(f.trees, id)
	delete(f.dirs, id)
	return nil
}

func (f *fakeFS) IDs() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id := range f.mounts {
		ids = append(ids, id)
	}
	for id := range f.dirs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

func (f *fakeFS) ids(t *testing.T) []string {
	t.Helper()
	ids, _ := f.IDs()
	return ids
}

type fixture struct {
	m       *Manager
	fs      *fakeFS
	secrets *objects.Manager
	configs *objects.Manager
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st := storetest.New(t)
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{fs: newFakeFS(), secrets: objects.New(objects.Secret, st, kr, nil), configs: objects.New(objects.Config, st, kr, nil)}
	fx.m = New(Config{Store: st, Secrets: fx.secrets, Configs: fx.configs, FS: fx.fs,
		Names: func(context.Context, string) (string, error) { return "engine_named", nil }})
	return fx
}

func (fx *fixture) secret(t *testing.T, name, data string) string {
	t.Helper()
	id, err := fx.secrets.Create(context.Background(), objects.Spec{Name: name, Data: []byte(data)})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mustParse(t *testing.T, labels map[string]string) Request {
	t.Helper()
	req, err := ParseLabels(labels)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestPrepareCommitRelease(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	dbID := fx.secret(t, "db_password", "s3cret")
	cfgID, err := fx.configs.Create(ctx, objects.Spec{Name: "app.ini", Data: []byte("k=v")})
	if err != nil {
		t.Fatal(err)
	}
	req := mustParse(t, map[string]string{LabelSecretPrefix + "db_password": "target=/etc/app/key,uid=1000,gid=1000,mode=0400", LabelConfigs: "app.ini"})
	p, err := fx.m.Prepare(ctx, req, "app")
	if err != nil {
		t.Fatal(err)
	}
	want := []secretfs.Binding{
		{HostPath: "/fake/root/" + p.GrantID + "/0", ContainerPath: "/etc/app/key"},
		{HostPath: "/fake/root/" + p.GrantID + "/1", ContainerPath: "/app.ini"},
	}
	if !slices.Equal(p.Bindings, want) {
		t.Fatalf("bindings %+v, want %+v", p.Bindings, want)
	}
	files := fx.fs.mounts[p.GrantID]
	if len(files) != 2 || string(files[0].Data) != "s3cret" || files[0].UID != 1000 || files[0].GID != 1000 || files[0].Mode != 0o400 ||
		string(files[1].Data) != "k=v" || files[1].Mode != 0o444 {
		t.Fatalf("mounted files %+v", files)
	}
	if err := fx.m.Commit(ctx, p.GrantID, "c1", "app"); err != nil {
		t.Fatal(err)
	}

	// In use: refused with Swarm's text, container for service.
	err = fx.secrets.Remove(ctx, "db_password")
	if err == nil || err.Error() != "secret 'db_password' is in use by the following container: app" {
		t.Fatalf("secret rm while in use: %v", err)
	}
	if err := fx.configs.Remove(ctx, "app.ini"); err == nil || !strings.Contains(err.Error(), "in use by the following container: app") {
		t.Fatalf("config rm while in use: %v", err)
	}

	hs, err := fx.m.Holders(ctx, "secrets", dbID)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 || hs[0].Kind != "container" || hs[0].ID != "c1" || hs[0].Name != "app" || hs[0].Version != 1 || hs[0].Since.IsZero() {
		t.Fatalf("holders %+v", hs)
	}
	if hs, _ := fx.m.Holders(ctx, "configs", cfgID); len(hs) != 1 {
		t.Fatalf("config holders %+v", hs)
	}

	// die is not followed; destroy releases.
	if err := fx.m.Released(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if !fx.fs.Mounted(p.GrantID) {
		t.Fatal("another container's removal unmounted app's secrets")
	}
	if err := fx.m.Released(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if ids := fx.fs.ids(t); len(ids) != 0 {
		t.Fatalf("mounts left after release: %v", ids)
	}
	if hs, _ := fx.m.Holders(ctx, "secrets", dbID); len(hs) != 0 {
		t.Fatalf("holders after release: %+v", hs)
	}
	if err := fx.secrets.Remove(ctx, "db_password"); err != nil {
		t.Fatalf("secret rm after release: %v", err)
	}
}

func TestInUseByServiceAndContainers(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	fx.secret(t, "db", "x")
	for _, n := range []string{"b", "a"} {
		p, err := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), n)
		if err != nil {
			t.Fatal(err)
		}
		if err := fx.m.Commit(ctx, p.GrantID, "id-"+n, n); err != nil {
			t.Fatal(err)
		}
	}
	err := fx.secrets.Remove(ctx, "db")
	if err == nil || err.Error() != "secret 'db' is in use by the following containers: a, b" {
		t.Fatalf("got %v", err)
	}
}

func TestCommitNamesUnnamedContainer(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	fx.secret(t, "db", "x")
	p, err := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.m.Commit(ctx, p.GrantID, "c9", ""); err != nil {
		t.Fatal(err)
	}
	if err := fx.secrets.Remove(ctx, "db"); err == nil || !strings.HasSuffix(err.Error(), "container: engine_named") {
		t.Fatalf("got %v", err)
	}
}

// A refusal leaves nothing: no grant (the secret can be removed), no mount.
func TestPrepareRefusals(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		labels map[string]string
		setup  func(fx *fixture)
		err    string
	}{
		{name: "unknown secret", labels: map[string]string{LabelSecrets: "db,nope"}, err: "secret not found: nope"},
		{name: "unknown config", labels: map[string]string{LabelSecrets: "db", LabelConfigs: "nope"}, err: "config not found: nope"},
		{name: "prefix is not a name", labels: map[string]string{LabelSecrets: "d"}, err: "secret not found: d"},
		{name: "tmpfs fails", labels: map[string]string{LabelSecrets: "db"}, setup: func(fx *fixture) { fx.fs.failing = true }, err: "tmpfs refused"},
		{name: "templated", labels: map[string]string{LabelSecrets: "tpl"}, setup: func(fx *fixture) {
			if _, err := fx.secrets.Create(ctx, objects.Spec{Name: "tpl", Data: []byte("{{.}}"), Templating: &objects.Driver{Name: "golang"}}); err != nil {
				panic(err)
			}
		}, err: "templated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newFixture(t)
			fx.secret(t, "db", "x")
			if tt.setup != nil {
				tt.setup(fx)
			}
			_, err := fx.m.Prepare(ctx, mustParse(t, tt.labels), "app")
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("got %v, want %q", err, tt.err)
			}
			if tt.name != "tmpfs fails" && !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("%v: not InvalidArgument (a 400)", err)
			}
			if ids := fx.fs.ids(t); len(ids) != 0 {
				t.Fatalf("mounts left: %v", ids)
			}
			all, err := fx.m.grants.list(ctx)
			if err != nil || len(all) != 0 {
				t.Fatalf("grants left: %v %v", all, err)
			}
			if err := fx.secrets.Remove(ctx, "db"); err != nil {
				t.Fatalf("secret still marked in use: %v", err)
			}
		})
	}
}

func TestAbort(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	fx.secret(t, "db", "x")
	p, err := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), "app")
	if err != nil {
		t.Fatal(err)
	}
	fx.m.Abort(ctx, p.GrantID)
	if ids := fx.fs.ids(t); len(ids) != 0 {
		t.Fatalf("mounts left: %v", ids)
	}
	if err := fx.secrets.Remove(ctx, "db"); err != nil {
		t.Fatal(err)
	}
}

func TestReconcile(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	fx.secret(t, "db", "value")
	prep := func(name, cid string) string {
		p, err := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), name)
		if err != nil {
			t.Fatal(err)
		}
		if cid != "" {
			if err := fx.m.Commit(ctx, p.GrantID, cid, name); err != nil {
				t.Fatal(err)
			}
		}
		return p.GrantID
	}
	survivor := prep("survivor", "c1")
	gone := prep("gone", "c2")
	uncommitted := prep("late", "") // hushd died between create and Commit
	pending := prep("inflight", "")
	// The survivor's tmpfs vanished (a reboot); an orphan directory stayed.
	_ = fx.fs.Unmount(survivor)
	fx.fs.dirs["orphan"] = true
	fx.m.mu.Lock()
	delete(fx.m.pending, uncommitted) // as after a restart
	fx.m.mu.Unlock()

	src := func(id string) []string { return []string{"/var/lib/x", "/fake/root/" + id + "/0"} }
	listed := fx.m.BeginList()
	// Committed after the listing began: its container may be missing
	// from the list, so it must be left alone.
	racing := prep("racing", "c5")
	err := fx.m.Reconcile(ctx, []Container{
		{ID: "c1", Name: "survivor", Sources: src(survivor)},
		{ID: "c3", Name: "late", Sources: src(uncommitted)},
		{ID: "c4", Name: "stranger", Sources: []string{"/elsewhere/" + gone + "/0"}},
	}, listed)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fx.fs.ids(t), sorted(survivor, uncommitted, pending, racing); !slices.Equal(got, want) {
		t.Fatalf("mounts after reconcile %v, want %v", got, want)
	}
	if string(fx.fs.mounts[survivor][0].Data) != "value" {
		t.Fatal("the survivor's tmpfs was not re-provisioned with its secret")
	}
	all, err := fx.m.grants.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*Grant{}
	for _, g := range all {
		byID[g.ID] = g
	}
	if _, ok := byID[gone]; ok {
		t.Fatal("the grant of a removed container survived")
	}
	if g := byID[uncommitted]; g == nil || g.ContainerID != "c3" || g.Name != "late" {
		t.Fatalf("uncommitted grant not adopted: %+v", g)
	}
	if byID[pending] == nil {
		t.Fatal("a grant being prepared was removed")
	}
	if byID[racing] == nil {
		t.Fatal("a grant committed during the listing was removed")
	}
	// The next reconcile, with a listing that started after, releases it.
	if err := fx.m.Reconcile(ctx, nil, fx.m.BeginList()); err != nil {
		t.Fatal(err)
	}
	if got, want := fx.fs.ids(t), sorted(pending); !slices.Equal(got, want) {
		t.Fatalf("mounts after the second reconcile %v, want %v", got, want)
	}
}

func sorted(s ...string) []string { sort.Strings(s); return s }

// fakeEngine serves a fixed container list and the destroy events a test
// sends.
type fakeEngine struct {
	mu         sync.Mutex
	containers []Container
	events     chan Event
	subscribed chan struct{}
}

func (e *fakeEngine) Containers(context.Context) ([]Container, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.containers), nil
}

func (e *fakeEngine) Events(ctx context.Context) (<-chan Event, <-chan error) {
	select {
	case e.subscribed <- struct{}{}:
	default:
	}
	return e.events, make(chan error)
}

func TestRunFollowsDestroy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fx := newFixture(t)
	fx.secret(t, "db", "v")
	p1, _ := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), "a")
	p2, _ := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), "b")
	if err := fx.m.Commit(ctx, p1.GrantID, "c1", "a"); err != nil {
		t.Fatal(err)
	}
	if err := fx.m.Commit(ctx, p2.GrantID, "c2", "b"); err != nil {
		t.Fatal(err)
	}
	eng := &fakeEngine{
		containers: []Container{{ID: "c1", Sources: []string{"/fake/root/" + p1.GrantID + "/0"}}, {ID: "c2", Sources: []string{"/fake/root/" + p2.GrantID + "/0"}}},
		events:     make(chan Event), subscribed: make(chan struct{}, 1),
	}
	done := make(chan struct{})
	go func() { fx.m.Run(ctx, eng); close(done) }()
	<-eng.subscribed
	eng.events <- Event{ContainerID: "c2"}
	eng.events <- Event{ContainerID: "c1", Renamed: true, Name: "renamed"}
	// An unbuffered send returns once Run took it; the next one once the
	// one before was handled.
	eng.events <- Event{ContainerID: "unrelated"}
	cancel()
	<-done
	if err := fx.secrets.Remove(context.Background(), "db"); err == nil || !strings.HasSuffix(err.Error(), "container: renamed") {
		t.Fatalf("after a rename: %v", err)
	}
	if got := fx.fs.ids(t); !slices.Equal(got, []string{p1.GrantID}) {
		t.Fatalf("mounts %v, want only %s", got, p1.GrantID)
	}
}

// TestReconcileNoHijack: a container (labelled, so listed) whose own binds
// also reach into another container's grant directory, as anyone on the
// socket may write, must not take that grant over: the victim keeps its
// grant and tmpfs, and the intruder keeps its own.
func TestReconcileNoHijack(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	fx.secret(t, "db", "value")
	prep := func(name, cid string) string {
		p, err := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), name)
		if err != nil {
			t.Fatal(err)
		}
		if err := fx.m.Commit(ctx, p.GrantID, cid, name); err != nil {
			t.Fatal(err)
		}
		return p.GrantID
	}
	victim := prep("victim", "c1")
	intruder := prep("intruder", "c2")
	for _, order := range [][]string{{victim, intruder}, {intruder, victim}} {
		err := fx.m.Reconcile(ctx, []Container{
			{ID: "c1", Name: "victim", Sources: []string{"/fake/root/" + victim + "/0"}},
			// The intruder's list of mounts names the victim's first.
			{ID: "c2", Name: "intruder", Sources: []string{"/fake/root/" + order[0] + "/0", "/fake/root/" + order[1] + "/0"}},
			// An unlabelled-looking stray with only the victim's dir.
			{ID: "c3", Name: "stray", Sources: []string{"/fake/root/" + victim + "/0"}},
		}, fx.m.BeginList())
		if err != nil {
			t.Fatal(err)
		}
		all, err := fx.m.grants.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		byID := map[string]*Grant{}
		for _, g := range all {
			byID[g.ID] = g
		}
		if g := byID[victim]; g == nil || g.ContainerID != "c1" || g.Name != "victim" {
			t.Fatalf("victim's grant taken over: %+v", g)
		}
		if g := byID[intruder]; g == nil || g.ContainerID != "c2" {
			t.Fatalf("intruder's own grant lost: %+v", g)
		}
		if got, want := fx.fs.ids(t), sorted(victim, intruder); !slices.Equal(got, want) {
			t.Fatalf("mounts %v, want %v", got, want)
		}
	}
	// The victim removed while hushd was down: a container still binding
	// its directory does not adopt its grant, which is released.
	if err := fx.m.Reconcile(ctx, []Container{
		{ID: "c2", Name: "intruder", Sources: []string{"/fake/root/" + victim + "/0", "/fake/root/" + intruder + "/0"}},
		{ID: "c3", Name: "stray", Sources: []string{"/fake/root/" + victim + "/0"}},
	}, fx.m.BeginList()); err != nil {
		t.Fatal(err)
	}
	if got, want := fx.fs.ids(t), sorted(intruder); !slices.Equal(got, want) {
		t.Fatalf("mounts after the victim's removal %v, want %v", got, want)
	}
	// Removing the intruder releases its grant.
	if err := fx.m.Released(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	if got := fx.fs.ids(t); len(got) != 0 {
		t.Fatalf("mounts after the intruder's removal %v, want none", got)
	}
}

// TestCommittedBounded: what a reconcile needs to know of recent commits
// must not grow with every create and rm a client makes between two
// reconciles (the stream may stay up for months).
func TestCommittedBounded(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	fx.secret(t, "db", "value")
	for i := range 20 {
		p, err := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), "c")
		if err != nil {
			t.Fatal(err)
		}
		cid := "c" + string(rune('a'+i))
		if err := fx.m.Commit(ctx, p.GrantID, cid, "c"); err != nil {
			t.Fatal(err)
		}
		if err := fx.m.Released(ctx, cid); err != nil {
			t.Fatal(err)
		}
		a, err := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), "d")
		if err != nil {
			t.Fatal(err)
		}
		fx.m.Abort(ctx, a.GrantID)
	}
	fx.m.mu.Lock()
	n, pend := len(fx.m.committed), len(fx.m.pending)
	fx.m.mu.Unlock()
	if n != 0 || pend != 0 {
		t.Fatalf("after 20 creates and removals: %d commits and %d pending remembered", n, pend)
	}
}

// TestCommitContainerAlreadyGone: the container was removed (by name,
// from another client) after the engine created it but before its grant
// was recorded: its destroy event found no grant to release, so Commit
// must see the container is gone and release the grant itself, not keep
// a tmpfs and an in-use marker for a container that no longer exists.
func TestCommitContainerAlreadyGone(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	fx.secret(t, "db", "value")
	fx.m.names = func(_ context.Context, id string) (string, error) {
		if id == "gone" {
			return "", fmt.Errorf("no such container: %w", errdefs.ErrNotFound)
		}
		return "engine_named", nil
	}
	p, err := fx.m.Prepare(ctx, mustParse(t, map[string]string{LabelSecrets: "db"}), "app")
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.m.Released(ctx, "gone"); err != nil { // the event, before Commit
		t.Fatal(err)
	}
	if err := fx.m.Commit(ctx, p.GrantID, "gone", "app"); err != nil {
		t.Fatal(err)
	}
	all, err := fx.m.grants.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 0 || len(fx.fs.ids(t)) != 0 {
		t.Fatalf("grants %d, mounts %v left for a removed container", len(all), fx.fs.ids(t))
	}
	if err := fx.secrets.Remove(ctx, "db"); err != nil {
		t.Fatalf("secret rm: %v", err)
	}
}
