package store

import (
	"fmt"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// benchKeys is a store.Keys with a fresh master key.
func benchKeys(b *testing.B) *keyring.Holder {
	b.Helper()
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		b.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		b.Fatal(err)
	}
	var h keyring.Holder
	h.Set(kr)
	return &h
}

// createOps are the puts of a secret create: the record, its version and
// its name-index entry (sizes as hush writes them for a small secret).
func createOps(i int) []clientv3.Op {
	id := fmt.Sprintf("%025d", i)
	rec := make([]byte, 700)
	for j := range rec {
		rec[j] = 'r'
	}
	return []clientv3.Op{
		clientv3.OpPut(root+"secrets/"+id, string(rec)),
		clientv3.OpPut(root+"versions/secrets/"+id+"/1", string(rec[:200])),
		clientv3.OpPut(root+"names/secrets/4e1f0c3d1d2a7c7e0f6e1b8a9c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d", id),
	}
}

// BenchmarkSealCreateOps is the sealing of one secret create's puts, without
// etcd.
func BenchmarkSealCreateOps(b *testing.B) {
	s := &Store{keys: benchKeys(b)}
	tmpl := createOps(1)
	ops := make([]clientv3.Op, len(tmpl))
	b.ReportAllocs()
	done := cpuPerOp(b)
	for b.Loop() {
		copy(ops, tmpl) // sealOps may seal in place
		_, release, err := s.sealOps(ops)
		if err != nil {
			b.Fatal(err)
		}
		release()
	}
	done()
}

// BenchmarkOpenRecord is the mirror's open of one sealed record.
func BenchmarkOpenRecord(b *testing.B) {
	s := &Store{keys: benchKeys(b)}
	ops := createOps(1)
	sealed, release, err := s.sealOps(ops)
	release()
	if err != nil {
		b.Fatal(err)
	}
	k, v := string(sealed[0].KeyBytes()), sealed[0].ValueBytes()
	b.ReportAllocs()
	done := cpuPerOp(b)
	for b.Loop() {
		pt, err := s.open(k, v)
		if err != nil {
			b.Fatal(err)
		}
		clear(pt)
	}
	done()
}

// BenchmarkNameHash is the name index's keyed hash of one name.
func BenchmarkNameHash(b *testing.B) {
	h := newIndexHasher(make([]byte, indexKeyLen))
	b.ReportAllocs()
	done := cpuPerOp(b)
	for b.Loop() {
		_, _ = h.hash("secrets", "Some-Secret-Name-42")
	}
	done()
}
