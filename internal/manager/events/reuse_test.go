package events

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// With the mirror opening the secrets and configs (as in hushd), events
// still name the right objects, in order, whichever of the mirror and the
// source reaches a write first.
func TestEventsWithMirrorOpening(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	mir := store.NewMirror(st)
	secrets := objects.New(objects.Secret, st, kr, nil)
	secrets.UseMirror(mir)
	configs := objects.New(objects.Config, st, kr, nil)
	configs.UseMirror(mir)
	storetest.RunMirror(t, mir)
	src := runSource(t, st, Config{})
	_, sub, err := src.Subscribe(ctx, Filter{}, time.Time{}, time.Time{}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	var want []string
	const n = 40
	ids := make([]string, n)
	for i := range n {
		m := secrets
		typ := "secret"
		if i%2 == 1 {
			m, typ = configs, "config"
		}
		id, err := m.Create(ctx, objects.Spec{Name: fmt.Sprintf("obj-%d", i), Data: []byte("d")})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
		want = append(want, fmt.Sprintf("%s create %s (name=obj-%d) swarm", typ, id, i))
	}
	o, err := secrets.Get(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := secrets.Update(ctx, ids[0], o.Version, objects.Spec{Name: "obj-0", Labels: map[string]string{"l": "2"}}); err != nil {
		t.Fatal(err)
	}
	want = append(want, fmt.Sprintf("secret update %s (name=obj-0) swarm", ids[0]))
	if err := configs.Remove(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	want = append(want, fmt.Sprintf("config remove %s (name=obj-1) swarm", ids[1]))
	for i, w := range want {
		if got := line(next(t, sub)); got != w {
			t.Fatalf("event %d: %s, want %s", i, got, w)
		}
	}
	src.mu.Lock()
	reused := src.reused
	src.mu.Unlock()
	t.Logf("%d of %d values taken from the mirror's opening", reused, len(want))
}

// A view the mirror's opening left is used for exactly its revision (the
// source's own copy of the value is not opened: here it could not be), a
// view for a revision the source has passed is dropped, and nothing is
// kept once the source has moved past it.
func TestSourceUsesMirrorsView(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	src := New(Config{Store: st})
	_, sub, err := src.Subscribe(ctx, Filter{}, time.Time{}, time.Time{}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	src.mu.Lock()
	src.loaded = true
	src.advanceLocked(10)
	src.mu.Unlock()

	src.opened("secrets", "s1", 12, []byte(`{"name":"from-mirror"}`))
	src.opened("secrets", "s0", 9, []byte(`{"name":"passed"}`))           // the source is at 10
	src.opened("secrets", "s1/x", 13, []byte(`{"name":"not-an-object"}`)) // not an object key
	src.opened("tasks", "t1", 13, []byte(`{}`))                           // not a watched table
	src.pmu.Lock()
	if len(src.pre) != 1 {
		t.Fatalf("pre holds %d views, want 1", len(src.pre))
	}
	src.pmu.Unlock()

	// Not a sealed value: only the mirror's view can name it.
	src.mu.Lock()
	src.putLocked("secrets", "s1", "/hush/secrets/s1", []byte("garbage"), 12)
	src.advanceLocked(12)
	src.mu.Unlock()
	if got, want := line(next(t, sub)), "secret create s1 (name=from-mirror) swarm"; got != want {
		t.Fatalf("%s, want %s", got, want)
	}

	// A view older than the write the source applies is not used: the
	// value is opened (here it fails, so the object stays unknown).
	src.opened("secrets", "s2", 13, []byte(`{"name":"old"}`))
	src.mu.Lock()
	src.putLocked("secrets", "s2", "/hush/secrets/s2", []byte("garbage"), 14)
	_, known := src.known["secrets"]["s2"]
	src.advanceLocked(14)
	src.mu.Unlock()
	if known {
		t.Fatal("a view of an older revision was used")
	}
	// A view ahead of the source stays until the source passes it.
	src.opened("secrets", "s3", 20, []byte(`{"name":"ahead"}`))
	src.mu.Lock()
	src.advanceLocked(19)
	src.mu.Unlock()
	src.pmu.Lock()
	_, kept := src.pre["secrets/s3"]
	src.pmu.Unlock()
	if !kept {
		t.Fatal("a view ahead of the source was dropped")
	}
	src.mu.Lock()
	src.advanceLocked(20)
	src.mu.Unlock()
	src.pmu.Lock()
	left := len(src.pre)
	src.pmu.Unlock()
	if left != 0 {
		t.Fatalf("%d views left after the source passed them", left)
	}
}
