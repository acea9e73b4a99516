package store

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
)

// A request that took the index hasher before the keyring changed (an
// autolock unlock installs a new Keyring holding the same master key)
// still hashes its name under the index key, never under a key another
// request wiped meanwhile: a wrong index entry would claim a name nobody
// can find or release.
func TestIndexHasherSurvivesKeyringChange(t *testing.T) {
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	var keys keyring.Holder
	keys.Set(kr)
	s, err := OpenEmbedded(t.Context(), EmbeddedConfig{Dir: t.TempDir(), Name: "n1", EtcdLogLevel: "error", Keys: &keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx := t.Context()
	// Concurrent creates while unlocks install new Keyrings: every name
	// is found afterwards (run under -race: no hash reads a key being
	// wiped).
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 15 {
				id := fmt.Sprintf("g%di%d", g, i)
				if _, err := s.Table("secrets").Create(ctx, id, "Name-"+id, []byte("v")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 10 {
		next, err := keyring.New(mk)
		if err != nil {
			t.Fatal(err)
		}
		keys.Set(next)
	}
	wg.Wait()
	for g := range 3 {
		for i := range 15 {
			id := fmt.Sprintf("g%di%d", g, i)
			if got, err := s.Table("secrets").LookupName(ctx, "name-"+id); err != nil || got != id {
				t.Fatalf("name of %s: %q %v", id, got, err)
			}
		}
	}

	inFlight, err := s.indexKey(ctx) // taken before the unlock, used after it
	if err != nil {
		t.Fatal(err)
	}
	kr2, err := keyring.New(mk) // the unlock: same master key, new Keyring
	if err != nil {
		t.Fatal(err)
	}
	keys.Set(kr2)
	want, err := s.Table("secrets").NameKey(ctx, "a-name")
	if err != nil {
		t.Fatal(err)
	}
	got, ok := inFlight.hash("secrets", "a-name")
	if ok && root+"names/secrets/"+got != want {
		t.Fatalf("a hasher taken before the keyring change hashed %q, the index has %q", got, want)
	}
}

// A hasher replaced by one of another index key (a new store content) is
// retired: hashes running meanwhile finish under the whole key (-race
// checks the wipe waits for them) and later ones refuse rather than key
// new states with the wiped bytes.
func TestIndexHasherRetire(t *testing.T) {
	key := bytes.Repeat([]byte{9}, indexKeyLen)
	h := newIndexHasher(bytes.Clone(key))
	var wg sync.WaitGroup
	bad := make(chan string, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 300 {
				got, ok := h.hash("secrets", "n")
				if !ok {
					return
				}
				if got != nameHash(key, "secrets", "n") {
					bad <- got
					return
				}
			}
		}()
	}
	h.retire()
	wg.Wait()
	close(bad)
	for got := range bad {
		t.Fatalf("a hash under a wiped index key: %s", got)
	}
	if _, ok := h.hash("secrets", "n"); ok {
		t.Fatal("a retired hasher hashed")
	}
}
