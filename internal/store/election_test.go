package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// A write guarded by a leadership fails with ErrGuard whether the
// leadership or the object's revision failed; Explain tells them apart,
// so a leader that lost a race keeps acting and a deposed one stops.
func TestLeadershipExplain(t *testing.T) {
	ctx := t.Context()
	st := storetest.New(t)
	tb := st.Table("things")
	rev, err := tb.Create(ctx, "a", "", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := st.Campaign(ctx, "explain", "me", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := tb.Update(ctx, "a", rev, []byte("v2"))
	if err != nil {
		t.Fatal(err)
	}
	// A stale revision under a holding leadership.
	_, err = tb.UpdateGuarded(ctx, "a", rev, []byte("stale"), []store.Cond{l.Guard()})
	if !errors.Is(err, store.ErrGuard) {
		t.Fatalf("stale guarded update: %v, want ErrGuard", err)
	}
	if got := l.Explain(ctx, err); !errors.Is(got, store.ErrStale) || errors.Is(got, store.ErrGuard) {
		t.Fatalf("explained stale write: %v, want ErrStale alone", got)
	}
	if err := l.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	// A current revision, a leadership over.
	_, err = tb.UpdateGuarded(ctx, "a", cur, []byte("deposed"), []store.Cond{l.Guard()})
	if got := l.Explain(ctx, err); !errors.Is(got, store.ErrDeposed) || !errors.Is(got, store.ErrGuard) {
		t.Fatalf("explained deposed write: %v, want ErrDeposed", got)
	}
	if o, err := tb.Get(ctx, "a"); err != nil || string(o.Value) != "v2" || o.ModRev != cur {
		t.Fatalf("after the failed writes: %q at %d (%v), want v2 at %d", o.Value, o.ModRev, err, cur)
	}
	// Other errors and success pass through.
	if got := l.Explain(ctx, nil); got != nil {
		t.Fatalf("Explain(nil) = %v", got)
	}
	if got := l.Explain(ctx, store.ErrNotFound); !errors.Is(got, store.ErrNotFound) {
		t.Fatalf("Explain(ErrNotFound) = %v", got)
	}
}

// The store's own conditions each become the etcd comparison they name:
// Holds checks them without writing.
func TestConds(t *testing.T) {
	ctx := t.Context()
	st := storetest.New(t)
	tb := st.Table("things")
	rev, err := tb.Create(ctx, "a", "", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Apply(ctx, store.PutOp(store.RefKey("things", "a", "owner"), "owner")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cond store.Cond
		want bool
	}{
		{"exists", store.Exists(tb.Key("a")), true},
		{"exists, missing", store.Exists(tb.Key("b")), false},
		{"absent", store.Absent(tb.Key("b")), true},
		{"absent, present", store.Absent(tb.Key("a")), false},
		{"at revision", store.AtRevision(tb.Key("a"), rev), true},
		{"at another revision", store.AtRevision(tb.Key("a"), rev+1), false},
		{"none under, with a marker", store.NoneUnder(store.RefPrefix("things", "a")), false},
		{"none under, without", store.NoneUnder(store.RefPrefix("things", "b")), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := st.Holds(ctx, tc.cond)
			if err != nil || got != tc.want {
				t.Fatalf("Holds = %v (%v), want %v", got, err, tc.want)
			}
		})
	}
	// Apply seals what it puts, as a table's write does.
	raw, err := storetest.RawValues(ctx, st, store.RefKey("things", "a", "owner"))
	if err != nil || len(raw) != 1 {
		t.Fatalf("marker: %v %v", raw, err)
	}
	for _, v := range raw {
		if string(v) == "owner" {
			t.Fatal("Apply stored a value in the clear")
		}
	}
	if v, err := st.RefValues(ctx, "things", "a", 0); err != nil || len(v) != 1 || v[0] != "owner" {
		t.Fatalf("marker opened: %v %v", v, err)
	}
}
