package objects

import (
	"context"
	"fmt"
	"testing"

	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// BenchmarkMirroredList is what a list of 1,000 secrets costs a manager
// whose mirror holds them as they arrive (sealed: the first list after a
// mirror load opens and decodes each one inside that request) and once
// decoded (every later list). ns/object is per listed object.
func BenchmarkMirroredList(b *testing.B) {
	const n = 1000
	m, st := newManager(b, Secret)
	ctx := context.Background()
	ids := make([]string, 0, n)
	for i := range n {
		id, err := m.Create(ctx, Spec{Name: fmt.Sprintf("s%04d", i), Labels: map[string]string{"app": "web"}, Data: []byte("a password of some length")})
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, id)
	}
	raw, err := storetest.RawValues(ctx, st, m.tbl.Key(""))
	if err != nil {
		b.Fatal(err)
	}
	entries := func() []*mirrored {
		es := make([]*mirrored, len(ids))
		for i, id := range ids {
			es[i] = m.newMirrored(store.Object{ID: id, Value: raw[m.tbl.Key(id)], ModRev: 1})
		}
		return es
	}
	b.Run("first", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			es := entries()
			b.StartTimer()
			if _, err := m.mirroredObjects(es); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/object")
	})
	b.Run("decoded", func(b *testing.B) {
		es := entries()
		if _, err := m.mirroredObjects(es); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.mirroredObjects(es); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/object")
	})
}
