package keyring

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// fixedMaster returns a deterministic key so failures reproduce and fuzz
// workers agree on what a valid seal is.
func fixedMaster(id string, seed byte) MasterKey {
	k := make([]byte, keySize)
	for i := range k {
		k[i] = seed + byte(i)
	}
	return MasterKey{ID: id, Key: k}
}

func mustNew(t testing.TB, m MasterKey) *Keyring {
	t.Helper()
	k, err := New(m)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return k
}

func mustSeal(t testing.TB, k *Keyring, pt, aad []byte) Sealed {
	t.Helper()
	s, err := k.Seal(pt, aad)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return s
}

// assertNoLeak fails if an error message contains any of the secrets, raw or
// hex-encoded (the two ways a careless %v or %x would print them).
func assertNoLeak(t *testing.T, err error, secrets ...[]byte) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, s := range secrets {
		if len(s) < 4 {
			continue
		}
		if strings.Contains(msg, string(s)) || strings.Contains(msg, hex.EncodeToString(s)) {
			t.Fatalf("error message leaks secret material: %q", msg)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	k := mustNew(t, fixedMaster("m1", 1))
	tests := []struct {
		name string
		pt   []byte
		aad  []byte
	}{
		{"nil plaintext", nil, []byte("secret/a/1")},
		{"empty plaintext", []byte{}, []byte("secret/a/1")},
		{"short", []byte("hunter2"), []byte("secret/a/1")},
		{"binary", []byte{0, 1, 2, 0xff, 0}, []byte("secret/b/7")},
		{"1KiB", bytes.Repeat([]byte{'x'}, 1024), []byte("secret/c/1")},
		{"1MiB", bytes.Repeat([]byte{'y'}, 1<<20), []byte("secret/d/1")},
		{"one-byte aad", []byte("v"), []byte{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustSeal(t, k, tt.pt, tt.aad)
			if s.KeyID != "m1" {
				t.Fatalf("KeyID = %q, want m1", s.KeyID)
			}
			if len(s.WrappedKey) != wrappedKeySize || len(s.Nonce) != nonceSize {
				t.Fatalf("unexpected shape: wk=%d nonce=%d", len(s.WrappedKey), len(s.Nonce))
			}
			if len(tt.pt) >= 4 && bytes.Contains(s.Ciphertext, tt.pt) {
				t.Fatal("ciphertext contains plaintext")
			}
			got, err := k.Open(s, tt.aad)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, tt.pt) {
				t.Fatalf("Open = %d bytes, want %d", len(got), len(tt.pt))
			}
		})
	}
}

func TestEmptyAADRejected(t *testing.T) {
	k := mustNew(t, fixedMaster("m1", 1))
	if _, err := k.Seal([]byte("v"), nil); err == nil {
		t.Fatal("Seal with empty aad succeeded")
	}
	s := mustSeal(t, k, []byte("v"), []byte("secret/a/1"))
	if _, err := k.Open(s, []byte{}); err == nil {
		t.Fatal("Open with empty aad succeeded")
	}
}

func TestOpenTamper(t *testing.T) {
	m1, m2 := fixedMaster("m1", 1), fixedMaster("m2", 100)
	k := mustNew(t, m1)
	pt := []byte("correct horse battery staple")
	aad := []byte("secret/abc/1")
	orig := mustSeal(t, k, pt, aad)
	other := mustSeal(t, k, []byte("another value entirely"), []byte("secret/xyz/1"))
	sameAAD := mustSeal(t, k, []byte("same aad, other DEK"), aad)
	k.Rotate(m2) // so a KeyID swap can name a key the ring does hold
	underM2 := mustSeal(t, k, pt, aad)

	clone := func(s Sealed) Sealed {
		return Sealed{
			KeyID:      s.KeyID,
			WrappedKey: bytes.Clone(s.WrappedKey),
			Nonce:      bytes.Clone(s.Nonce),
			Ciphertext: bytes.Clone(s.Ciphertext),
		}
	}
	type tc struct {
		name   string
		mutate func(*Sealed)
		aad    []byte
	}
	tests := []tc{
		{"nonce flip", func(s *Sealed) { s.Nonce[0] ^= 1 }, aad},
		{"nonce short", func(s *Sealed) { s.Nonce = s.Nonce[:nonceSize-1] }, aad},
		{"nonce long", func(s *Sealed) { s.Nonce = append(s.Nonce, 0) }, aad},
		{"nonce nil", func(s *Sealed) { s.Nonce = nil }, aad},
		{"wrapped key short", func(s *Sealed) { s.WrappedKey = s.WrappedKey[:wrappedKeySize-1] }, aad},
		{"wrapped key long", func(s *Sealed) { s.WrappedKey = append(s.WrappedKey, 0) }, aad},
		{"wrapped key nil", func(s *Sealed) { s.WrappedKey = nil }, aad},
		{"wrapped key from other secret", func(s *Sealed) { s.WrappedKey = bytes.Clone(other.WrappedKey) }, aad},
		{"wrapped key from same aad", func(s *Sealed) { s.WrappedKey = bytes.Clone(sameAAD.WrappedKey) }, aad},
		{"wrapped key from other master", func(s *Sealed) { s.WrappedKey = bytes.Clone(underM2.WrappedKey) }, aad},
		{"ciphertext+nonce from other seal", func(s *Sealed) {
			s.Ciphertext, s.Nonce = bytes.Clone(sameAAD.Ciphertext), bytes.Clone(sameAAD.Nonce)
		}, aad},
		{"ciphertext truncated", func(s *Sealed) { s.Ciphertext = s.Ciphertext[:len(s.Ciphertext)-1] }, aad},
		{"ciphertext extended", func(s *Sealed) { s.Ciphertext = append(s.Ciphertext, 0) }, aad},
		{"ciphertext below tag size", func(s *Sealed) { s.Ciphertext = s.Ciphertext[:tagSize-1] }, aad},
		{"ciphertext nil", func(s *Sealed) { s.Ciphertext = nil }, aad},
		{"KeyID unknown", func(s *Sealed) { s.KeyID = "nope" }, aad},
		{"KeyID empty", func(s *Sealed) { s.KeyID = "" }, aad},
		{"KeyID malformed", func(s *Sealed) { s.KeyID = "m1\n\x00" }, aad},
		{"KeyID other held key", func(s *Sealed) { s.KeyID = "m2" }, aad},
		{"aad other secret", func(*Sealed) {}, []byte("secret/xyz/1")},
		{"aad other version", func(*Sealed) {}, []byte("secret/abc/2")},
		{"aad prefix", func(*Sealed) {}, aad[:len(aad)-1]},
		{"aad extended", func(*Sealed) {}, append(bytes.Clone(aad), '0')},
	}
	for i := range orig.Ciphertext {
		tests = append(tests, tc{fmt.Sprintf("ciphertext byte %d", i), func(s *Sealed) { s.Ciphertext[i] ^= 0x80 }, aad})
	}
	for i := range orig.WrappedKey {
		tests = append(tests, tc{fmt.Sprintf("wrapped key byte %d", i), func(s *Sealed) { s.WrappedKey[i] ^= 0x01 }, aad})
	}
	for i := range orig.Nonce {
		tests = append(tests, tc{fmt.Sprintf("nonce byte %d", i), func(s *Sealed) { s.Nonce[i] ^= 0x40 }, aad})
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := clone(orig)
			tt.mutate(&s)
			got, err := k.Open(s, tt.aad)
			if !errors.Is(err, ErrDecrypt) {
				t.Fatalf("Open err = %v, want ErrDecrypt", err)
			}
			if got != nil {
				t.Fatal("Open returned data alongside an error")
			}
			assertNoLeak(t, err, pt, m1.Key, m2.Key)
		})
	}

	// The untouched seal must still open, or every case above proves nothing.
	if _, err := k.Open(orig, aad); err != nil {
		t.Fatalf("original no longer opens: %v", err)
	}
}

func TestSealsDiffer(t *testing.T) {
	k := mustNew(t, fixedMaster("m1", 1))
	pt, aad := []byte("same value"), []byte("secret/a/1")
	a, b := mustSeal(t, k, pt, aad), mustSeal(t, k, pt, aad)
	for _, f := range []struct {
		name string
		a, b []byte
	}{
		{"WrappedKey", a.WrappedKey, b.WrappedKey},
		{"Nonce", a.Nonce, b.Nonce},
		{"Ciphertext", a.Ciphertext, b.Ciphertext},
	} {
		if bytes.Equal(f.a, f.b) {
			t.Errorf("%s identical across two seals", f.name)
		}
	}
}

func TestRotate(t *testing.T) {
	m1, m2, m3 := fixedMaster("m1", 1), fixedMaster("m2", 50), fixedMaster("m3", 150)
	aad := []byte("secret/a/1")
	k := mustNew(t, m1)
	s1 := mustSeal(t, k, []byte("v1"), aad)

	k.Rotate(m2)
	s2 := mustSeal(t, k, []byte("v2"), aad)
	if s2.KeyID != "m2" {
		t.Fatalf("after Rotate, KeyID = %q, want m2", s2.KeyID)
	}

	steps := []struct {
		name      string
		rotate    *MasterKey
		wantKeyID string // "" means Seal must fail
	}{
		{"rotate again", &m3, "m3"},
		{"back to held key", &m1, "m1"},
		{"held ID, different bytes", &MasterKey{ID: "m2", Key: m3.Key}, ""},
		{"recover with valid key", &m3, "m3"},
		{"short key", &MasterKey{ID: "m4", Key: make([]byte, 16)}, ""},
		{"recover again", &m2, "m2"},
		{"zero key", &MasterKey{ID: "m5", Key: make([]byte, keySize)}, ""},
		{"bad ID", &MasterKey{ID: "has space", Key: m3.Key}, ""},
	}
	for _, st := range steps {
		k.Rotate(*st.rotate)
		s, err := k.Seal([]byte("v"), aad)
		if st.wantKeyID == "" {
			if err == nil {
				t.Fatalf("%s: Seal succeeded after rejected Rotate (KeyID %q)", st.name, s.KeyID)
			}
			assertNoLeak(t, err, m1.Key, m2.Key, m3.Key)
		} else {
			if err != nil {
				t.Fatalf("%s: Seal: %v", st.name, err)
			}
			if s.KeyID != st.wantKeyID {
				t.Fatalf("%s: KeyID = %q, want %q", st.name, s.KeyID, st.wantKeyID)
			}
		}
		// A rejected Rotate must never cost the ability to open old values.
		for _, old := range []Sealed{s1, s2} {
			if _, err := k.Open(old, aad); err != nil {
				t.Fatalf("%s: old seal under %s no longer opens: %v", st.name, old.KeyID, err)
			}
		}
	}
}

func TestUnknownKeyID(t *testing.T) {
	aad := []byte("secret/a/1")
	s := mustSeal(t, mustNew(t, fixedMaster("m1", 1)), []byte("v"), aad)
	other := mustNew(t, fixedMaster("m9", 9))
	_, err := other.Open(s, aad)
	if !errors.Is(err, ErrUnknownKey) || !errors.Is(err, ErrDecrypt) {
		t.Fatalf("err = %v, want ErrUnknownKey and ErrDecrypt", err)
	}
	if !strings.Contains(err.Error(), `"m1"`) {
		t.Errorf("error %q should name the missing key ID", err)
	}
}

func TestNewValidation(t *testing.T) {
	good := fixedMaster("m1", 1)
	tests := []struct {
		name string
		m    MasterKey
	}{
		{"empty ID", MasterKey{ID: "", Key: good.Key}},
		{"ID with slash", MasterKey{ID: "a/b", Key: good.Key}},
		{"ID too long", MasterKey{ID: strings.Repeat("a", maxIDLen+1), Key: good.Key}},
		{"nil key", MasterKey{ID: "m1"}},
		{"16-byte key", MasterKey{ID: "m1", Key: good.Key[:16]}},
		{"33-byte key", MasterKey{ID: "m1", Key: append(bytes.Clone(good.Key), 1)}},
		{"all-zero key", MasterKey{ID: "m1", Key: make([]byte, keySize)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := New(tt.m)
			if err == nil || k != nil {
				t.Fatal("New accepted an invalid master key")
			}
			assertNoLeak(t, err, good.Key)
		})
	}
}

func TestNewCopiesKey(t *testing.T) {
	m := fixedMaster("m1", 1)
	k := mustNew(t, m)
	s := mustSeal(t, k, []byte("v"), []byte("a"))
	Wipe(m.Key)
	if _, err := k.Open(s, []byte("a")); err != nil {
		t.Fatalf("Open after caller wiped its key copy: %v", err)
	}
}

func TestUninitialisedKeyring(t *testing.T) {
	for _, tt := range []struct {
		name string
		k    *Keyring
	}{
		{"nil", nil},
		{"zero value", &Keyring{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.k.Seal([]byte("v"), []byte("a")); err == nil {
				t.Error("Seal succeeded")
			}
			if _, err := tt.k.Open(Sealed{KeyID: "m1"}, []byte("a")); err == nil {
				t.Error("Open succeeded")
			}
			tt.k.Rotate(fixedMaster("m1", 1)) // must not panic
		})
	}
}

func TestGenerateMasterKey(t *testing.T) {
	a, err := GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []MasterKey{a, b} {
		if len(m.ID) != 16 || !isLowerHex([]byte(m.ID)) {
			t.Errorf("ID %q is not 16 lowercase hex chars", m.ID)
		}
		if err := m.Validate(); err != nil {
			t.Errorf("generated key invalid: %v", err)
		}
	}
	if a.ID == b.ID || bytes.Equal(a.Key, b.Key) {
		t.Error("two generated keys collide")
	}
}

func TestSealedJSON(t *testing.T) {
	k := mustNew(t, fixedMaster("m1", 1))
	aad := []byte("secret/a/1")
	s := mustSeal(t, k, []byte("v"), aad)
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"kid", "wk", "nonce", "ct"} {
		if _, ok := fields[name]; !ok {
			t.Errorf("JSON lacks %q: %s", name, raw)
		}
	}
	var back Sealed
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if got, err := k.Open(back, aad); err != nil || string(got) != "v" {
		t.Fatalf("Open after JSON round trip = %q, %v", got, err)
	}
}

func TestConcurrentUse(t *testing.T) {
	k := mustNew(t, fixedMaster("m0", 1))
	var wg sync.WaitGroup
	errc := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			aad := []byte(fmt.Sprintf("secret/%d/1", g))
			for i := range 50 {
				pt := []byte(fmt.Sprintf("value %d/%d", g, i))
				s, err := k.Seal(pt, aad)
				if err != nil {
					errc <- err
					return
				}
				got, err := k.Open(s, aad)
				if err != nil || !bytes.Equal(got, pt) {
					errc <- fmt.Errorf("open: %v", err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 20 {
			k.Rotate(fixedMaster(fmt.Sprintf("m%d", i+1), byte(i+2)))
		}
	}()
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

func TestFileKeyStoreCreateAndReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "keys")
	store := FileKeyStore{Path: filepath.Join(dir, "master.key")}

	m1, created, err := store.LoadOrCreate()
	if err != nil || !created {
		t.Fatalf("first LoadOrCreate: created=%v err=%v", created, err)
	}
	if err := m1.Validate(); err != nil {
		t.Fatal(err)
	}
	m2, created, err := store.LoadOrCreate()
	if err != nil || created {
		t.Fatalf("second LoadOrCreate: created=%v err=%v", created, err)
	}
	if m1.ID != m2.ID || !bytes.Equal(m1.Key, m2.Key) {
		t.Fatal("reload returned a different key")
	}

	for _, c := range []struct {
		path string
		want fs.FileMode
	}{
		{store.Path, 0o600},
		{dir, 0o700},
		{filepath.Dir(dir), 0o700},
	} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.want {
			t.Errorf("%s mode = %04o, want %04o", c.path, got, c.want)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("key dir holds %d entries, want only the key file (temp file left behind?)", len(entries))
	}

	// The key from the file must actually work as a master key.
	k := mustNew(t, m2)
	s := mustSeal(t, k, []byte("v"), []byte("a"))
	if _, err := mustNew(t, m1).Open(s, []byte("a")); err != nil {
		t.Fatal(err)
	}
}

func TestFileKeyStoreRefuses(t *testing.T) {
	valid := func(t *testing.T, path string) []byte {
		t.Helper()
		if _, _, err := (FileKeyStore{Path: path}).LoadOrCreate(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	write := func(b []byte) func(*testing.T, string) {
		return func(t *testing.T, path string) {
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	chmod := func(mode fs.FileMode) func(*testing.T, string) {
		return func(t *testing.T, path string) {
			valid(t, path)
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	rewrite := func(edit func([]byte) []byte) func(*testing.T, string) {
		return func(t *testing.T, path string) {
			b := edit(valid(t, path))
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name  string
		setup func(*testing.T, string)
	}{
		{"mode 0644", chmod(0o644)},
		{"mode 0640", chmod(0o640)},
		{"mode 0604", chmod(0o604)},
		{"mode 0660", chmod(0o660)},
		{"truncated", rewrite(func(b []byte) []byte { return b[:len(b)-10] })},
		{"missing newline", rewrite(func(b []byte) []byte { return b[:len(b)-1] })},
		{"trailing data", rewrite(func(b []byte) []byte { return append(b, "extra\n"...) })},
		{"uppercase hex", rewrite(func(b []byte) []byte {
			return append(b[:len(fileMagic):len(fileMagic)], bytes.ToUpper(b[len(fileMagic):])...)
		})},
		{"bad magic", rewrite(func(b []byte) []byte { b[0] = 'H'; return b })},
		{"bad separator", rewrite(func(b []byte) []byte { b[len(fileMagic)+fileIDLen] = '-'; return b })},
		{"non-hex key", rewrite(func(b []byte) []byte { b[fileSize-2] = 'g'; return b })},
		{"empty file", write(nil)},
		{"all-zero key", write([]byte(fileMagic + "0123456789abcdef:" + strings.Repeat("0", 2*keySize) + "\n"))},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink to valid key", func(t *testing.T, path string) {
			target := path + ".real"
			valid(t, target)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"dangling symlink", func(t *testing.T, path string) {
			if err := os.Symlink(path+".missing", path); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "master.key")
			tt.setup(t, path)
			before, _ := os.ReadFile(path)

			m, created, err := FileKeyStore{Path: path}.LoadOrCreate()
			if err == nil {
				t.Fatalf("LoadOrCreate accepted the file (created=%v, id=%q)", created, m.ID)
			}
			if created || m.Key != nil {
				t.Fatal("refusal returned a key")
			}
			// Refusing must leave the file alone: replacing a damaged key
			// would orphan every value sealed under it.
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Fatal("refused file was modified")
			}
			if len(before) >= len(fileMagic)+fileIDLen+1 {
				assertNoLeak(t, err, before[len(fileMagic)+fileIDLen+1:])
			}
		})
	}
}

func TestFileKeyStoreEmptyPath(t *testing.T) {
	if _, _, err := (FileKeyStore{}).LoadOrCreate(); err == nil {
		t.Fatal("empty path accepted")
	}
}

func TestFileKeyStoreConcurrentCreate(t *testing.T) {
	store := FileKeyStore{Path: filepath.Join(t.TempDir(), "k", "master.key")}
	const n = 16
	keys := make([]MasterKey, n)
	created := make([]bool, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys[i], created[i], errs[i] = store.LoadOrCreate()
		}()
	}
	wg.Wait()
	creators := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if created[i] {
			creators++
		}
		if keys[i].ID != keys[0].ID || !bytes.Equal(keys[i].Key, keys[0].Key) {
			t.Fatal("concurrent callers ended up with different keys")
		}
	}
	if creators != 1 {
		t.Fatalf("%d callers report creating the key, want 1", creators)
	}
}

// FuzzOpen checks that Open never panics on arbitrary stored fields and that
// the only input it accepts is the one valid seal, byte for byte.
func FuzzOpen(f *testing.F) {
	m1, m2 := fixedMaster("m1", 1), fixedMaster("m2", 77)
	k, err := New(m1)
	if err != nil {
		f.Fatal(err)
	}
	k.Rotate(m2)
	pt, aad := []byte("fuzz plaintext"), []byte("secret/fuzz/1")
	// Deterministic randomness, so every fuzz worker holds the same valid seal
	// as the coordinator that built the corpus.
	dek := bytes.Repeat([]byte{0xd1}, keySize)
	nonce := bytes.Repeat([]byte{0x5e}, nonceSize)
	wrapNonce := bytes.Repeat([]byte{0x3a}, nonceSize)
	valid, err := sealWith("m1", k.keys["m1"], dek, nonce, wrapNonce, pt, aad)
	if err != nil {
		f.Fatal(err)
	}

	f.Add(valid.KeyID, valid.WrappedKey, valid.Nonce, valid.Ciphertext, aad)
	f.Add("m2", valid.WrappedKey, valid.Nonce, valid.Ciphertext, aad)
	f.Add(valid.KeyID, valid.WrappedKey, valid.Nonce, valid.Ciphertext, []byte("secret/fuzz/2"))
	f.Add(valid.KeyID, valid.WrappedKey[:20], valid.Nonce, valid.Ciphertext, aad)
	f.Add(valid.KeyID, valid.WrappedKey, valid.Nonce[:4], valid.Ciphertext, aad)
	f.Add(valid.KeyID, valid.WrappedKey, valid.Nonce, valid.Ciphertext[:3], aad)
	f.Add("", []byte{}, []byte{}, []byte{}, []byte{})

	f.Fuzz(func(t *testing.T, keyID string, wk, n, ct, a []byte) {
		s := Sealed{KeyID: keyID, WrappedKey: wk, Nonce: n, Ciphertext: ct}
		got, err := k.Open(s, a)
		same := keyID == valid.KeyID && bytes.Equal(wk, valid.WrappedKey) &&
			bytes.Equal(n, valid.Nonce) && bytes.Equal(ct, valid.Ciphertext) && bytes.Equal(a, aad)
		switch {
		case same && err != nil:
			t.Fatalf("valid seal rejected: %v", err)
		case same && !bytes.Equal(got, pt):
			t.Fatal("valid seal opened to the wrong plaintext")
		case !same && err == nil:
			t.Fatalf("Open accepted a mutated seal (kid=%q wk=%x n=%x ct=%x aad=%q)", keyID, wk, n, ct, a)
		case err != nil && got != nil:
			t.Fatal("Open returned data alongside an error")
		}
	})
}

func benchValue() ([]byte, []byte) {
	return bytes.Repeat([]byte{'s'}, 1024), []byte("secret/bench/1")
}

func BenchmarkSeal(b *testing.B) {
	k := mustNew(b, fixedMaster("m1", 1))
	pt, aad := benchValue()
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Seal(pt, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	k := mustNew(b, fixedMaster("m1", 1))
	pt, aad := benchValue()
	s := mustSeal(b, k, pt, aad)
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Open(s, aad); err != nil {
			b.Fatal(err)
		}
	}
}
