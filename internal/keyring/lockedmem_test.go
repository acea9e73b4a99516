package keyring

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// vmLck is the process's locked memory in kB, from /proc/self/status.
func vmLck(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmLck:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				t.Fatalf("VmLck line %q: %v", sc.Text(), err)
			}
			return n
		}
	}
	t.Fatal("no VmLck in /proc/self/status")
	return 0
}

func TestLockedMemoryIsLockedAndWiped(t *testing.T) {
	p := newLockedPool()
	ps := p.pageSize / 1024
	before := vmLck(t)

	a := p.alloc(keySize)
	b := p.alloc(keySize)
	if p.lockErr != nil {
		// The tests run as root: locking must work here. In production a
		// refusal is reported, and the keys still work.
		t.Fatalf("mlock failed: %v", p.lockErr)
	}
	if got := vmLck(t); got < before+ps {
		t.Fatalf("VmLck %d kB after allocating key memory, want at least %d", got, before+ps)
	}
	if len(a) != keySize || cap(a) != keySize {
		t.Fatalf("len %d cap %d, want both %d", len(a), cap(a), keySize)
	}
	if unsafe.SliceData(a) == unsafe.SliceData(b) {
		t.Fatal("two live allocations share memory")
	}
	for i := range a {
		a[i], b[i] = 0xA5, 0x5A
	}
	// a's slot stays mapped while b lives on the same page: read what
	// freeing left there.
	p.free(a)
	if !bytes.Equal(a[:cap(a)], make([]byte, keySize)) {
		t.Fatal("freed key memory was not wiped")
	}
	c := p.alloc(keySize)
	if !bytes.Equal(c, make([]byte, keySize)) {
		t.Fatal("a new allocation is not zeroed")
	}
	p.free(c)
	p.free(c) // a second free is harmless
	if !bytes.Equal(b, bytes.Repeat([]byte{0x5A}, keySize)) {
		t.Fatal("freeing another slot touched a live one")
	}
	p.free(b)
	if p.locked == 0 {
		t.Fatal("the last page of a size class is unmapped: Seal/Open would map a page per call")
	}

	// A buffer bigger than a page gets its own mapping, unlocked and
	// unmapped on release.
	big := p.alloc(3 * p.pageSize)
	if p.locked < 3*p.pageSize {
		t.Fatalf("locked %d bytes with a %d-byte buffer live", p.locked, 3*p.pageSize)
	}
	mid := vmLck(t)
	p.free(big)
	if got := vmLck(t); got > mid-3*ps {
		t.Fatalf("VmLck %d kB after releasing a %d kB buffer (was %d)", got, 3*ps, mid)
	}
}

func TestFreeOfHeapMemoryOnlyWipes(t *testing.T) {
	b := []byte("not from the pool")
	Free(b)
	if !bytes.Equal(b, make([]byte, len(b))) {
		t.Fatal("Free did not wipe a heap slice")
	}
	Free(nil)
}

func TestKeysLiveInLockedMemory(t *testing.T) {
	inPool := func(b []byte) bool {
		addr := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
		memPool.mu.Lock()
		defer memPool.mu.Unlock()
		return memPool.pages[addr&^uintptr(memPool.pageSize-1)] != nil
	}
	mk, err := GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	if !inPool(mk.Key) {
		t.Error("GenerateMasterKey: key not in locked memory")
	}
	dir := t.TempDir()
	fs := FileKeyStore{Path: dir + "/master.key"}
	if err := fs.Store(mk); err != nil {
		t.Fatal(err)
	}
	loaded, err := fs.Load()
	if err != nil || !inPool(loaded.Key) {
		t.Errorf("FileKeyStore.Load: key not in locked memory (%v)", err)
	}
	uk, _ := GenerateUnlockKey()
	ls := LockedKeyStore{Path: dir + "/master.key.locked"}
	if err := ls.Store(mk, uk); err != nil {
		t.Fatal(err)
	}
	opened, err := ls.Load(uk)
	if err != nil || !inPool(opened.Key) {
		t.Errorf("LockedKeyStore.Load: key not in locked memory (%v)", err)
	}
	kr, err := New(mk)
	if err != nil {
		t.Fatal(err)
	}
	for _, kk := range kr.keys {
		if !inPool(kk.raw) {
			t.Error("Keyring: master key copy not in locked memory")
		}
	}
	kr.Destroy()
	if _, err := kr.Seal([]byte("x"), []byte("aad")); err == nil {
		t.Error("Seal works on a destroyed keyring")
	}
	opened.Destroy()
	if opened.Key != nil {
		t.Error("Destroy left the key")
	}
	loaded.Destroy()
	mk.Destroy()
	if MemoryLockError() != nil {
		t.Fatalf("mlock failed (tests run as root): %v", MemoryLockError())
	}
	if LockedBytes() == 0 {
		t.Fatal("no key memory locked")
	}
}

func BenchmarkSealOpen(b *testing.B) {
	mk, _ := GenerateMasterKey()
	kr, _ := New(mk)
	pt := make([]byte, 1024)
	aad := []byte("bench")
	for b.Loop() {
		s, err := kr.Seal(pt, aad)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := kr.Open(s, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func usedSlots() int {
	memPool.mu.Lock()
	defer memPool.mu.Unlock()
	n := 0
	for _, pg := range memPool.pages {
		n += pg.used
	}
	return n
}

// Forget returns the forgotten key's locked memory: each master-key
// rotation forgets one key, and a long-running hushd must not fill its
// RLIMIT_MEMLOCK with wiped slots.
func TestForgetFreesKeyMemory(t *testing.T) {
	mk, err := GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := New(mk)
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Destroy()
	prev := mk.ID
	mk.Destroy()
	before := usedSlots()
	for range 100 {
		next, err := GenerateMasterKey()
		if err != nil {
			t.Fatal(err)
		}
		kr.Rotate(next)
		if err := kr.Forget(prev); err != nil {
			t.Fatal(err)
		}
		prev = next.ID
		next.Destroy()
	}
	if after := usedSlots(); after != before {
		t.Fatalf("%d locked slots in use after 100 rotations, %d before", after, before)
	}
}
