package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// BenchmarkStoreCreate is one secret-like create (record, version marker,
// name-index entry) through etcd, with a mirror running over the table as
// in hushd (so the mirror's open and decode of each write is in the cost).
func BenchmarkStoreCreate(b *testing.B) {
	ctx := context.Background()
	st := storetest.New(b)
	mir := store.NewMirror(st)
	mir.Register("secrets", func(o store.Object) (any, error) { return string(o.Value), nil })
	storetest.RunMirror(b, mir)
	tb := st.Table("secrets")
	val := []byte(`{"ID":"x","Spec":{"Name":"n","Labels":{"a":"b"}},"Data":"` + strings.Repeat("A", 600) + `"}`)
	i := 0
	b.ReportAllocs()
	done := cpuPerOpExt(b)
	for b.Loop() {
		i++
		id := fmt.Sprintf("id%023d", i)
		ver := store.PutOp("/hush/versions/secrets/"+id+"/1", `{"v":1}`)
		if _, err := tb.Create(ctx, id, "name-"+id, val, ver); err != nil {
			b.Fatal(err)
		}
	}
	done()
}

// BenchmarkMirrorList10k is a list of 10,000 mirrored objects as the
// secrets list reads them: one linearizable mirror read copying every
// decoded entry out.
func BenchmarkMirrorList10k(b *testing.B) {
	ctx := context.Background()
	st := storetest.New(b)
	mir := store.NewMirror(st)
	type obj struct{ ID, Name string }
	mir.Register("secrets", func(o store.Object) (any, error) { return &obj{ID: o.ID, Name: string(o.Value[:8])}, nil })
	storetest.RunMirror(b, mir)
	tb := st.Table("secrets")
	for i := range 10000 {
		id := fmt.Sprintf("id%023d", i)
		if _, err := tb.Create(ctx, id, "", []byte(`{"Name":"n`+id+`"}`)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	done := cpuPerOpExt(b)
	for b.Loop() {
		var out []*obj
		err := mir.Read(ctx, "secrets", func(items map[string]store.Entry) {
			out = make([]*obj, 0, len(items))
			for _, e := range items {
				out = append(out, e.Value.(*obj))
			}
		})
		if err != nil || len(out) != 10000 {
			b.Fatal(err, len(out))
		}
	}
	done()
}
