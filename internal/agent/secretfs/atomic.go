package secretfs

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The swapped layout, for the reload rotation mode: a task's files under
// /run/secrets are served from ONE directory bind mount, in which
//
//	..v<N>/<name>      the files of generation N
//	..data -> ..v<N>   the current generation
//	<name> -> ..data/<name>
//
// A new generation is written in full into a directory no reader can reach,
// then made current by renaming a fresh symlink over ..data (rename(2) is
// atomic), as Kubernetes' atomic writer does. A reader opening <name>
// resolves ..data once: it gets the old file or the new one, whole, never a
// file being written, and never a mix of the two values in one file. An
// open descriptor keeps reading its generation after the swap.
//
// MountTree and Swap (tree.go) use it for tasks in the reload rotation mode.

const (
	dataLink    = "..data"
	dataLinkTmp = "..data_tmp"
	genPrefix   = "..v"
)

// TreeFile is one file of a generation, at a flat name in the directory.
type TreeFile struct {
	Name     string
	UID, GID int
	Mode     uint32
	Data     []byte
}

func checkTreeName(name string) error {
	if name == "" || name == "." || name == ".." || strings.HasPrefix(name, "..") || strings.ContainsRune(name, '/') || strings.ContainsRune(name, 0) {
		return fmt.Errorf("secretfs: %q cannot be a file of a swapped directory", name)
	}
	return nil
}

// swapIn writes files as generation gen of the directory dfd and makes it
// current; the previous generations are removed afterwards. dfd must be
// writable (the caller remounts the task's tmpfs read-write around it).
func swapIn(dfd int, gen int, files []TreeFile) error {
	if gen < 1 {
		return fmt.Errorf("secretfs: generation %d", gen)
	}
	seen := map[string]bool{}
	for _, f := range files {
		if err := checkTreeName(f.Name); err != nil {
			return err
		}
		if seen[f.Name] {
			return fmt.Errorf("secretfs: file %q given twice", f.Name)
		}
		seen[f.Name] = true
	}
	gdir := genPrefix + strconv.Itoa(gen)
	if err := unix.Mkdirat(dfd, gdir, 0o755); errors.Is(err, unix.EEXIST) {
		// Left by a swap cut short before its rename: never current, so
		// no reader has it; start it afresh.
		if rerr := removeGen(dfd, gdir); rerr != nil {
			return rerr
		}
		err = unix.Mkdirat(dfd, gdir, 0o755)
		if err != nil {
			return fmt.Errorf("secretfs: mkdir %s: %w", gdir, err)
		}
	} else if err != nil {
		return fmt.Errorf("secretfs: mkdir %s: %w", gdir, err)
	}
	gfd, err := unix.Openat(dfd, gdir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("secretfs: open %s: %w", gdir, err)
	}
	for _, f := range files {
		if err := writeFile(gfd, entry{Name: f.Name, UID: f.UID, GID: f.GID, Mode: f.Mode}, f.Data); err != nil {
			unix.Close(gfd)
			_ = removeGen(dfd, gdir)
			return fmt.Errorf("secretfs: %s/%s: %w", gdir, f.Name, err)
		}
	}
	// Everything of the generation is on the tmpfs before it is visible.
	unix.Close(gfd)
	_ = unix.Unlinkat(dfd, dataLinkTmp, 0)
	if err := unix.Symlinkat(gdir, dfd, dataLinkTmp); err != nil {
		_ = removeGen(dfd, gdir)
		return fmt.Errorf("secretfs: symlink: %w", err)
	}
	if err := unix.Renameat(dfd, dataLinkTmp, dfd, dataLink); err != nil {
		_ = unix.Unlinkat(dfd, dataLinkTmp, 0)
		_ = removeGen(dfd, gdir)
		return fmt.Errorf("secretfs: swap: %w", err)
	}
	// The per-file links: made once, they point through ..data and never
	// change; names no longer in the generation lose theirs.
	names, err := dirNames(dfd)
	if err != nil {
		return err
	}
	for _, f := range files {
		err := unix.Symlinkat(dataLink+"/"+f.Name, dfd, f.Name)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("secretfs: link %s: %w", f.Name, err)
		}
	}
	var errs []error
	for _, n := range names {
		switch {
		case n == dataLink || n == gdir:
		case strings.HasPrefix(n, genPrefix):
			errs = append(errs, removeGen(dfd, n))
		case !strings.HasPrefix(n, "..") && !seen[n]:
			errs = append(errs, unix.Unlinkat(dfd, n, 0))
		}
	}
	return errors.Join(errs...)
}

// currentGen reads which generation ..data names (0: none yet).
func currentGen(dfd int) (int, error) {
	buf := make([]byte, 64)
	n, err := unix.Readlinkat(dfd, dataLink, buf)
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("secretfs: readlink: %w", err)
	}
	g, err := strconv.Atoi(strings.TrimPrefix(string(buf[:n]), genPrefix))
	if err != nil {
		return 0, fmt.Errorf("secretfs: %s names %q", dataLink, buf[:n])
	}
	return g, nil
}

// removeGen deletes a generation directory and its files (one level).
func removeGen(dfd int, name string) error {
	gfd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("secretfs: open %s: %w", name, err)
	}
	names, err := dirNames(gfd)
	if err == nil {
		for _, n := range names {
			if uerr := unix.Unlinkat(gfd, n, 0); uerr != nil {
				err = uerr
			}
		}
	}
	unix.Close(gfd)
	if err != nil {
		return fmt.Errorf("secretfs: clear %s: %w", name, err)
	}
	return unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR)
}

// dirNames lists a directory given by descriptor (without . and ..).
func dirNames(dfd int) ([]string, error) {
	fd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("secretfs: open: %w", err)
	}
	defer unix.Close(fd)
	var names []string
	buf := make([]byte, 8192)
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err != nil {
			return nil, fmt.Errorf("secretfs: readdir: %w", err)
		}
		if n == 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}
