package objects

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/keyring"
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

// A master-key rotation re-wraps every stored value and then forgets the
// old key. Entries the mirror kept sealed from before it are replaced by
// the re-wrapped values (reads wait for them) and open under the new key;
// one a stopped mirror still holds (a manager whose watch is behind) no
// longer opens, and a remove by its ID takes the resolving path and
// removes it all the same.
func TestMirrorSealedAcrossMasterKeyRotation(t *testing.T) {
	ctx := context.Background()
	keys := storetest.NewKeys(t)
	st := storetest.NewIn(t, t.TempDir(), keys)
	secrets := New(Secret, st, keys, nil)
	configs := New(Config, st, keys, nil)
	st.RegisterInner(Secret.Table, secrets.RewrapData)
	st.RegisterInner(Config.Table, configs.RewrapData)
	st.RegisterInner(FingerprintTable, RewrapFingerprintKey)

	live := store.NewMirror(st)
	secrets.UseMirror(live)
	configs.UseMirror(live)
	storetest.RunMirror(t, live)
	// A second pair of managers over a mirror that stops before the
	// rotation and keeps what it saw.
	behind := store.NewMirror(st)
	secretsBehind := New(Secret, st, keys, nil)
	secretsBehind.UseMirror(behind)
	bctx, stop := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() { behind.Run(bctx); close(stopped) }()
	t.Cleanup(func() { stop(); <-stopped })
	if err := behind.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	read, err := secrets.Create(ctx, Spec{Name: "read", Data: []byte("r")})
	if err != nil {
		t.Fatal(err)
	}
	unread, err := secrets.Create(ctx, Spec{Name: "unread", Data: []byte("u")})
	if err != nil {
		t.Fatal(err)
	}
	conf, err := configs.Create(ctx, Spec{Name: "conf", Data: []byte("c")})
	if err != nil {
		t.Fatal(err)
	}
	// Decoded before the rotation: "read" and the config.
	if _, err := secrets.Get(ctx, read); err != nil {
		t.Fatal(err)
	}
	if o, err := configs.Get(ctx, conf); err != nil {
		t.Fatal(err)
	} else if b, err := configs.Reveal(&o); err != nil || string(b) != "c" {
		t.Fatalf("reveal before the rotation: %q %v", b, err)
	}
	// The stopped mirror holds both secrets, sealed under the old key (a
	// bare read waits for them without decoding).
	held := 0
	if err := behind.Read(ctx, Secret.Table, func(items map[string]store.Entry) { held = len(items) }); err != nil || held != 2 {
		t.Fatalf("the second mirror holds %d secrets, %v", held, err)
	}
	stop()
	<-stopped
	if _, ok := behind.Entry(Secret.Table, unread); !ok {
		t.Fatal("the stopped mirror lacks a secret")
	}

	old, err := keys.CurrentID()
	if err != nil {
		t.Fatal(err)
	}
	next, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	keys.Keyring().Rotate(next)
	if _, err := st.Rewrap(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if left, err := st.Referencing(ctx, old); err != nil || left != 0 {
		t.Fatalf("after the re-wrap %d values need the old key (%v)", left, err)
	}
	if err := keys.Keyring().Forget(old); err != nil {
		t.Fatal(err)
	}

	objs, err := secrets.List(ctx, Filters{})
	if err != nil || len(objs) != 2 || objs[0].Name == "" || objs[1].Name == "" {
		t.Fatalf("list after the rotation: %+v, %v", objs, err)
	}
	o, err := configs.Get(ctx, conf)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := configs.Reveal(&o); err != nil || string(b) != "c" {
		t.Fatalf("reveal after the rotation: %q %v", b, err)
	}
	if e, ok := behind.Entry(Secret.Table, unread); !ok {
		t.Fatal("the stopped mirror dropped a secret")
	} else if _, err := secretsBehind.object(e.Value.(*mirrored)); err == nil {
		t.Fatal("an entry sealed under the forgotten key opened")
	}
	if err := secretsBehind.Remove(ctx, unread); err != nil {
		t.Fatalf("remove by ID through a mirror behind the rotation: %v", err)
	}
	if _, err := secrets.Get(ctx, unread); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get after remove: %v", err)
	}
	if err := secrets.Remove(ctx, read); err != nil {
		t.Fatal(err)
	}
}

// A remove by full ID racing a service that starts to reference the
// object: etcd orders the two transactions, so either the remove wins and
// the reference (guarded on the object existing) is refused, or the
// reference wins and the remove is refused naming the service. Never both,
// never a marker left on a removed object.
func TestRemoveByIDRacingAReference(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := context.Background()
	useMirror(t, m, st)
	svcs := st.Table("services")
	for i := range 30 {
		id, err := m.Create(ctx, Spec{Name: fmt.Sprintf("s%d", i), Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		// The mirror has the object: the remove takes the guarded path.
		if _, err := m.Get(ctx, id); err != nil {
			t.Fatal(err)
		}
		svc := fmt.Sprintf("svc%d", i)
		var wg sync.WaitGroup
		var rmErr, refErr error
		wg.Add(2)
		go func() { defer wg.Done(); rmErr = m.Remove(ctx, id) }()
		go func() {
			defer wg.Done()
			_, refErr = svcs.CreateGuarded(ctx, svc, svc, []byte("{}"),
				[]store.Cond{store.Exists(m.tbl.Key(id))},
				store.PutOp(store.RefKey(Secret.Table, id, svc), svc))
		}()
		wg.Wait()
		markers, err := storetest.Count(ctx, st, store.RefPrefix(Secret.Table, id))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case rmErr == nil && refErr == nil:
			t.Fatalf("round %d: both the remove and the reference succeeded", i)
		case rmErr == nil:
			if !errors.Is(refErr, store.ErrGuard) || markers != 0 {
				t.Fatalf("round %d: removed; reference %v, %d markers", i, refErr, markers)
			}
		case refErr == nil:
			want := fmt.Sprintf("secret 's%d' is in use by the following service: %s", i, svc)
			if rmErr.Error() != want || markers != 1 {
				t.Fatalf("round %d: referenced; remove %v, %d markers", i, rmErr, markers)
			}
		default:
			t.Fatalf("round %d: remove %v, reference %v", i, rmErr, refErr)
		}
	}
}

// A remove by full ID acknowledged by one manager is seen by the next read
// on another manager (its own mirror), as any acknowledged write is: the
// remove is an etcd transaction, and mirror reads wait for etcd's revision.
func TestRemoveByIDThenReadOnAnotherManager(t *testing.T) {
	a, st := newManager(t, Secret)
	ctx := context.Background()
	useMirror(t, a, st)
	b := New(Secret, st, a.seal, nil)
	useMirror(t, b, st)
	for i := range 20 {
		id, err := a.Create(ctx, Spec{Name: fmt.Sprintf("s%d", i), Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Get(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Get(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := a.Remove(ctx, id); err != nil {
			t.Fatal(err)
		}
		if o, err := b.Get(ctx, id); !errdefs.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("round %d: get on the other manager after the remove: %+v, %v", i, o, err)
		}
		if objs, err := b.List(ctx, Filters{}); err != nil || len(objs) != 0 {
			t.Fatalf("round %d: list on the other manager after the remove: %d, %v", i, len(objs), err)
		}
	}
}

// What the mirror holds for an object stays about what the decoded object
// holds (the current version's sealed data), not the whole stored record:
// a record keeps every retained version (up to maxKeep, each up to MaxSize),
// and kept sealed until a read that may never come on a follower, every
// manager's heap would hold all of them for every object. Small records
// (most secrets) still wait sealed for their first read.
func TestMirrorKeepsNoLargeRecordSealed(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := context.Background()
	mir := storetest.RunMirror(t, store.NewMirror(st))
	m.UseMirror(mir)
	small, err := m.Create(ctx, Spec{Name: "small", Data: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 50<<10)
	big, err := m.Create(ctx, Spec{Name: "big", Data: data})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 6; i++ {
		data[0] = byte(i)
		o, err := New(Secret, st, m.seal, nil).Get(ctx, big)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Update(ctx, big, o.Version, Spec{Name: "big", Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	var entries map[string]*mirrored
	if err := mir.Read(ctx, Secret.Table, func(items map[string]store.Entry) {
		entries = map[string]*mirrored{}
		for id, e := range items {
			entries[id] = e.Value.(*mirrored)
		}
	}); err != nil {
		t.Fatal(err)
	}
	held := func(e *mirrored) (sealed int, decoded bool) {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.sealed), e.decoded
	}
	if n, decoded := held(entries[big]); n > len(data) || !decoded {
		t.Fatalf("the mirror keeps %d sealed bytes of a %d-byte secret with 6 versions (decoded: %v)", n, len(data), decoded)
	}
	if n, decoded := held(entries[small]); n == 0 || decoded {
		t.Fatalf("a small record was decoded before any read (%d sealed bytes kept)", n)
	}
	o, err := m.Get(ctx, big)
	if err != nil || o.Name != "big" || o.DataVersion != 6 {
		t.Fatalf("get of the large secret: %+v, %v", o, err)
	}
}
