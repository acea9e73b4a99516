package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

func runMirror(t *testing.T, st *store.Store, kinds ...string) *store.Mirror {
	t.Helper()
	m := store.NewMirror(st)
	for _, k := range kinds {
		m.Register(k, func(o store.Object) (any, error) { return string(o.Value), nil })
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return m
}

func snapshot(t *testing.T, m *store.Mirror, kind string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := m.Read(context.Background(), kind, func(items map[string]store.Entry) {
		for id, e := range items {
			out[id] = e.Value.(string)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMirrorReadYourWrites(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	a, b := st.Table("a"), st.Table("b")
	if _, err := a.Create(ctx, "pre", "pre", []byte("loaded")); err != nil {
		t.Fatal(err)
	}
	m := runMirror(t, st, "a")
	if got := snapshot(t, m, "a"); got["pre"] != "loaded" || len(got) != 1 {
		t.Fatalf("initial load: %v", got)
	}
	for i := 0; i < 50; i++ {
		id := string(rune('a'+i%26)) + string(rune('a'+i/26))
		rev, err := a.Create(ctx, id, id, []byte(id))
		if err != nil {
			t.Fatal(err)
		}
		// A write to an unmirrored table must not stall reads.
		if _, err := b.Create(ctx, id, id, []byte("x")); err != nil {
			t.Fatal(err)
		}
		got := snapshot(t, m, "a")
		if got[id] != id {
			t.Fatalf("write at rev %d not visible to the next read", rev)
		}
	}
	if err := a.Delete(ctx, "pre", "pre", 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := snapshot(t, m, "a")["pre"]; ok {
		t.Fatal("delete not visible to the next read")
	}
	if got := snapshot(t, m, "a"); len(got) != 50 {
		t.Fatalf("have %d items, want 50", len(got))
	}
}

// TestMirrorRecoversFromCompaction makes the mirror's watch start at a
// revision the store has already compacted away: between the snapshot the
// mirror loads and the watch it then starts, two writes land and the store
// is compacted past the snapshot. The mirror must notice and re-list, and
// then serve both writes.
func TestMirrorRecoversFromCompaction(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	a := st.Table("a")
	// A row to decode during the first load: the decoder below is the
	// test's way in between the load and the watch.
	if _, err := a.Create(ctx, "pre", "pre", []byte("loaded")); err != nil {
		t.Fatal(err)
	}
	m := store.NewMirror(st)
	var once sync.Once
	var snapRev, compactedAt int64
	injected := make(chan error, 1)
	m.Register("a", func(o store.Object) (any, error) {
		once.Do(func() {
			// Runs inside the first load, whose snapshot is at o.ModRev or
			// later; the watch will start just after that snapshot.
			var err error
			snapRev, err = st.Revision(ctx)
			for _, id := range []string{"w1", "w2"} {
				if err == nil {
					_, err = a.Create(ctx, id, id, []byte("written during the load"))
				}
			}
			if err == nil {
				compactedAt, err = st.Revision(ctx)
			}
			if err == nil {
				_, err = st.Client().Compact(ctx, compactedAt)
			}
			injected <- err
		})
		return string(o.Value), nil
	})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := <-injected; err != nil {
		t.Fatalf("writing and compacting during the load: %v", err)
	}
	if compactedAt <= snapRev+1 {
		t.Fatalf("compacted at %d, not past the watch's start %d: the test does not reach the state it is about", compactedAt, snapRev+1)
	}
	// Bounded wait: the mirror re-lists 200 ms after a failed watch.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got map[string]string
		err := m.Read(ctx, "a", func(items map[string]store.Entry) {
			got = map[string]string{}
			for id, e := range items {
				got[id] = e.Value.(string)
			}
		})
		if err == nil && len(got) == 3 && got["w1"] != "" && got["w2"] != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mirror did not recover from a watch behind compaction: %v (%v)", got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// And it keeps following writes.
	if _, err := a.Create(ctx, "z", "z", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if got := snapshot(t, m, "a"); got["z"] != "after" || len(got) != 4 {
		t.Fatalf("after recovery: %v", got)
	}
}

func TestMirrorTableChanged(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	m := runMirror(t, st, "a")
	chA := m.TableChanged("a")
	chAB := m.TableChanged("a", "b")
	if _, err := st.Table("b").Create(ctx, "x", "x", []byte("v")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-chAB:
	case <-time.After(5 * time.Second):
		t.Fatal("a write to b did not wake a waiter on a or b")
	}
	select {
	case <-chA:
		t.Fatal("a write to b woke a waiter on a")
	default:
	}
	if _, err := st.Table("a").Create(ctx, "y", "y", []byte("v")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-chA:
	case <-time.After(5 * time.Second):
		t.Fatal("a write to a did not wake its waiter")
	}
}

// OnOpened sees each value a mirror opens (mirrored tables only), with its
// revision, until removed.
func TestMirrorOnOpened(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	type seen struct {
		kind, id, val string
		rev           int64
	}
	var mu sync.Mutex
	var got []seen
	remove := st.OnOpened(func(kind, id string, rev int64, v []byte) {
		mu.Lock()
		got = append(got, seen{kind, id, string(v), rev})
		mu.Unlock()
	})
	m := runMirror(t, st, "secrets")
	rev, err := st.Table("secrets").Create(ctx, "a", "name-a", []byte("value-a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Table("services").Create(ctx, "s", "name-s", []byte("value-s")); err != nil {
		t.Fatal(err)
	}
	snapshot(t, m, "secrets") // the mirror has applied both writes
	mu.Lock()
	if len(got) != 1 || got[0] != (seen{"secrets", "a", "value-a", rev}) {
		t.Fatalf("observed %+v", got)
	}
	mu.Unlock()
	remove()
	if _, err := st.Table("secrets").Create(ctx, "b", "name-b", []byte("value-b")); err != nil {
		t.Fatal(err)
	}
	snapshot(t, m, "secrets")
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("observed after removal: %+v", got[1:])
	}
}

// A table mirrored sealed gets its values as stored, never opened: the
// plaintext is not what the decoder sees, it opens with OpenValue, and no
// OnOpened observer sees it (the events source opens it itself).
func TestMirrorRegisterSealed(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	var mu sync.Mutex
	opened := 0
	defer st.OnOpened(func(kind, id string, rev int64, v []byte) {
		mu.Lock()
		opened++
		mu.Unlock()
	})()
	m := store.NewMirror(st)
	m.RegisterSealed("secrets", func(o store.Object) (any, error) { return string(o.Value), nil })
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	tbl := st.Table("secrets")
	rev, err := tbl.Create(ctx, "a", "name-a", []byte("value-a"))
	if err != nil {
		t.Fatal(err)
	}
	got := snapshot(t, m, "secrets")
	stored := got["a"]
	if len(got) != 1 || stored == "" || stored == "value-a" {
		t.Fatalf("mirrored %q, want the sealed value", got)
	}
	pt, err := st.OpenValue(tbl.Key("a"), []byte(stored))
	if err != nil || string(pt) != "value-a" {
		t.Fatalf("the mirrored value opens to %q, %v", pt, err)
	}
	if e, ok := m.Entry("secrets", "a"); !ok || e.ModRev != rev {
		t.Fatalf("entry %+v, %v: want revision %d", e, ok, rev)
	}
	mu.Lock()
	defer mu.Unlock()
	if opened != 0 {
		t.Fatalf("%d values of a sealed table reached OnOpened", opened)
	}
}
