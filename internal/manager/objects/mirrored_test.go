package objects

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// A stored record that does not open (an empty value, a value that is no
// sealed envelope) is an error for every read that meets it, from the
// mirror as from the store: never an object with no ID or name, and never
// silently left out of a list (the mirror decodes at the read, so a list
// meets it as the store's list does).
func TestUnreadableRecordIsAnError(t *testing.T) {
	for _, value := range []string{"", "not sealed"} {
		for _, mirrored := range []bool{false, true} {
			t.Run(fmt.Sprintf("value=%q/mirror=%v", value, mirrored), func(t *testing.T) {
				m, st := newManager(t, Secret)
				ctx := context.Background()
				if mirrored {
					useMirror(t, m, st)
				}
				good, err := m.Create(ctx, Spec{Name: "good", Data: []byte("v")})
				if err != nil {
					t.Fatal(err)
				}
				bad, err := identity.NewID()
				if err != nil {
					t.Fatal(err)
				}
				if err := storetest.RawPut(ctx, st, m.tbl.Key(bad), value); err != nil {
					t.Fatal(err)
				}
				if o, err := m.Get(ctx, bad); err == nil {
					t.Fatalf("get of an unreadable record: %+v, no error", o)
				}
				if objs, err := m.List(ctx, Filters{}); err == nil {
					t.Fatalf("list with an unreadable record: %d objects, no error", len(objs))
				} else if !errdefs.Is(err, errdefs.ErrInternal) {
					t.Fatalf("list with an unreadable record: %v, want an internal error", err)
				}
				if vs, err := m.VersionsOf(ctx, []string{good, bad}); err == nil {
					t.Fatalf("versions with an unreadable record: %v, no error", vs)
				}
				// The readable object is still served.
				if o, err := m.Get(ctx, good); err != nil || o.Name != "good" {
					t.Fatalf("get of the readable object: %+v, %v", o, err)
				}
			})
		}
	}
}

// Concurrent first reads of entries still sealed decode each once and agree
// (run under -race: the entry's decoded form is shared by every reader).
func TestMirrorConcurrentFirstReads(t *testing.T) {
	m, st := newManager(t, Config)
	ctx := context.Background()
	mir := storetest.RunMirror(t, store.NewMirror(st))
	m.UseMirror(mir)
	const n = 8
	ids := make([]string, n)
	for i := range n {
		id, err := m.Create(ctx, Spec{Name: fmt.Sprintf("c%d", i), Data: []byte(fmt.Sprintf("data-%d", i))})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4*n)
	for g := range 4 * n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := ids[g%n]
			o, err := m.Get(ctx, id)
			if err != nil {
				errs <- err
				return
			}
			if o.ID != id || o.Name != fmt.Sprintf("c%d", g%n) {
				errs <- fmt.Errorf("get %s: %+v", id, o)
				return
			}
			b, err := m.Reveal(&o)
			if err != nil || string(b) != fmt.Sprintf("data-%d", g%n) {
				errs <- fmt.Errorf("reveal %s: %v", id, err)
				return
			}
			objs, err := m.List(ctx, Filters{})
			if err != nil || len(objs) != n {
				errs <- fmt.Errorf("list: %d objects, %v", len(objs), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A remove by full ID of an object that a standalone container's grant
// uses is refused with the container named, as by the resolving path, and
// the object stays.
func TestRemoveByIDInUseByContainer(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := context.Background()
	useMirror(t, m, st)
	id, err := m.Create(ctx, Spec{Name: "db", Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, store.RefKey(Secret.Table, id, ContainerRefOwner("g1")), []byte(ContainerRefValue("web"))); err != nil {
		t.Fatal(err)
	}
	// The mirror holds the object and the marker before the remove.
	if _, err := m.Get(ctx, id); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{id, "db", id[:5]} {
		err := m.Remove(ctx, ref)
		if err == nil || err.Error() != "secret 'db' is in use by the following container: web" || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("remove %q of a secret a container uses: %v", ref, err)
		}
	}
	if _, err := m.Get(ctx, id); err != nil {
		t.Fatalf("the secret in use is gone: %v", err)
	}
}
