package objects

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

func newManager(t testing.TB, kind Kind) (*Manager, *store.Store) {
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
	return New(kind, st, kr, nil), st
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"db_password", true},
		{"a", true},
		{"A.b-c_9", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"-bad", false},
		{"bad-", false},
		{"a b", false},
		{"é", false},
		{"a/b", false},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateName(%q): category %v", tt.name, err)
		}
	}
}

func TestCreateValidation(t *testing.T) {
	m, _ := newManager(t, Secret)
	ctx := context.Background()
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"empty data", Spec{Name: "a"}, "secret data must be larger than 0 and less than 512000 bytes"},
		{"too big", Spec{Name: "a", Data: make([]byte, 512000)}, "secret data must be larger than 0 and less than 512000 bytes"},
		{"no name", Spec{Data: []byte("x")}, "name must be provided"},
		{"bad name", Spec{Name: "-x", Data: []byte("x")}, "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]"},
		{"driver", Spec{Name: "a", Data: []byte("x"), Driver: &Driver{Name: "vault"}}, `plugin "vault" not found`},
		{"templating driver", Spec{Name: "a", Data: []byte("x"), Templating: &Driver{Name: "jinja"}},
			`templating driver "jinja" is not supported: hush renders only the "golang" driver (Templating.Name)`},
		{"templating driver without a name", Spec{Name: "a", Data: []byte("x"), Templating: &Driver{}},
			`templating driver "" is not supported: hush renders only the "golang" driver (Templating.Name)`},
		{"templating driver name is case-sensitive", Spec{Name: "a", Data: []byte("x"), Templating: &Driver{Name: "Golang"}},
			`templating driver "Golang" is not supported: hush renders only the "golang" driver (Templating.Name)`},
		{"templating options", Spec{Name: "a", Data: []byte("x"), Templating: &Driver{Name: "golang", Options: map[string]string{"k": "v"}}},
			`templating driver "golang" takes no options (Templating.Options)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Create(ctx, tt.spec)
			if err == nil || err.Error() != tt.want || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := m.Create(ctx, Spec{Name: "max", Data: make([]byte, 511999)}); err != nil {
		t.Fatalf("511999 bytes must be accepted: %v", err)
	}
	objs, err := m.List(ctx, Filters{})
	if err != nil || len(objs) != 1 {
		t.Fatalf("refused creates must store nothing, have %d objects", len(objs))
	}
}

// TestContentCarriesTemplating: the dispatcher learns which objects to
// render; a refused templating stores nothing.
func TestContentCarriesTemplating(t *testing.T) {
	ctx := context.Background()
	for _, kind := range []Kind{Secret, Config} {
		m, _ := newManager(t, kind)
		plain, err := m.Create(ctx, Spec{Name: "plain", Data: []byte("p")})
		if err != nil {
			t.Fatal(err)
		}
		tmpl, err := m.Create(ctx, Spec{Name: "tmpl", Data: []byte("{{.Task.ID}}"), Templating: &Driver{Name: "golang"}})
		if err != nil {
			t.Fatalf("%s: golang templating refused: %v", kind.Name, err)
		}
		for _, tt := range []struct{ id, data, templating string }{{plain, "p", ""}, {tmpl, "{{.Task.ID}}", "golang"}} {
			b, drv, err := m.Content(ctx, tt.id)
			if err != nil || string(b) != tt.data || drv != tt.templating {
				t.Fatalf("%s Content(%s) = %q, %q, %v", kind.Name, tt.id, b, drv, err)
			}
		}
		if _, _, err := m.Content(ctx, "nosuch"); !errdefs.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("Content of a missing object: %v", err)
		}
		if _, err := m.Create(ctx, Spec{Name: "bad", Data: []byte("x"), Templating: &Driver{Name: "x"}}); err == nil {
			t.Fatal("unknown templating driver accepted")
		}
		if objs, err := m.List(ctx, Filters{Names: []string{"bad"}}); err != nil || len(objs) != 0 {
			t.Fatalf("a refused object was stored: %v %v", objs, err)
		}
	}
}

func TestConfigLimit(t *testing.T) {
	m, _ := newManager(t, Config)
	_, err := m.Create(context.Background(), Spec{Name: "c", Data: make([]byte, 1000*1024)})
	if err == nil || !strings.Contains(err.Error(), "config data must be larger than 0 and less than 1024000 bytes") {
		t.Fatalf("got %v", err)
	}
}

func TestResolveOrder(t *testing.T) {
	m, _ := newManager(t, Secret)
	ctx := context.Background()
	ids := []string{"abc00000000000000000000001", "abd00000000000000000000002"}
	// Deterministic IDs make prefixes testable; the names collide with the
	// other object's ID prefix on purpose.
	next := 0
	m.newID = func() (string, error) { id := ids[next][:25]; next++; return id, nil }
	id1, err := m.Create(ctx, Spec{Name: "abd", Data: []byte("1")})
	if err != nil {
		t.Fatal(err)
	}
	id2, err := m.Create(ctx, Spec{Name: "other", Data: []byte("2")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ref    string
		wantID string
		errCat error
		errMsg string
	}{
		{ref: id1, wantID: id1},
		{ref: "abd", wantID: id1}, // exact name wins over the ID prefix of id2
		{ref: "other", wantID: id2},
		{ref: "abc", wantID: id1},
		{ref: "ab", errCat: errdefs.ErrInvalidArgument, errMsg: "secret ab is ambiguous (2 matches found)"},
		{ref: "ABD", wantID: id1}, // names are case-insensitive, as in Swarm
		{ref: "ABC", errCat: errdefs.ErrNotFound, errMsg: "secret ABC not found"}, // IDs are not
		{ref: "zzz", errCat: errdefs.ErrNotFound, errMsg: "secret zzz not found"},
	}
	for _, tt := range tests {
		o, err := m.Get(ctx, tt.ref)
		if tt.errCat != nil {
			if !errdefs.Is(err, tt.errCat) || err.Error() != tt.errMsg {
				t.Errorf("Get(%q) = %v, want %q", tt.ref, err, tt.errMsg)
			}
			continue
		}
		if err != nil || o.ID != tt.wantID {
			t.Errorf("Get(%q) = %v %v, want %s", tt.ref, o.ID, err, tt.wantID)
		}
	}
}

func TestUniqueNameCaseInsensitive(t *testing.T) {
	m, _ := newManager(t, Secret)
	ctx := context.Background()
	if _, err := m.Create(ctx, Spec{Name: "db_password", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	_, err := m.Create(ctx, Spec{Name: "DB_Password", Data: []byte("y")})
	if !errdefs.Is(err, errdefs.ErrAlreadyExists) || err.Error() != "secret DB_Password already exists" {
		t.Fatalf("got %v", err)
	}
}

func TestUpdate(t *testing.T) {
	m, _ := newManager(t, Secret)
	ctx := context.Background()
	id, err := m.Create(ctx, Spec{Name: "s", Data: []byte("value"), Labels: map[string]string{"a": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	o, err := m.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		version uint64
		spec    Spec
		want    string
	}{
		{"rename", o.Version, Spec{Name: "t"}, "only updates to Labels are allowed"},
		{"empty data", o.Version, Spec{Name: "s", Data: []byte{}}, "secret data must be larger than 0 and less than 512000 bytes"},
		{"bad keep label", o.Version, Spec{Name: "s", Labels: map[string]string{KeepLabel: "0"}}, `label io.hush.versions.keep must be a number of versions from 1 to 100, not "0"`},
		{"stale", o.Version - 1, Spec{Name: "s"}, "update out of sequence"},
	}
	for _, tt := range tests {
		if err := m.Update(ctx, id, tt.version, tt.spec); err == nil || err.Error() != tt.want {
			t.Errorf("%s: got %v want %q", tt.name, err, tt.want)
		}
	}
	// Same data (as `docker stack deploy` re-sends it) and new labels pass;
	// a driver change is ignored, as in Swarm.
	err = m.Update(ctx, id, o.Version, Spec{Name: "s", Data: []byte("value"), Labels: map[string]string{"b": "2"}, Templating: &Driver{Name: "golang"}})
	if err != nil {
		t.Fatal(err)
	}
	o2, err := m.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if o2.Version <= o.Version || o2.Labels["b"] != "2" || len(o2.Labels) != 1 || o2.Templating != nil || !o2.UpdatedAt.After(o.UpdatedAt) && !o2.UpdatedAt.Equal(o.UpdatedAt) {
		t.Fatalf("after update: %+v", o2)
	}
	data, err := m.Data(ctx, id)
	if err != nil || !bytes.Equal(data, []byte("value")) {
		t.Fatalf("data after label update: %v", err)
	}
}

// useMirror serves m's reads from a running mirror of st.
func useMirror(t *testing.T, m *Manager, st *store.Store) {
	t.Helper()
	m.UseMirror(storetest.RunMirror(t, store.NewMirror(st)))
}

// TestVersionsOf: the orchestrator's version lookup answers exactly the IDs
// asked for that exist, at their current version, from the mirror and from
// the store alike; and a list stays ordered by ID.
func TestVersionsOf(t *testing.T) {
	for _, mirrored := range []bool{false, true} {
		t.Run(fmt.Sprintf("mirror=%v", mirrored), func(t *testing.T) {
			m, st := newManager(t, Secret)
			ctx := context.Background()
			if mirrored {
				useMirror(t, m, st)
			}
			var ids []string
			for i := range 5 {
				id, err := m.Create(ctx, Spec{Name: fmt.Sprintf("s%d", i), Data: []byte{byte('a' + i)}})
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, id)
			}
			o, err := m.Get(ctx, ids[1])
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := m.Rotate(ctx, ids[1], o.Version, []byte("rotated")); err != nil {
				t.Fatal(err)
			}
			if err := m.Remove(ctx, ids[4]); err != nil {
				t.Fatal(err)
			}
			got, err := m.VersionsOf(ctx, []string{ids[0], ids[1], ids[4], "nosuchid0000000000000000a"})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]int{ids[0]: 1, ids[1]: 2}
			if !maps.Equal(got, want) {
				t.Fatalf("VersionsOf = %v, want %v", got, want)
			}
			if got, err := m.VersionsOf(ctx, nil); err != nil || len(got) != 0 {
				t.Fatalf("VersionsOf(nil) = %v, %v", got, err)
			}
			all, err := m.List(ctx, Filters{})
			if err != nil || len(all) != 4 {
				t.Fatalf("List = %d objects, %v", len(all), err)
			}
			if !slices.IsSortedFunc(all, func(a, b Object) int { return strings.Compare(a.ID, b.ID) }) {
				t.Fatal("List is not ordered by ID")
			}
		})
	}
}

func TestListFilters(t *testing.T) {
	for _, mirrored := range []bool{false, true} {
		t.Run(fmt.Sprintf("mirror=%v", mirrored), func(t *testing.T) { testListFilters(t, mirrored) })
	}
}

func testListFilters(t *testing.T, mirrored bool) {
	m, st := newManager(t, Secret)
	ctx := context.Background()
	if mirrored {
		useMirror(t, m, st)
	}
	for _, s := range []Spec{
		{Name: "app_db", Data: []byte("1"), Labels: map[string]string{"env": "prod"}},
		{Name: "app_api", Data: []byte("2"), Labels: map[string]string{"env": "dev"}},
		{Name: "other", Data: []byte("3")},
	} {
		if _, err := m.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		f    Filters
		want int
	}{
		{"all", Filters{}, 3},
		{"name prefix", Filters{NamePrefixes: []string{"app_"}}, 2},
		{"exact names", Filters{Names: []string{"app"}}, 0},
		{"name case", Filters{Names: []string{"APP_DB"}}, 1},
		{"name prefix case", Filters{NamePrefixes: []string{"APP"}}, 2},
		{"exact name", Filters{Names: []string{"other", "app_db"}}, 2},
		{"label key", Filters{Labels: map[string]string{"env": ""}}, 2},
		{"label value", Filters{Labels: map[string]string{"env": "prod"}}, 1},
		{"and", Filters{NamePrefixes: []string{"app"}, Labels: map[string]string{"env": "dev"}}, 1},
	}
	for _, tt := range tests {
		got, err := m.List(ctx, tt.f)
		if err != nil || len(got) != tt.want {
			t.Errorf("%s: got %d (%v), want %d", tt.name, len(got), err, tt.want)
		}
		for i := 1; i < len(got); i++ {
			if got[i-1].ID >= got[i].ID {
				t.Errorf("%s: not ordered by ID", tt.name)
			}
		}
	}
	// Read-your-writes: a remove is visible to the very next list.
	all, err := m.List(ctx, Filters{})
	if err != nil || len(all) != 3 {
		t.Fatalf("list before remove: %d objects, %v", len(all), err)
	}
	if err := m.Remove(ctx, all[0].ID); err != nil {
		t.Fatal(err)
	}
	if got, err := m.List(ctx, Filters{}); err != nil || len(got) != 2 {
		t.Fatalf("list after remove: %d objects, %v", len(got), err)
	}
}

func TestRemoveInUse(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := context.Background()
	id, err := m.Create(ctx, Spec{Name: "db_password", Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	put := func(owner, name string) {
		if err := st.Put(ctx, store.RefKey("secrets", id, owner), []byte(name)); err != nil {
			t.Fatal(err)
		}
	}
	put("svc1", "webapp")
	err = m.Remove(ctx, "db_password")
	if err == nil || err.Error() != "secret 'db_password' is in use by the following service: webapp" {
		t.Fatalf("got %v", err)
	}
	put("svc2", "other")
	err = m.Remove(ctx, "db_password")
	if err == nil || err.Error() != "secret 'db_password' is in use by the following services: other, webapp" {
		t.Fatalf("got %v", err)
	}
	if err := storetest.DeletePrefix(ctx, st, store.RefPrefix("secrets", id)); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, "db_password"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, id); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("after remove: %v", err)
	}
}

// TestSealedAtRest reads the raw stored value and checks the plaintext is not
// in it, and that the ciphertext is bound to its object.
func TestSealedAtRest(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := context.Background()
	canary := []byte("canary-7f3a9c2e11d84b6f")
	id, err := m.Create(ctx, Spec{Name: "c", Data: canary})
	if err != nil {
		t.Fatal(err)
	}
	id2, err := m.Create(ctx, Spec{Name: "d", Data: []byte("other")})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.Table("secrets").Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw.Value, canary) {
		t.Fatal("plaintext found in stored value")
	}
	r, _, err := m.get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	// It opens under its own AAD, and only there.
	cur := r.current()
	if cur == nil || cur.Sealed == nil {
		t.Fatalf("no current version: %+v", r.Versions)
	}
	if b, err := m.seal.Open(*cur.Sealed, m.aad(id, r.DataVersion)); err != nil || !bytes.Equal(b, canary) {
		t.Fatalf("sealed value does not open under its own AAD: %v", err)
	}
	if _, err := m.seal.Open(*cur.Sealed, m.aad(id, r.DataVersion+1)); !errors.Is(err, keyring.ErrDecrypt) {
		t.Fatalf("sealed value opened under another version's AAD: %v", err)
	}
	if _, err := m.seal.Open(*cur.Sealed, m.aad(id2, r.DataVersion)); !errors.Is(err, keyring.ErrDecrypt) {
		t.Fatalf("sealed value opened under another object's AAD: %v", err)
	}
	got, err := m.Data(ctx, id)
	if err != nil || !bytes.Equal(got, canary) {
		t.Fatalf("Data: %v", err)
	}
}

// TestMirroredGetReadsYourWrites checks the by-ID fast path never serves a
// value older than the last acknowledged write.
func TestMirroredGetReadsYourWrites(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := context.Background()
	useMirror(t, m, st)
	id, err := m.Create(ctx, Spec{Name: "s", Data: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		o, err := m.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprint(i)
		if err := m.Update(ctx, id, o.Version, Spec{Name: "s", Labels: map[string]string{"n": want}}); err != nil {
			t.Fatal(err)
		}
		o, err = m.Get(ctx, id)
		if err != nil || o.Labels["n"] != want {
			t.Fatalf("read after update %d: labels %v, %v", i, o.Labels, err)
		}
	}
	if err := m.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, id); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("read after remove: %v", err)
	}
}

func TestRevealOnlyReadableKinds(t *testing.T) {
	ctx := context.Background()
	sm, _ := newManager(t, Secret)
	id, err := sm.Create(ctx, Spec{Name: "s", Data: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	o, err := sm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := sm.Reveal(&o); err == nil || b != nil || !errdefs.Is(err, errdefs.ErrForbidden) {
		t.Fatalf("secret revealed: %v", err)
	}
	cm, _ := newManager(t, Config)
	if id, err = cm.Create(ctx, Spec{Name: "c", Data: []byte("conf")}); err != nil {
		t.Fatal(err)
	}
	if o, err = cm.Get(ctx, id); err != nil {
		t.Fatal(err)
	}
	if b, err := cm.Reveal(&o); err != nil || string(b) != "conf" {
		t.Fatalf("config reveal: %q %v", b, err)
	}
}

// TestRemoveByIDBehindTheMirror: a remove by full ID decides by the store,
// not by a mirror that is behind it: an object changed since the mirror
// saw it is still removed, an object in use is refused with its users
// named, and one already gone is not found.
func TestRemoveByIDBehindTheMirror(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := context.Background()
	mir := store.NewMirror(st)
	m.UseMirror(mir)
	mctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { mir.Run(mctx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	if err := mir.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, name := range []string{"changed", "inuse", "gone"} {
		id, err := m.Create(ctx, Spec{Name: name, Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if objs, err := m.List(ctx, Filters{}); err != nil || len(objs) != len(ids) {
		t.Fatalf("list: %d objects, %v", len(objs), err)
	}
	// From here the mirror keeps what it saw: every later write is one it
	// has not applied.
	stop()
	<-done
	changed, inUse, gone := ids[0], ids[1], ids[2]
	o, err := m.Get(ctx, changed)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(ctx, changed, o.Version, Spec{Name: "changed", Labels: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	if e, ok := mir.Entry(Secret.Table, changed); !ok || uint64(e.ModRev) != o.Version {
		t.Fatalf("mirror entry %+v, %v: want the version before the update (%d)", e, ok, o.Version)
	}
	if err := m.Remove(ctx, changed); err != nil {
		t.Fatalf("remove of an object changed since the mirror saw it: %v", err)
	}
	if _, err := m.Get(ctx, changed); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("after remove: %v", err)
	}

	if err := st.Put(ctx, store.RefKey("secrets", inUse, "svc1"), []byte("webapp")); err != nil {
		t.Fatal(err)
	}
	err = m.Remove(ctx, inUse)
	if err == nil || err.Error() != "secret 'inuse' is in use by the following service: webapp" {
		t.Fatalf("remove of an object in use: %v", err)
	}
	if _, err := m.Get(ctx, inUse); err != nil {
		t.Fatalf("the object in use is gone: %v", err)
	}

	// Removed by a manager without this mirror (another manager's write).
	other := New(Secret, st, m.seal, nil)
	if err := other.Remove(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if _, ok := mir.Entry(Secret.Table, gone); !ok {
		t.Fatal("the stopped mirror dropped the removed object")
	}
	if err := m.Remove(ctx, gone); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("remove of an object already gone: %v", err)
	}
}

// The mirror keeps a written object sealed until it is read: nothing is
// opened or decoded per write, and the first read decodes it once, to the
// object the store holds.
func TestMirrorDecodesOnFirstRead(t *testing.T) {
	m, st := newManager(t, Config)
	ctx := context.Background()
	mir := storetest.RunMirror(t, store.NewMirror(st))
	m.UseMirror(mir)
	id, err := m.Create(ctx, Spec{Name: "c", Data: []byte("conf"), Labels: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	// A bare read of the mirror waits for it to apply the create; unlike
	// the manager's reads it decodes nothing.
	var e store.Entry
	ok := false
	if err := mir.Read(ctx, Config.Table, func(items map[string]store.Entry) { e, ok = items[id] }); err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatal("the mirror lacks the object")
	}
	me, ok := e.Value.(*mirrored)
	if !ok {
		t.Fatalf("mirror entry %T, want the sealed form", e.Value)
	}
	me.mu.Lock()
	sealed := !me.decoded && me.sealed != nil
	me.mu.Unlock()
	if !sealed {
		t.Fatal("the object was decoded before any read")
	}
	o, err := m.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := New(Config, st, m.seal, nil).Get(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if o.ID != id || o.Name != "c" || o.Labels["k"] != "v" || o.Version != stored.Version || o.DataVersion != 1 {
		t.Fatalf("mirrored %+v, stored %+v", o, stored)
	}
	if b, err := m.Reveal(&o); err != nil || string(b) != "conf" {
		t.Fatalf("reveal from the mirrored object: %q, %v", b, err)
	}
	me.mu.Lock()
	defer me.mu.Unlock()
	if !me.decoded || me.sealed != nil {
		t.Fatal("the decoded object was not kept")
	}
}
