package keyring

import (
	"bytes"
	"errors"
	"testing"
)

// batchSeal seals each (pt, aad) with one Batch and parses the results.
func batchSeal(t *testing.T, k *Keyring, pts, aads [][]byte) []Sealed {
	t.Helper()
	b, err := k.NewBatch()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	out := make([]Sealed, len(pts))
	for i := range pts {
		raw, err := b.AppendSeal([]byte("prefix"), pts[i], aads[i])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(raw, []byte("prefix")) {
			t.Fatal("AppendSeal lost dst")
		}
		raw = raw[len("prefix"):]
		if len(raw) != BinarySizeFor(k.current, len(pts[i])) {
			t.Fatalf("sealed %d bytes into %d, BinarySizeFor says %d", len(pts[i]), len(raw), BinarySizeFor(k.current, len(pts[i])))
		}
		s, err := ParseBinary(raw)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = s
	}
	return out
}

// Values sealed by one batch each open with Open and their own associated
// data only, with nonces and wrappings of their own: the form Seal gives.
func TestBatchSealOpensWithOpen(t *testing.T) {
	k := mustNew(t, fixedMaster("m1", 1))
	pts := [][]byte{[]byte(`{"record":1}`), []byte("id-of-the-record"), {}, bytes.Repeat([]byte{'v'}, 100_000)}
	aads := [][]byte{[]byte("/hush/secrets/a"), []byte("/hush/names/secrets/h"), []byte("/hush/refs/x"), []byte("/hush/versions/a/1")}
	sv := batchSeal(t, k, pts, aads)
	for i, s := range sv {
		if s.KeyID != "m1" {
			t.Fatalf("value %d names key %q", i, s.KeyID)
		}
		got, err := k.Open(s, aads[i])
		if err != nil || !bytes.Equal(got, pts[i]) {
			t.Fatalf("value %d: %v", i, err)
		}
		for j := range sv {
			if j == i {
				continue
			}
			if _, err := k.Open(s, aads[j]); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("value %d opened under the associated data of value %d: %v", i, j, err)
			}
			if bytes.Equal(s.Nonce, sv[j].Nonce) || bytes.Equal(s.WrappedKey, sv[j].WrappedKey) {
				t.Fatalf("values %d and %d share a nonce or a wrapping", i, j)
			}
		}
		if len(pts[i]) >= 4 && bytes.Contains(s.Ciphertext, pts[i]) {
			t.Fatal("ciphertext holds the plaintext")
		}
	}
	// Moving one value's wrapped key onto another value's ciphertext (the
	// data key is the same) still fails: the wrapping is bound to the AD.
	moved := sv[0]
	moved.WrappedKey = sv[1].WrappedKey
	if _, err := k.Open(moved, aads[0]); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("a value with another value's wrapping opened: %v", err)
	}
}

// Each batch has a key of its own.
func TestBatchesDiffer(t *testing.T) {
	k := mustNew(t, fixedMaster("m1", 1))
	aad := []byte("/hush/secrets/a")
	a := batchSeal(t, k, [][]byte{[]byte("same")}, [][]byte{aad})[0]
	b := batchSeal(t, k, [][]byte{[]byte("same")}, [][]byte{aad})[0]
	if bytes.Equal(a.Ciphertext, b.Ciphertext) || bytes.Equal(a.WrappedKey, b.WrappedKey) {
		t.Fatal("two batches sealed the same value identically")
	}
	// a's nonce on b's wrapping: b's data key does not open a's ciphertext.
	mixed := b
	mixed.Nonce, mixed.Ciphertext = a.Nonce, a.Ciphertext
	if _, err := k.Open(mixed, aad); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("one batch's key opened another's value: %v", err)
	}
}

// A master-key rotation re-wraps batch-sealed values one by one, and they
// open once the old key is forgotten.
func TestBatchRewrap(t *testing.T) {
	k := mustNew(t, fixedMaster("m1", 1))
	pts := [][]byte{[]byte("record"), []byte("index entry")}
	aads := [][]byte{[]byte("/hush/secrets/a"), []byte("/hush/names/secrets/h")}
	sv := batchSeal(t, k, pts, aads)
	k.Rotate(fixedMaster("m2", 2))
	for i := range sv {
		r, err := k.Rewrap(sv[i], aads[i])
		if err != nil || r.KeyID != "m2" {
			t.Fatalf("rewrap %d: %v %q", i, err, r.KeyID)
		}
		sv[i] = r
	}
	if err := k.Forget("m1"); err != nil {
		t.Fatal(err)
	}
	for i := range sv {
		if got, err := k.Open(sv[i], aads[i]); err != nil || !bytes.Equal(got, pts[i]) {
			t.Fatalf("value %d after rotation: %v", i, err)
		}
	}
	// A batch after the rotation seals under the new key.
	if s := batchSeal(t, k, pts[:1], aads[:1])[0]; s.KeyID != "m2" {
		t.Fatalf("batch after rotation sealed under %q", s.KeyID)
	}
}

func TestBatchRefuses(t *testing.T) {
	k := mustNew(t, fixedMaster("m1", 1))
	b, err := k.NewBatch()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AppendSeal(nil, []byte("x"), nil); !errors.Is(err, errNoAAD) {
		t.Fatalf("empty associated data: %v", err)
	}
	b.Close()
	b.Close()
	if _, err := b.AppendSeal(nil, []byte("x"), []byte("a")); !errors.Is(err, errBatchClosed) {
		t.Fatalf("closed batch: %v", err)
	}
	var none *Keyring
	if _, err := none.NewBatch(); err == nil {
		t.Fatal("nil keyring made a batch")
	}
	k.Rotate(MasterKey{ID: "m1", Key: make([]byte, keySize)}) // same ID, other bytes: rejected
	if _, err := k.NewBatch(); err == nil {
		t.Fatal("batch made after a rejected rotation")
	}
}

// BenchmarkBatchSeal3 is the sealing of one write's three values (as for a
// secret create) with one batch; BenchmarkSeal3 the same with Seal.
func BenchmarkBatchSeal3(b *testing.B) {
	k := mustNew(b, fixedMaster("m1", 1))
	pt, aad := benchValue()
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		bt, err := k.NewBatch()
		if err != nil {
			b.Fatal(err)
		}
		for range 3 {
			if _, err := bt.AppendSeal(buf[:0], pt, aad); err != nil {
				b.Fatal(err)
			}
		}
		bt.Close()
	}
}

func BenchmarkSeal3(b *testing.B) {
	k := mustNew(b, fixedMaster("m1", 1))
	pt, aad := benchValue()
	b.ReportAllocs()
	for b.Loop() {
		for range 3 {
			if _, err := k.Seal(pt, aad); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// The values of one batch share a data key, so only the data's associated
// data keeps them apart: one value's nonce and ciphertext put into another
// value's envelope (whose wrapping opens, to the same data key) do not
// open under that value's associated data.
func TestBatchCiphertextSwapFails(t *testing.T) {
	k := mustNew(t, fixedMaster("m1", 1))
	pts := [][]byte{[]byte(`{"record":"a"}`), []byte("index entry")}
	aads := [][]byte{[]byte("/hush/secrets/a"), []byte("/hush/names/secrets/h")}
	sv := batchSeal(t, k, pts, aads)
	for i := range sv {
		j := 1 - i
		swapped := sv[j]
		swapped.Nonce, swapped.Ciphertext = sv[i].Nonce, sv[i].Ciphertext
		if got, err := k.Open(swapped, aads[j]); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("value %d opened in the envelope of value %d: %q %v", i, j, got, err)
		}
	}
}
