package keyring

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func newTestRing(t *testing.T) (*Keyring, MasterKey) {
	t.Helper()
	mk, err := GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := New(mk)
	if err != nil {
		t.Fatal(err)
	}
	return kr, mk
}

func TestRewrapKeepsCiphertextAndMovesKey(t *testing.T) {
	kr, mk1 := newTestRing(t)
	aad := []byte("hush/test/1")
	s1, err := kr.Seal([]byte("payload"), aad)
	if err != nil {
		t.Fatal(err)
	}
	if same, err := kr.Rewrap(s1, aad); err != nil || same.KeyID != mk1.ID || !bytes.Equal(same.WrappedKey, s1.WrappedKey) {
		t.Fatalf("re-wrap under the same key changed it: %v", err)
	}
	mk2, _ := GenerateMasterKey()
	kr.Rotate(mk2)
	tests := []struct {
		name    string
		aad     []byte
		mutate  func(*Sealed)
		wantErr error
	}{
		{"good", aad, nil, nil},
		{"wrong aad", []byte("hush/test/2"), nil, ErrDecrypt},
		{"unknown key", aad, func(s *Sealed) { s.KeyID = "0000000000000000" }, ErrUnknownKey},
		{"short wrapped key", aad, func(s *Sealed) { s.WrappedKey = s.WrappedKey[:10] }, ErrDecrypt},
		{"empty aad", nil, nil, errNoAAD},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := s1
			in.WrappedKey = append([]byte(nil), s1.WrappedKey...)
			if tc.mutate != nil {
				tc.mutate(&in)
			}
			out, err := kr.Rewrap(in, tc.aad)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if out.KeyID != mk2.ID || !bytes.Equal(out.Ciphertext, s1.Ciphertext) || bytes.Equal(out.WrappedKey, s1.WrappedKey) {
				t.Fatal("re-wrap did not move only the data key")
			}
			only2, _ := New(mk2)
			if pt, err := only2.Open(out, aad); err != nil || string(pt) != "payload" {
				t.Fatalf("the new key alone does not open the re-wrapped value: %v", err)
			}
			only1, _ := New(mk1)
			if _, err := only1.Open(out, aad); !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("the old key opens the re-wrapped value: %v", err)
			}
		})
	}
}

func TestForget(t *testing.T) {
	kr, mk1 := newTestRing(t)
	s, _ := kr.Seal([]byte("x"), []byte("a"))
	if err := kr.Forget(mk1.ID); err == nil {
		t.Fatal("forgot the current key")
	}
	mk2, _ := GenerateMasterKey()
	kr.Rotate(mk2)
	if !kr.Holds(mk1.ID) {
		t.Fatal("rotation dropped the old key")
	}
	if err := kr.Forget(mk1.ID); err != nil {
		t.Fatal(err)
	}
	if kr.Holds(mk1.ID) {
		t.Fatal("still holds the forgotten key")
	}
	if _, err := kr.Open(s, []byte("a")); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("a value under a forgotten key opened: %v", err)
	}
}

func TestBinaryRoundTrip(t *testing.T) {
	kr, _ := newTestRing(t)
	for _, n := range []int{0, 1, 1000, 600 << 10} {
		pt := bytes.Repeat([]byte{7}, n)
		s, err := kr.Seal(pt, []byte("a"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := s.AppendBinary([]byte("prefix"))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != len("prefix")+s.BinarySize() {
			t.Fatalf("size %d, BinarySize says %d", len(b)-6, s.BinarySize())
		}
		p, err := ParseBinary(b[6:])
		if err != nil {
			t.Fatal(err)
		}
		got, err := kr.Open(p, []byte("a"))
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%d bytes: round trip failed: %v", n, err)
		}
	}
	for _, bad := range [][]byte{nil, {1}, {2, 0}, {1, 200}, append([]byte{1, 3}, "a/b"...)} {
		if _, err := ParseBinary(bad); !errors.Is(err, ErrDecrypt) {
			t.Errorf("ParseBinary(%q): %v, want ErrDecrypt", bad, err)
		}
	}
}

func FuzzParseBinary(f *testing.F) {
	kr, err := New(MasterKey{ID: "fuzz", Key: bytes.Repeat([]byte{1}, 32)})
	if err != nil {
		f.Fatal(err)
	}
	s, _ := kr.Seal([]byte("seed"), []byte("a"))
	b, _ := s.AppendBinary(nil)
	f.Add(b)
	f.Add([]byte{1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseBinary(b)
		if err != nil {
			return
		}
		// Whatever parses must be safe to open and to re-encode.
		_, _ = kr.Open(p, []byte("a"))
		if _, err := p.AppendBinary(nil); err != nil {
			t.Fatalf("parsed value does not encode: %v", err)
		}
	})
}

func TestNextKeyStore(t *testing.T) {
	dir := t.TempDir()
	kr, _ := newTestRing(t)
	next, _ := GenerateMasterKey()
	ns := NextKeyStore{Path: filepath.Join(dir, "keys", "master.key.rotating")}
	if _, err := ns.Load(kr); !errors.Is(err, ErrNoNextKey) {
		t.Fatalf("load of a missing file: %v", err)
	}
	if err := ns.Store(kr, next); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(ns.Path)
	if bytes.Contains(b, next.Key) || bytes.Contains(b, []byte(hexOf(next.Key))) {
		t.Fatal("the next key is in the clear in its file")
	}
	if id, err := ns.ID(); err != nil || id != next.ID {
		t.Fatalf("ID: %q %v", id, err)
	}
	got, err := ns.Load(kr)
	if err != nil || got.ID != next.ID || !bytes.Equal(got.Key, next.Key) {
		t.Fatalf("load: %v", err)
	}
	other, _ := newTestRing(t)
	if _, err := ns.Load(other); err == nil {
		t.Fatal("another master key opened the next key")
	}
	if err := ns.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := ns.Remove(); err != nil {
		t.Fatalf("removing twice: %v", err)
	}
}

func TestFileKeyStoreReplace(t *testing.T) {
	f := FileKeyStore{Path: filepath.Join(t.TempDir(), "master.key")}
	k1, _ := GenerateMasterKey()
	k2, _ := GenerateMasterKey()
	if err := f.Store(k1); err != nil {
		t.Fatal(err)
	}
	if err := f.Replace(k2); err != nil {
		t.Fatal(err)
	}
	got, err := f.Load()
	if err != nil || got.ID != k2.ID || !bytes.Equal(got.Key, k2.Key) {
		t.Fatalf("after replace: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(f.Path), ".hush-master-key-*"))
	if len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// Add makes a key open without making it the one seals use; the same ID
// with other bytes is refused.
func TestAdd(t *testing.T) {
	kr, mk1 := newTestRing(t)
	other, _ := newTestRing(t)
	mk2, _ := GenerateMasterKey()
	other.Rotate(mk2)
	aad := []byte("hush/test/add")
	under2, err := other.Seal([]byte("v"), aad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kr.Open(under2, aad); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("open before Add: %v", err)
	}
	if err := kr.Add(mk2); err != nil {
		t.Fatal(err)
	}
	if pt, err := kr.Open(under2, aad); err != nil || string(pt) != "v" {
		t.Fatalf("open after Add: %q %v", pt, err)
	}
	if id, err := kr.CurrentID(); err != nil || id != mk1.ID {
		t.Fatalf("Add changed the sealing key: %s %v", id, err)
	}
	if err := kr.Add(mk2); err != nil {
		t.Fatalf("Add again: %v", err)
	}
	bad := MasterKey{ID: mk2.ID, Key: bytes.Repeat([]byte{1}, len(mk2.Key))}
	if err := kr.Add(bad); err == nil {
		t.Fatal("Add accepted other bytes under a held ID")
	}
}
