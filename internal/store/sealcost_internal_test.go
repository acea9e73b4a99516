package store

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func testKeys(t *testing.T) *keyring.Holder {
	t.Helper()
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	var h keyring.Holder
	h.Set(kr)
	return &h
}

// The values of one write, sealed with one data key, are each in the
// stored form the earlier code wrote and reads (envelope + Keyring.Open
// under the value's own key), and none opens under another's key.
func TestSealOpsFormReadableAsBefore(t *testing.T) {
	keys := testKeys(t)
	s := &Store{keys: keys}
	ops := []clientv3.Op{
		clientv3.OpPut(root+"secrets/a", `{"record":"a"}`),
		clientv3.OpPut(root+"versions/secrets/a/1", `{"v":1}`),
		clientv3.OpGet(root + "secrets/b"),
		clientv3.OpPut(root+"names/secrets/0f", "id-of-the-secret-a"),
	}
	plain := make([][]byte, len(ops))
	for i, op := range ops {
		plain[i] = bytes.Clone(op.ValueBytes())
	}
	sealed, release, err := s.sealOps(ops)
	release()
	if err != nil {
		t.Fatal(err)
	}
	if sealed[2].IsPut() || string(sealed[2].KeyBytes()) != root+"secrets/b" {
		t.Fatal("a get was changed")
	}
	var puts []clientv3.Op
	for i, op := range sealed {
		if op.IsPut() {
			puts = append(puts, op)
			k, v := string(op.KeyBytes()), op.ValueBytes()
			sv, err := envelope(v)
			if err != nil {
				t.Fatal(err)
			}
			pt, err := keys.Keyring().Open(sv, valueAAD(k))
			if err != nil || !bytes.Equal(pt, plain[i]) {
				t.Fatalf("%s: %q %v", k, pt, err)
			}
			if bytes.Contains(v, plain[i]) {
				t.Fatalf("%s holds its value in the clear", k)
			}
		}
	}
	for i, a := range puts {
		for j, b := range puts {
			if i != j {
				if _, err := OpenWith(keys.Keyring(), string(b.KeyBytes()), a.ValueBytes()); !errors.Is(err, keyring.ErrDecrypt) {
					t.Fatalf("value of %s opened as %s: %v", a.KeyBytes(), b.KeyBytes(), err)
				}
			}
		}
	}
}

// Values sealed one data key each (as before) open as they did.
func TestPerValueSealedOpens(t *testing.T) {
	keys := testKeys(t)
	s := &Store{keys: keys}
	key := root + "secrets/old"
	sv, err := keys.Keyring().Seal([]byte("old record"), valueAAD(key))
	if err != nil {
		t.Fatal(err)
	}
	v, err := encodeSealed(sv)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := s.open(key, []byte(v))
	if err != nil || string(pt) != "old record" {
		t.Fatalf("%q %v", pt, err)
	}
}

// The pooled hasher gives exactly the index entries of nameHash (what
// existing data dirs hold), from many goroutines at once.
func TestIndexHasherMatchesNameHash(t *testing.T) {
	key := bytes.Repeat([]byte{7}, indexKeyLen)
	h := newIndexHasher(bytes.Clone(key))
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				kind := []string{"secrets", "configs", "services"}[i%3]
				name := fmt.Sprintf("Name-%d-%d", g, i)
				if got, want := mustHash(t, h, kind, name), nameHash(key, kind, name); got != want {
					errs <- fmt.Sprintf("%s/%s: %s, want %s", kind, name, got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if mustHash(t, h, "secrets", "ABC") != mustHash(t, h, "secrets", "abc") || mustHash(t, h, "secrets", "abc") == mustHash(t, h, "configs", "abc") {
		t.Fatal("index entries are not per kind and case-insensitive")
	}
}

func mustHash(t *testing.T, h *indexHasher, kind, name string) string {
	sum, ok := h.hash(kind, name)
	if !ok {
		t.Error("the hasher is retired")
	}
	return sum
}
