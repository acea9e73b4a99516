package secretfs

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// TreeMounted reports whether id's directory holds a tree mount (MountTree),
// complete or left mid-swap by a crash: its manifest says so and its
// directory of generations is there. A tree mount must be swapped again,
// never mounted afresh, while a container binds it: a new tmpfs would not
// reach the container's existing bind, and it would stop seeing rotations.
func (m *Manager) TreeMounted(id string) bool {
	if !validTaskID(id) {
		return false
	}
	m.sem <- struct{}{}
	defer m.unlock()
	if st, err := m.state(m.dir(id)); err != nil || st != stateMounted {
		return false
	}
	man, dfd, err := m.readManifest(id)
	if err != nil {
		return false
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	return man.Tree && unix.Fstatat(dfd, treeDir, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// readManifest opens id's tmpfs and decodes its manifest, without checking
// the files against it; the caller closes the returned descriptor.
func (m *Manager) readManifest(id string) (*manifest, int, error) {
	dir := m.dir(id)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, -1, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(dfd, &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		unix.Close(dfd)
		return nil, -1, fmt.Errorf("%s is not a tmpfs", dir)
	}
	fd, err := unix.Openat(dfd, manifestName, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(dfd)
		return nil, -1, fmt.Errorf("%w: manifest: %w", errIncomplete, err)
	}
	f := os.NewFile(uintptr(fd), manifestName)
	raw, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	f.Close()
	var man manifest
	if err == nil && len(raw) > maxManifestSize {
		err = fmt.Errorf("manifest too large")
	}
	if err == nil {
		err = json.Unmarshal(raw, &man)
	}
	if err == nil && man.Version != manifestVersion {
		err = fmt.Errorf("manifest version %d, want %d", man.Version, manifestVersion)
	}
	if err != nil {
		unix.Close(dfd)
		return nil, -1, fmt.Errorf("manifest: %w", err)
	}
	return &man, dfd, nil
}

// Resume is Swap for a tree mount that a crash may have left between its
// two renames (the generation current, the manifest not yet naming it),
// which Swap refuses as incomplete: it writes files as a new generation
// over whatever generation is current, and a new manifest, so the mount is
// whole again and the container's bind, which is never replaced, serves
// files. A mount that is not a tree is refused.
func (m *Manager) Resume(ctx context.Context, id string, files []File) error {
	return m.swapTree(ctx, id, files, true)
}

// swapTree is Swap, and with resume Resume: a tree whose manifest lags
// its current generation is then swapped too.
func (m *Manager) swapTree(ctx context.Context, taskID string, files []File, resume bool) error {
	if err := checkTaskID(taskID); err != nil {
		return err
	}
	tfs, entries, err := treeFiles(files)
	if err != nil {
		return err
	}
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.unlock()
	dir := m.dir(taskID)
	if st, err := m.state(dir); err != nil || st != stateMounted {
		return fmt.Errorf("secretfs: task %s has no mount to swap", taskID)
	}
	// A swap cut short (hushd killed) can leave the tmpfs writable: make it
	// read-only again before checking it as any mount is checked.
	_ = unix.Mount("tmpfs", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|mountFlags, "")
	tree := false
	if resume {
		man, dfd, err := m.readManifest(taskID)
		if err != nil {
			return fmt.Errorf("secretfs: task %s: %w", taskID, err)
		}
		unix.Close(dfd)
		tree = man.Tree
	} else {
		mt, err := m.open(taskID)
		if err != nil {
			return fmt.Errorf("secretfs: task %s: %w", taskID, err)
		}
		tree = mt.tree
	}
	if !tree {
		return fmt.Errorf("secretfs: task %s: its files are bound one by one and cannot be swapped", taskID)
	}
	return m.rewriteTree(ctx, taskID, tfs, entries)
}

// rewriteTree writes tfs as the next generation of id's tree mount, its
// tmpfs writable only meanwhile (Swap, Resume). The caller holds the lock.
func (m *Manager) rewriteTree(ctx context.Context, id string, tfs []TreeFile, entries []entry) error {
	dir := m.dir(id)
	opts := fmt.Sprintf("size=%d,nr_inodes=%d", treeSize(entries), 3*len(tfs)+16)
	if err := unix.Mount("tmpfs", dir, "", unix.MS_REMOUNT|mountFlags, opts); err != nil {
		return fmt.Errorf("secretfs: task %s: remount read-write: %w", id, err)
	}
	werr := writeTree(dir, m.root, tfs, entries, false)
	if err := remountReadOnly(ctx, dir); err != nil {
		return fmt.Errorf("secretfs: task %s: remount read-only: %w", id, err)
	}
	if werr != nil {
		return fmt.Errorf("secretfs: task %s: swap: %w", id, werr)
	}
	m.log.Info("secretfs: swapped", "task", id, "files", len(entries))
	return nil
}
