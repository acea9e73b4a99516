package store_test

import (
	"context"
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

func TestMirrorRecoversFromCompaction(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	a := st.Table("a")
	m := runMirror(t, st, "a")
	for i := 0; i < 5; i++ {
		if _, err := a.Create(ctx, string(rune('a'+i)), string(rune('a'+i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	rev, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Client().Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Create(ctx, "z", "z", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if got := snapshot(t, m, "a"); got["z"] != "after" || len(got) != 6 {
		t.Fatalf("after compaction: %v", got)
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
