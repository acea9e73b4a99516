package secretfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// treeDir is the directory of a tree mount that is bound at /run/secrets;
// the manifest stays outside it, never visible in the container.
const treeDir = "s"

// Swappable reports whether files can be served from one directory bound
// at /run/secrets and swapped atomically (the reload rotation mode): every
// target must resolve to a file directly under /run/secrets. It says why
// not otherwise. A file bound at an absolute path elsewhere cannot be
// replaced atomically under a running container: a bind mount pins the
// inode, so the only way to change its bytes is in place, which a reader
// could see half done.
func Swappable(files []File) (bool, string) {
	for _, f := range files {
		t, err := ResolveTarget(f.Target)
		if err != nil {
			return false, err.Error()
		}
		dir, name := path.Split(t)
		if dir != SecretsDir+"/" || checkTreeName(name) != nil {
			return false, fmt.Sprintf("target %s is not a file directly under %s", t, SecretsDir)
		}
	}
	return true, ""
}

// treeFiles turns files into a generation's files at their flat names.
func treeFiles(files []File) ([]TreeFile, []entry, error) {
	entries, err := plan(files)
	if err != nil {
		return nil, nil, err
	}
	out := make([]TreeFile, len(files))
	for i := range files {
		name := path.Base(entries[i].Target)
		if ok, why := Swappable(files[i : i+1]); !ok {
			return nil, nil, fmt.Errorf("secretfs: %s", why)
		}
		entries[i].Name = name
		out[i] = TreeFile{Name: name, UID: entries[i].UID, GID: entries[i].GID, Mode: entries[i].Mode, Data: files[i].Data}
	}
	return out, entries, nil
}

// treeSize is the tmpfs size a tree of files needs: room for two
// generations, since a swap writes the new one before the old one goes.
func treeSize(entries []entry) int64 {
	pg := int64(os.Getpagesize())
	size := slack + 2*pg
	for _, e := range entries {
		size += 2 * roundUp(e.Size, pg)
	}
	return min(size, 2*MaxSize)
}

// MountTree is Mount for the reload rotation mode: the files are served
// from one directory, bound at /run/secrets, that Swap can replace
// atomically. All targets must pass Swappable.
func (m *Manager) MountTree(ctx context.Context, taskID string, files []File) (_ *Mount, err error) {
	if err := checkTaskID(taskID); err != nil {
		return nil, err
	}
	tfs, entries, err := treeFiles(files)
	if err != nil {
		return nil, err
	}
	size := treeSize(entries)
	if size > 2*MaxSize-1 {
		return nil, fmt.Errorf("secretfs: task %s: files too large for a swappable mount", taskID)
	}
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.unlock()
	dir := m.dir(taskID)
	st, err := m.state(dir)
	if err != nil {
		return nil, err
	}
	switch st {
	case stateMounted:
		if mt, err := m.open(taskID); err == nil && mt.tree {
			return mt, nil
		}
		if err := m.unmountLocked(taskID); err != nil {
			return nil, err
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, fmt.Errorf("secretfs: %w", err)
		}
	case stateDir:
		if names, err := readDirNames(dir); err != nil || len(names) != 0 {
			return nil, fmt.Errorf("secretfs: %s exists, is not a mount and is not empty", dir)
		}
	case stateAbsent:
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, fmt.Errorf("secretfs: %w", err)
		}
	}
	defer func() {
		if err != nil {
			if cerr := m.unmountLocked(taskID); cerr != nil {
				m.log.Error("secretfs: cleanup after failed mount", "task", taskID, "err", cerr)
			}
		}
	}()
	if err := m.mountTmpfs(dir, size, 3*len(files)+16); err != nil {
		return nil, err
	}
	if err := writeTree(dir, m.root, tfs, entries, true); err != nil {
		return nil, fmt.Errorf("secretfs: task %s: %w", taskID, err)
	}
	if err := unix.Mount("tmpfs", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|mountFlags, ""); err != nil {
		return nil, fmt.Errorf("secretfs: task %s: remount read-only: %w", taskID, err)
	}
	m.log.Info("secretfs: mounted (swappable)", "task", taskID, "files", len(entries), "size", size)
	return &Mount{taskID: taskID, dir: dir, entries: entries, tree: true}, nil
}

// writeTree writes the next generation of the tree (the first when fresh)
// and the manifest, through descriptors of the task's own tmpfs.
func writeTree(dir, root string, tfs []TreeFile, entries []entry, fresh bool) error {
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	if err := checkOwnTmpfs(dfd, root); err != nil {
		return err
	}
	if fresh {
		if err := unix.Mkdirat(dfd, treeDir, 0o755); err != nil {
			return fmt.Errorf("mkdir: %w", err)
		}
	}
	sfd, err := unix.Openat(dfd, treeDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", treeDir, err)
	}
	defer unix.Close(sfd)
	gen, err := currentGen(sfd)
	if err != nil {
		return err
	}
	if err := swapIn(sfd, gen+1, tfs); err != nil {
		return err
	}
	man, err := json.Marshal(manifest{Version: manifestVersion, Files: entries, Tree: true, Gen: gen + 1})
	if err != nil {
		return err
	}
	// The manifest is replaced by rename too, so a crash leaves the old or
	// the new one.
	const tmp = manifestName + ".tmp"
	_ = unix.Unlinkat(dfd, tmp, 0)
	if err := writeFile(dfd, entry{Name: tmp, Mode: 0o400}, man); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, manifestName); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	return nil
}

// Swap replaces the files of taskID's tree mount with files, atomically
// for every reader (see atomic.go). The tmpfs is writable only for the
// swap; the container's bind mount is read-only by itself (a per-mount
// flag the remount does not touch), so the container never sees a
// writable /run/secrets. A second tmpfs per generation would avoid the
// remount but could not be swapped into the container's existing bind.
func (m *Manager) Swap(ctx context.Context, taskID string, files []File) error {
	return m.swapTree(ctx, taskID, files, false)
}

// openTree checks a tree mount against its manifest.
func openTree(taskID, dir string, dfd int, man *manifest) (*Mount, error) {
	sfd, err := unix.Openat(dfd, treeDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errIncomplete, treeDir, err)
	}
	defer unix.Close(sfd)
	gen, err := currentGen(sfd)
	if err != nil || gen != man.Gen {
		return nil, fmt.Errorf("%w: generation %d, manifest says %d", errIncomplete, gen, man.Gen)
	}
	for i, e := range man.Files {
		if checkTreeName(e.Name) != nil || !strings.HasSuffix(e.Target, "/"+e.Name) {
			return nil, fmt.Errorf("manifest: file %d is named %q", i, e.Name)
		}
		var st unix.Stat_t
		if err := unix.Fstatat(sfd, e.Name, &st, 0); err != nil {
			return nil, fmt.Errorf("file %d: %w", i, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != e.Size {
			return nil, fmt.Errorf("file %d does not match the manifest", i)
		}
	}
	return &Mount{taskID: taskID, dir: dir, entries: man.Files, tree: true}, nil
}

// remountReadOnly makes the tmpfs at dir read-only again after a swap. The
// kernel refuses (EBUSY) while a removed file of the old generation is
// still open, as a reader in the container may hold it for a moment: retry
// until readBusyWait has passed. A reader that keeps the old file open
// longer fails the reload (and the task is restarted), rather than leave
// the tmpfs writable.
func remountReadOnly(ctx context.Context, dir string) error {
	deadline := time.Now().Add(readBusyWait)
	for {
		err := unix.Mount("tmpfs", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|mountFlags, "")
		if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// readBusyWait bounds how long a swap waits for readers of the old
// generation to close it.
const readBusyWait = 5 * time.Second
