package secretfs

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func openDir(t *testing.T, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func uidgid() (int, int) { return os.Getuid(), os.Getgid() }

// TestSwapLayout: after each swap the files read the new generation, old
// generations are gone, and a name dropped from the set loses its link.
func TestSwapLayout(t *testing.T) {
	dir := t.TempDir()
	dfd := openDir(t, dir)
	u, g := uidgid()
	steps := []struct {
		files map[string]string
	}{
		{map[string]string{"a": "a1", "b": "b1"}},
		{map[string]string{"a": "a2", "b": "b2"}},
		{map[string]string{"a": "a3"}},
	}
	for i, st := range steps {
		var files []TreeFile
		for n, v := range st.files {
			files = append(files, TreeFile{Name: n, UID: u, GID: g, Mode: 0o444, Data: []byte(v)})
		}
		if err := swapIn(dfd, i+1, files); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if gen, err := currentGen(dfd); err != nil || gen != i+1 {
			t.Fatalf("step %d: current generation %d %v", i, gen, err)
		}
		for n, v := range st.files {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil || string(b) != v {
				t.Fatalf("step %d: %s = %q %v, want %q", i, n, b, err, v)
			}
			if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || fi.Mode().Perm() != 0o444 {
				t.Fatalf("step %d: %s mode %v %v", i, n, fi, err)
			}
		}
		ents, _ := os.ReadDir(dir)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		want := []string{"..data", "..v" + itoa(i+1)}
		for n := range st.files {
			want = append(want, n)
		}
		sort.Strings(want)
		if !equal(names, want) {
			t.Fatalf("step %d: directory %v, want %v", i, names, want)
		}
	}
}

func itoa(i int) string { return string(rune('0' + i)) }

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSwapNeverTorn: readers loop over the files while generations are
// swapped in; every read is one whole generation's value of that file,
// never a partial or mixed one.
func TestSwapNeverTorn(t *testing.T) {
	dir := t.TempDir()
	dfd := openDir(t, dir)
	u, g := uidgid()
	const gens = 300
	// Values of different lengths and bytes, so a torn or mixed read
	// matches none.
	value := func(name string, gen int) []byte {
		return bytes.Repeat([]byte{byte('a' + gen%26), name[0]}, 2048+gen*17)
	}
	valid := map[string]map[string]bool{"x": {}, "y": {}}
	for gen := 1; gen <= gens; gen++ {
		valid["x"][string(value("x", gen))] = true
		valid["y"][string(value("y", gen))] = true
	}
	write := func(gen int) {
		if err := swapIn(dfd, gen, []TreeFile{
			{Name: "x", UID: u, GID: g, Mode: 0o444, Data: value("x", gen)},
			{Name: "y", UID: u, GID: g, Mode: 0o444, Data: value("y", gen)},
		}); err != nil {
			t.Error(err)
		}
	}
	write(1)
	var stop atomic.Bool
	var reads, vanished atomic.Int64
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		name := []string{"x", "y"}[r%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if errors.Is(err, fs.ErrNotExist) {
					// The generation resolved through ..data was removed
					// between the two lookups: no data was read at all.
					vanished.Add(1)
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				reads.Add(1)
				if !valid[name][string(b)] {
					t.Errorf("torn or mixed read of %s: %d bytes", name, len(b))
					return
				}
			}
		}()
	}
	for gen := 2; gen <= gens; gen++ {
		write(gen)
	}
	stop.Store(true)
	wg.Wait()
	if reads.Load() == 0 {
		t.Fatal("the readers read nothing")
	}
	t.Logf("%d whole reads, %d lookups that found no file, over %d swaps", reads.Load(), vanished.Load(), gens-1)
}

func TestSwapRefusesNames(t *testing.T) {
	dfd := openDir(t, t.TempDir())
	for _, n := range []string{"", "..data", "a/b", "..", "..v1"} {
		if err := swapIn(dfd, 1, []TreeFile{{Name: n, Mode: 0o444, Data: []byte("v")}}); err == nil {
			t.Errorf("name %q accepted", n)
		}
	}
	if err := swapIn(dfd, 1, []TreeFile{{Name: "a", Mode: 0o444, Data: []byte("1")}, {Name: "a", Mode: 0o444, Data: []byte("2")}}); err == nil {
		t.Error("a name given twice was accepted")
	}
}

// TestMountTreeSwap: a tree mount is one binding at /run/secrets, read-only
// but for the swap, and Swap replaces every file's value; the mount is
// found again (Lookup) after the swap, as after a hushd restart.
func TestMountTreeSwap(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	u, g := uidgid()
	files := func(a, b string) []File {
		return []File{
			{Target: "a", UID: u, GID: g, Mode: 0o440, Data: []byte(a)},
			{Target: "/run/secrets/b", UID: u, GID: g, Mode: 0o444, Data: []byte(b)},
		}
	}
	if ok, why := Swappable([]File{{Target: "/etc/app.key"}}); ok || why == "" {
		t.Fatalf("an absolute target outside /run/secrets is swappable: %q", why)
	}
	if ok, _ := Swappable([]File{{Target: "a/b"}}); ok {
		t.Fatal("a nested target is swappable")
	}
	mt, err := m.MountTree(ctx, "task1", files("a1", "b1"))
	if err != nil {
		t.Fatal(err)
	}
	bs := mt.Bindings()
	if len(bs) != 1 || bs[0].ContainerPath != SecretsDir {
		t.Fatalf("bindings %+v", bs)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(bs[0].HostPath, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if read("a") != "a1" || read("b") != "b1" {
		t.Fatal("first generation")
	}
	if err := os.WriteFile(filepath.Join(bs[0].HostPath, "c"), []byte("x"), 0o644); err == nil {
		t.Fatal("the tree mount is writable")
	}
	// A reader holding the old file open for a moment: the swap waits for
	// it before the tmpfs goes read-only again (the kernel refuses while a
	// removed file is open).
	held, err := os.Open(filepath.Join(bs[0].HostPath, "a"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		held.Close()
	}()
	if err := m.Swap(ctx, "task1", files("a2-longer", "b2")); err != nil {
		t.Fatal(err)
	}
	if read("a") != "a2-longer" || read("b") != "b2" {
		t.Fatal("after the swap")
	}
	if err := os.WriteFile(filepath.Join(bs[0].HostPath, "c"), []byte("x"), 0o644); err == nil {
		t.Fatal("the tree mount is writable after a swap")
	}
	if fi, err := os.Stat(filepath.Join(bs[0].HostPath, "a")); err != nil || fi.Mode().Perm() != 0o440 {
		t.Fatalf("mode after swap: %v %v", fi, err)
	}
	if mt2, ok := m.Lookup("task1"); !ok || !mt2.tree {
		t.Fatal("tree mount not found again after the swap")
	}
	if _, err := m.Mount(ctx, "task2", files("x", "y")); err != nil {
		t.Fatal(err)
	}
	if err := m.Swap(ctx, "task2", files("x2", "y2")); err == nil {
		t.Fatal("a per-file mount was swapped")
	}
	for _, id := range []string{"task1", "task2"} {
		if err := m.Unmount(id); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSwapAfterCrash: a generation directory left by a swap cut short
// before its rename is written afresh, and readers never saw it.
func TestSwapAfterCrash(t *testing.T) {
	dir := t.TempDir()
	dfd := openDir(t, dir)
	u, g := uidgid()
	if err := swapIn(dfd, 1, []TreeFile{{Name: "a", UID: u, GID: g, Mode: 0o444, Data: []byte("one")}}); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "..v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "..v2", "a"), []byte("half"), 0o444); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a")); string(b) != "one" {
		t.Fatalf("before the swap: %q", b)
	}
	if err := swapIn(dfd, 2, []TreeFile{{Name: "a", UID: u, GID: g, Mode: 0o444, Data: []byte("two")}}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a")); string(b) != "two" {
		t.Fatalf("after the swap: %q", b)
	}
}
