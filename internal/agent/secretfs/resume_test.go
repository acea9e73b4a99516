package secretfs

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestResumeAfterCrashMidSwap: a swap cut short between its two renames
// (the new generation current, the manifest still naming the old one) is a
// tree mount that Lookup and Swap refuse as incomplete, but TreeMounted
// still sees, so it is not mounted afresh under the container's bind;
// Resume makes it whole with the files given, through the same bind.
func TestResumeAfterCrashMidSwap(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	u, g := uidgid()
	files := func(a string) []File { return []File{{Target: "a", UID: u, GID: g, Mode: 0o440, Data: []byte(a)}} }
	mt, err := m.MountTree(ctx, "c1", files("a1"))
	if err != nil {
		t.Fatal(err)
	}
	bind := mt.Bindings()[0].HostPath
	// The crash: generation 2 made current, the manifest not rewritten.
	dir := m.dir("c1")
	if err := unix.Mount("tmpfs", dir, "", unix.MS_REMOUNT|mountFlags, ""); err != nil {
		t.Fatal(err)
	}
	sfd := openDir(t, filepath.Join(dir, treeDir))
	if err := swapIn(sfd, 2, []TreeFile{{Name: "a", UID: u, GID: g, Mode: 0o440, Data: []byte("a2")}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|mountFlags, ""); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Lookup("c1"); ok {
		t.Fatal("a mount whose manifest lags its generation is complete")
	}
	if !m.TreeMounted("c1") {
		t.Fatal("TreeMounted does not see the tree mount left mid-swap")
	}
	if err := m.Swap(ctx, "c1", files("a3")); err == nil {
		t.Fatal("Swap took an incomplete mount (Resume is the one that may)")
	}
	if err := m.Resume(ctx, "c1", files("a3")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(bind, "a")); err != nil || string(b) != "a3" {
		t.Fatalf("through the original bind after Resume: %q, %v", b, err)
	}
	if mt2, ok := m.Lookup("c1"); !ok || !mt2.tree {
		t.Fatal("not complete after Resume")
	}
	if err := os.WriteFile(filepath.Join(bind, "x"), []byte("x"), 0o644); err == nil {
		t.Fatal("writable after Resume")
	}

	// A per-file mount is neither a tree nor resumable; nothing is neither.
	if _, err := m.Mount(ctx, "c2", files("b1")); err != nil {
		t.Fatal(err)
	}
	if m.TreeMounted("c2") || m.TreeMounted("c3") || m.TreeMounted("../x") {
		t.Fatal("TreeMounted of a per-file mount, a missing one or a bad ID")
	}
	if err := m.Resume(ctx, "c2", files("b2")); err == nil {
		t.Fatal("a per-file mount was swapped")
	}
	if err := m.Resume(ctx, "c3", files("b2")); err == nil {
		t.Fatal("Resume of nothing succeeded")
	}
	for _, id := range []string{"c1", "c2"} {
		if err := m.Unmount(id); err != nil {
			t.Fatal(err)
		}
	}
}
