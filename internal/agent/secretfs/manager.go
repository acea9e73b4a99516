package secretfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// MaxSize caps one task's tmpfs: the files, rounded up to whole pages, plus
// room for the manifest and some slack.
const MaxSize = 16 << 20

const (
	// slack is added to the size the files need, for the manifest's inode
	// and rounding.
	slack = 64 << 10
	// manifestName holds the mount's metadata (never data). It starts with
	// a dot so it can't clash with the numbered file names, and it is never
	// bound into a container.
	manifestName    = ".manifest"
	manifestVersion = 1
	maxManifestSize = 1 << 20

	mountFlags = unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC
)

// Manager creates and removes the per-task tmpfs mounts under its Root. There
// is one per hushd. It is safe for concurrent use; mount operations are
// serialised.
type Manager struct {
	root string
	log  *slog.Logger
	// sem is a mutex that a Mount waiting for it can give up on.
	sem chan struct{}
	// noNoswap is set once the kernel has refused tmpfs's noswap option.
	noNoswap atomic.Bool
}

// Mount is one task's read-only tmpfs of secrets.
type Mount struct {
	taskID  string
	dir     string
	entries []entry
	// tree mounts serve every file from one directory bound at
	// /run/secrets, swapped atomically on reload (tree.go).
	tree bool
}

// TaskID returns the task the mount belongs to.
func (mt *Mount) TaskID() string { return mt.taskID }

// Path returns the host path the tmpfs is mounted at.
func (mt *Mount) Path() string { return mt.dir }

// Bindings returns, in the order the files were given to Mount, the bind
// mounts to add to the task's container, each read-only.
func (mt *Mount) Bindings() []Binding {
	if mt.tree {
		return []Binding{{HostPath: filepath.Join(mt.dir, treeDir), ContainerPath: SecretsDir}}
	}
	b := make([]Binding, len(mt.entries))
	for i, e := range mt.entries {
		b[i] = Binding{HostPath: filepath.Join(mt.dir, e.Name), ContainerPath: e.Target}
	}
	return b
}

type manifest struct {
	Version int     `json:"version"`
	Files   []entry `json:"files"`
	// Tree marks a swappable mount (tree.go); Gen is its generation.
	Tree bool `json:"tree,omitempty"`
	Gen  int  `json:"gen,omitempty"`
}

// NewManager returns a Manager keeping its mounts under root, an absolute
// path, which it creates (mode 0700) if needed. An existing root must be a
// directory owned by the current user; its mode is tightened to 0700.
func NewManager(root string, log *slog.Logger) (*Manager, error) {
	return newManager(root, log, noswapSupported)
}

// msgNoNoswap is said once, at start or at the first mount.
const msgNoNoswap = "secretfs: the kernel does not support tmpfs noswap (Linux 6.4+): secret files may be written to swap if swap is enabled"

func newManager(root string, log *slog.Logger, probe func() (bool, error)) (*Manager, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("secretfs: root %q is not an absolute path", root)
	}
	root = filepath.Clean(root)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("secretfs: create root: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		return nil, fmt.Errorf("secretfs: root: %w", &os.PathError{Op: "lstat", Path: root, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("secretfs: root %s is not a directory", root)
	}
	if int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("secretfs: root %s is owned by uid %d, not %d", root, st.Uid, os.Geteuid())
	}
	if st.Mode&0o7777 != 0o700 {
		if err := os.Chmod(root, 0o700); err != nil {
			return nil, fmt.Errorf("secretfs: root: %w", err)
		}
		log.Warn("secretfs: tightened root permissions to 0700", "root", root, "was", fmt.Sprintf("%#o", st.Mode&0o7777))
	}
	m := &Manager{root: root, log: log, sem: make(chan struct{}, 1)}
	// Said at start rather than at the first task's mount, which may be
	// long after; when the probe cannot tell (no privilege for fsopen),
	// the first mount finds out and says it then.
	if ok, err := probe(); err == nil && !ok {
		m.noNoswap.Store(true)
		log.Warn(msgNoNoswap)
	} else if err != nil {
		log.Debug("secretfs: could not ask the kernel about tmpfs noswap; the first mount will", "err", err)
	}
	return m, nil
}

// noswapSupported asks the kernel whether tmpfs takes noswap without
// mounting anything: a filesystem context is opened, the option set, and
// the context closed. A kernel without fsopen (before 5.2) predates
// noswap too.
func noswapSupported() (bool, error) {
	fd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("fsopen tmpfs: %w", err)
	}
	defer unix.Close(fd)
	switch err := unix.FsconfigSetFlag(fd, "noswap"); {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL):
		return false, nil
	default:
		return false, fmt.Errorf("fsconfig noswap: %w", err)
	}
}

// Root returns the directory the task mounts are under.
func (m *Manager) Root() string { return m.root }

func (m *Manager) lock(ctx context.Context) error {
	select {
	case m.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Manager) unlock() { <-m.sem }

func (m *Manager) dir(taskID string) string { return filepath.Join(m.root, taskID) }

// Mount materialises files for taskID in a new read-only tmpfs at
// Root/<taskID> and returns it.
//
// If that tmpfs already exists and is complete (hushd restarted while the
// task ran), it is returned untouched, so that a running container keeps its
// files; its files' targets, owners, modes and sizes must then match files,
// or Mount fails and the caller must Unmount first. A mount left incomplete
// by a crash is discarded and made anew.
//
// Targets are resolved with ResolveTarget and must be distinct, and none may
// be inside another. On error nothing is left mounted or created.
func (m *Manager) Mount(ctx context.Context, taskID string, files []File) (_ *Mount, err error) {
	if err := checkTaskID(taskID); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := plan(files)
	if err != nil {
		return nil, err
	}
	man, err := json.Marshal(manifest{Version: manifestVersion, Files: entries})
	if err != nil {
		return nil, fmt.Errorf("secretfs: encode manifest: %w", err)
	}
	pg := int64(os.Getpagesize())
	size := slack + roundUp(int64(len(man)), pg)
	for _, e := range entries {
		size += roundUp(e.Size, pg)
	}
	if size > MaxSize {
		return nil, fmt.Errorf("secretfs: task %s: %d files need %d bytes of tmpfs, more than the %d-byte limit",
			taskID, len(files), size, MaxSize)
	}
	// Every file, the manifest and the root directory take an inode.
	inodes := len(files) + 16

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
		mt, err := m.open(taskID)
		if err == nil {
			if !slices.Equal(mt.entries, entries) {
				return nil, fmt.Errorf("secretfs: task %s is already mounted with different files; unmount it first", taskID)
			}
			m.log.Info("secretfs: reusing existing mount", "task", taskID, "files", len(entries))
			return mt, nil
		}
		m.log.Warn("secretfs: discarding incomplete mount", "task", taskID, "err", err)
		if err := m.unmountLocked(taskID); err != nil {
			return nil, err
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, fmt.Errorf("secretfs: %w", err)
		}
	case stateDir:
		// Left over from a Mount interrupted before its tmpfs was mounted.
		names, err := readDirNames(dir)
		if err != nil {
			return nil, fmt.Errorf("secretfs: %w", err)
		}
		if len(names) != 0 {
			return nil, fmt.Errorf("secretfs: %s exists, is not a mount and is not empty", dir)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("secretfs: %w", err)
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
	if err := m.mountTmpfs(dir, size, inodes); err != nil {
		return nil, err
	}
	if err := fill(ctx, dir, m.root, files, entries, man); err != nil {
		return nil, fmt.Errorf("secretfs: task %s: %w", taskID, err)
	}
	if err := unix.Mount("tmpfs", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|mountFlags, ""); err != nil {
		return nil, fmt.Errorf("secretfs: task %s: remount read-only: %w", taskID, err)
	}
	m.log.Info("secretfs: mounted", "task", taskID, "files", len(entries), "size", size)
	return &Mount{taskID: taskID, dir: dir, entries: entries}, nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func (m *Manager) mountTmpfs(dir string, size int64, inodes int) error {
	opts := fmt.Sprintf("size=%d,nr_inodes=%d,mode=0700,uid=0,gid=0", size, inodes)
	if !m.noNoswap.Load() {
		err := unix.Mount("tmpfs", dir, "tmpfs", mountFlags, opts+",noswap")
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("secretfs: mount tmpfs at %s: %w", dir, err)
		}
		// Kernels before 6.4 don't know noswap.
		if err := unix.Mount("tmpfs", dir, "tmpfs", mountFlags, opts); err != nil {
			return fmt.Errorf("secretfs: mount tmpfs at %s: %w", dir, err)
		}
		m.noNoswap.Store(true)
		m.log.Warn(msgNoNoswap)
		return nil
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", mountFlags, opts); err != nil {
		return fmt.Errorf("secretfs: mount tmpfs at %s: %w", dir, err)
	}
	return nil
}

// fill writes files and the manifest into the fresh tmpfs at dir. All writes
// go through a descriptor of dir, after checking that it is a tmpfs other
// than root's filesystem.
func fill(ctx context.Context, dir, root string, files []File, entries []entry, man []byte) error {
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	if err := checkOwnTmpfs(dfd, root); err != nil {
		return err
	}
	for i, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writeFile(dfd, e, files[i].Data); err != nil {
			return fmt.Errorf("file %d (target %s): %w", i, e.Target, err)
		}
	}
	if err := writeFile(dfd, entry{Name: manifestName, Mode: 0o400}, man); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	return nil
}

// checkOwnTmpfs makes sure dfd is the root of a writable tmpfs that is not
// the filesystem root is on, i.e. a tmpfs mounted on it: the one place
// plaintext may be written.
func checkOwnTmpfs(dfd int, root string) error {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(dfd, &fs); err != nil {
		return fmt.Errorf("statfs: %w", err)
	}
	if fs.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("refusing to write secrets: target directory is not a tmpfs (type %#x)", fs.Type)
	}
	if fs.Flags&unix.ST_RDONLY != 0 {
		return errors.New("refusing to write secrets: tmpfs is read-only")
	}
	var st, rst unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if err := unix.Stat(root, &rst); err != nil {
		return fmt.Errorf("stat root: %w", err)
	}
	if st.Dev == rst.Dev {
		return errors.New("refusing to write secrets: target directory is not a mount of its own")
	}
	return nil
}

// writeFile creates e.Name in dfd (which must not exist) with data, then
// sets its owner and mode.
func writeFile(dfd int, e entry, data []byte) error {
	fd, err := unix.Openat(dfd, e.Name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("write: %w", err)
		}
		data = data[n:]
	}
	// chown before chmod: chown may clear mode bits.
	if err := unix.Fchown(fd, e.UID, e.GID); err != nil {
		unix.Close(fd)
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, e.Mode); err != nil {
		unix.Close(fd)
		return fmt.Errorf("chmod: %w", err)
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

type dirState int

const (
	stateAbsent  dirState = iota // no such directory
	stateDir                     // a directory, nothing mounted on it
	stateMounted                 // a mount point
)

// state tells whether dir, a child of root, exists and has something mounted
// on it (its device differs from root's).
func (m *Manager) state(dir string) (dirState, error) {
	var st, rst unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return stateAbsent, nil
		}
		return 0, fmt.Errorf("secretfs: %w", &os.PathError{Op: "lstat", Path: dir, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("secretfs: %s is not a directory", dir)
	}
	if err := unix.Stat(m.root, &rst); err != nil {
		return 0, fmt.Errorf("secretfs: %w", &os.PathError{Op: "stat", Path: m.root, Err: err})
	}
	if st.Dev != rst.Dev {
		return stateMounted, nil
	}
	return stateDir, nil
}

var errIncomplete = errors.New("mount is incomplete")

// open returns the complete, read-only mount of taskID described by its
// manifest.
func (m *Manager) open(taskID string) (*Mount, error) {
	dir := m.dir(taskID)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	var fs unix.Statfs_t
	if err := unix.Fstatfs(dfd, &fs); err != nil {
		return nil, &os.PathError{Op: "statfs", Path: dir, Err: err}
	}
	if fs.Type != unix.TMPFS_MAGIC {
		return nil, fmt.Errorf("%s is not a tmpfs", dir)
	}
	if fs.Flags&unix.ST_RDONLY == 0 {
		return nil, fmt.Errorf("%w: still writable", errIncomplete)
	}
	fd, err := unix.Openat(dfd, manifestName, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", errIncomplete, err)
	}
	f := os.NewFile(uintptr(fd), manifestName)
	raw, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	if len(raw) > maxManifestSize {
		return nil, errors.New("manifest too large")
	}
	var man manifest
	if err := json.Unmarshal(raw, &man); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	if man.Version != manifestVersion {
		return nil, fmt.Errorf("manifest version %d, want %d", man.Version, manifestVersion)
	}
	if man.Tree {
		return openTree(taskID, dir, dfd, &man)
	}
	for i, e := range man.Files {
		if e.Name != fileName(i) {
			return nil, fmt.Errorf("manifest: file %d is named %q", i, e.Name)
		}
		if t, err := ResolveTarget(e.Target); err != nil || t != e.Target {
			return nil, fmt.Errorf("manifest: file %d has target %q", i, e.Target)
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, e.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return nil, fmt.Errorf("file %d: %w", i, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != e.Size ||
			int(st.Uid) != e.UID || int(st.Gid) != e.GID || st.Mode&0o7777 != e.Mode {
			return nil, fmt.Errorf("file %d does not match the manifest", i)
		}
	}
	return &Mount{taskID: taskID, dir: dir, entries: man.Files}, nil
}

// Lookup returns taskID's existing, complete mount, for instance one made
// before hushd restarted. It does not change the mount.
func (m *Manager) Lookup(taskID string) (*Mount, bool) {
	if !validTaskID(taskID) {
		return nil, false
	}
	m.sem <- struct{}{}
	defer m.unlock()
	st, err := m.state(m.dir(taskID))
	if err != nil || st != stateMounted {
		return nil, false
	}
	mt, err := m.open(taskID)
	if err != nil {
		m.log.Debug("secretfs: lookup found no usable mount", "task", taskID, "err", err)
		return nil, false
	}
	return mt, true
}

// Unmount lazily unmounts taskID's tmpfs (containers that still bind its
// files keep them until they exit) and removes its directory. It is not an
// error if there is nothing to remove.
func (m *Manager) Unmount(taskID string) error {
	if err := checkTaskID(taskID); err != nil {
		return err
	}
	m.sem <- struct{}{}
	defer m.unlock()
	if err := m.unmountLocked(taskID); err != nil {
		return err
	}
	return nil
}

func (m *Manager) unmountLocked(taskID string) error {
	dir := m.dir(taskID)
	// Loop in case mounts are stacked on dir.
	for i := range 8 {
		st, err := m.state(dir)
		if err != nil {
			return err
		}
		switch st {
		case stateAbsent:
			if i > 0 {
				// Only an unmount that did something is worth a line.
				m.log.Info("secretfs: unmounted", "task", taskID)
			}
			return nil
		case stateDir:
			if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("secretfs: %w", err)
			}
			if i > 0 {
				m.log.Info("secretfs: unmounted", "task", taskID)
			}
			return nil
		}
		if err := unix.Unmount(dir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			return fmt.Errorf("secretfs: unmount %s: %w", dir, err)
		}
	}
	return fmt.Errorf("secretfs: %s is still mounted after 8 unmounts", dir)
}

// Tasks returns, sorted, the IDs of the tasks that have a directory under
// Root: mounted, or left over by an interrupted Mount. After a restart, the
// caller unmounts those whose task is gone.
func (m *Manager) Tasks() ([]string, error) {
	ents, err := os.ReadDir(m.root)
	if err != nil {
		return nil, fmt.Errorf("secretfs: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if e.IsDir() && validTaskID(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
