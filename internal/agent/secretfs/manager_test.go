package secretfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hush-secrets/hush/internal/testutil"

	"golang.org/x/sys/unix"
)

// --- environment -----------------------------------------------------------

var (
	probeOnce sync.Once
	probeErr  error // why mount tests can't run here
	probeHard bool  // the probe failed for a reason other than permissions
)

// requireMount skips the test unless we are root and may mount a tmpfs. With
// CI=true it fails instead: CI runs as root and must run these tests.
func requireMount(t *testing.T) {
	t.Helper()
	probeOnce.Do(func() {
		if os.Geteuid() != 0 {
			probeErr = fmt.Errorf("secretfs mount tests need root (running as uid %d)", os.Geteuid())
			return
		}
		d, err := os.MkdirTemp("", "secretfs-probe")
		if err != nil {
			probeErr, probeHard = err, true
			return
		}
		defer os.Remove(d)
		if err := unix.Mount("tmpfs", d, "tmpfs", mountFlags, "size=4096"); err != nil {
			probeErr = fmt.Errorf("secretfs mount tests need permission to mount a tmpfs: %w", err)
			probeHard = !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES)
			return
		}
		if err := unix.Unmount(d, 0); err != nil {
			probeErr, probeHard = fmt.Errorf("unmount probe tmpfs: %w", err), true
		}
	})
	if probeErr == nil {
		return
	}
	if probeHard {
		t.Fatal(probeErr)
	}
	testutil.SkipOrFail(t, "%v", probeErr)
}

// syncBuffer collects log output from many goroutines.
type syncBuffer = testutil.SyncBuffer

// allSecrets lists every plaintext the tests use, so that logs, errors and
// files outside the tmpfs can be checked for them.
var allSecrets = [][]byte{
	[]byte("hush-test-key-PLAINTEXT"),
	[]byte("hush-test-db-PLAINTEXT"),
	[]byte("hush-test-ab-PLAINTEXT"),
	[]byte("hush-test-config-PLAINTEXT"),
	[]byte("hush-test-dup-PLAINTEXT"),
	[]byte("hush-test-nest-PLAINTEXT"),
	[]byte("hush-test-dd-PLAINTEXT"),
}

// secret returns s, which must contain one of allSecrets, as bytes.
func secret(s string) []byte {
	for _, known := range allSecrets {
		if strings.Contains(s, string(known)) {
			return []byte(s)
		}
	}
	panic("secret " + s + " is not listed in allSecrets")
}

// newTestManager returns a Manager on a fresh Root, which is unmounted and
// checked for leaks (secrets in logs) when the test ends.
func newTestManager(t *testing.T) *Manager {
	t.Helper()
	requireMount(t)
	root := filepath.Join(t.TempDir(), "run", "tasks")
	logs := &syncBuffer{}
	m, err := NewManager(root, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cleanupRoot(t, root)
		out := logs.String()
		for _, s := range allSecrets {
			if len(s) > 0 && strings.Contains(out, string(s)) {
				t.Errorf("log output contains secret data %q:\n%s", s, out)
			}
		}
		if t.Failed() {
			t.Logf("logs:\n%s", out)
		}
	})
	return m
}

// cleanupRoot detaches anything still mounted under root.
func cleanupRoot(t *testing.T, root string) {
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		dir := filepath.Join(root, e.Name())
		for range 8 {
			if unix.Unmount(dir, unix.MNT_DETACH) != nil {
				break
			}
		}
	}
}

type mountInfo struct {
	id, mountPoint, opts, fstype, superOpts string
}

// mountsAt returns the entries of /proc/self/mountinfo mounted at dir.
func mountsAt(t *testing.T, dir string) []mountInfo {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []mountInfo
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 6 || sep < 6 || len(fields) < sep+4 {
			t.Fatalf("cannot parse mountinfo line %q", sc.Text())
		}
		if fields[4] != dir {
			continue
		}
		out = append(out, mountInfo{
			id: fields[0], mountPoint: fields[4], opts: fields[5],
			fstype: fields[sep+1], superOpts: fields[sep+3],
		})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func hasOpts(opts string, want ...string) bool {
	have := strings.Split(opts, ",")
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// mustMountOnce returns the single mount at dir.
func mustMountOnce(t *testing.T, dir string) mountInfo {
	t.Helper()
	ms := mountsAt(t, dir)
	if len(ms) != 1 {
		t.Fatalf("%d mounts at %s, want 1: %+v", len(ms), dir, ms)
	}
	return ms[0]
}

func testFiles() []File {
	big := make([]byte, 5000) // more than a page
	for i := range big {
		big[i] = byte(i * 7)
	}
	copy(big, secret("-----BEGIN PRIVATE KEY----- hush-test-key-PLAINTEXT"))
	return []File{
		{Target: "db_password", UID: 0, GID: 0, Mode: 0o400, Data: secret("hush-test-db-PLAINTEXT\n")},
		{Target: "a/b", UID: 1000, GID: 1000, Mode: 0o440, Data: append(secret("hush-test-ab-PLAINTEXT"), 0, 0xff, '\n')},
		{Target: "/etc/app/key.pem", UID: 1000, GID: 0, Mode: 0o444, Data: big},
		{Target: "empty", UID: 1000, GID: 1000, Mode: 0o600, Data: nil},
		{Target: "/config_name", UID: 0, GID: 1000, Mode: 0o444, Data: secret("hush-test-config-PLAINTEXT")},
	}
}

func cloneFiles(files []File) []File {
	out := slices.Clone(files)
	for i := range out {
		out[i].Data = slices.Clone(out[i].Data)
	}
	return out
}

// --- tests -----------------------------------------------------------------

func TestNewManager(t *testing.T) {
	requireMount(t)
	if _, err := NewManager("relative/root", nil); err == nil {
		t.Fatal("NewManager accepted a relative root")
	}
	base := t.TempDir()
	root := filepath.Join(base, "tasks")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(root+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Root() != root {
		t.Errorf("Root() = %q, want %q", m.Root(), root)
	}
	if fi, err := os.Stat(root); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("root mode = %v, %v; want 0700", fi.Mode(), err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewManager(file, nil); err == nil {
		t.Error("NewManager accepted a file as root")
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(root, link); err != nil {
		t.Fatal(err)
	}
	if _, err := NewManager(link, nil); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("NewManager(symlink) error = %v, want not a directory", err)
	}
}

func TestMountWritesExactFiles(t *testing.T) {
	m := newTestManager(t)
	files := testFiles()
	want := cloneFiles(files)
	mt, err := m.Mount(context.Background(), "task1", files)
	if err != nil {
		t.Fatal(err)
	}
	// The caller owns Data and may wipe it as soon as Mount returns.
	for _, f := range files {
		clear(f.Data)
	}

	if mt.TaskID() != "task1" || mt.Path() != filepath.Join(m.Root(), "task1") {
		t.Fatalf("TaskID, Path = %q, %q", mt.TaskID(), mt.Path())
	}
	var st unix.Stat_t
	if err := unix.Stat(mt.Path(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode != unix.S_IFDIR|0o700 || st.Uid != 0 || st.Gid != 0 {
		t.Errorf("tmpfs root: mode %#o uid %d gid %d, want dir 0700 root:root", st.Mode, st.Uid, st.Gid)
	}

	wantPaths := []string{
		"/run/secrets/db_password",
		"/run/secrets/a/b",
		"/etc/app/key.pem",
		"/run/secrets/empty",
		"/config_name",
	}
	bs := mt.Bindings()
	if len(bs) != len(want) {
		t.Fatalf("%d bindings, want %d", len(bs), len(want))
	}
	for i, b := range bs {
		if b.ContainerPath != wantPaths[i] {
			t.Errorf("binding %d: container path %q, want %q", i, b.ContainerPath, wantPaths[i])
		}
		if b.HostPath != filepath.Join(mt.Path(), strconv.Itoa(i)) {
			t.Errorf("binding %d: host path %q, want a flat file in %s", i, b.HostPath, mt.Path())
		}
		got, err := os.ReadFile(b.HostPath)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[i].Data) {
			t.Errorf("binding %d: content differs (%d bytes, want %d)", i, len(got), len(want[i].Data))
		}
		if err := unix.Lstat(b.HostPath, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			t.Errorf("binding %d: not a regular file (mode %#o)", i, st.Mode)
		}
		if mode := os.FileMode(st.Mode & 0o7777); mode != want[i].Mode {
			t.Errorf("binding %d: mode %#o, want %#o", i, mode, want[i].Mode)
		}
		if int(st.Uid) != want[i].UID || int(st.Gid) != want[i].GID {
			t.Errorf("binding %d: owner %d:%d, want %d:%d", i, st.Uid, st.Gid, want[i].UID, want[i].GID)
		}
	}
	// Bindings hands out a copy.
	bs[0].ContainerPath = "/x"
	if mt.Bindings()[0].ContainerPath != wantPaths[0] {
		t.Error("Bindings shares its slice with the Mount")
	}
	names, err := readDirNames(mt.Path())
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if wantNames := []string{".manifest", "0", "1", "2", "3", "4"}; !slices.Equal(names, wantNames) {
		t.Errorf("tmpfs holds %v, want %v", names, wantNames)
	}
}

func TestMountIsReadOnlyWithSwarmOptions(t *testing.T) {
	m := newTestManager(t)
	mt, err := m.Mount(context.Background(), "ro1", testFiles())
	if err != nil {
		t.Fatal(err)
	}
	existing := mt.Bindings()[0].HostPath
	for name, op := range map[string]func() error{
		"create": func() error { return os.WriteFile(filepath.Join(mt.Path(), "new"), []byte("x"), 0o600) },
		"chmod":  func() error { return os.Chmod(existing, 0o777) },
		"chown":  func() error { return os.Chown(existing, 1234, 1234) },
		"open for write": func() error {
			f, err := os.OpenFile(existing, os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		},
		"remove": func() error { return os.Remove(existing) },
		"mkdir":  func() error { return os.Mkdir(filepath.Join(mt.Path(), "d"), 0o700) },
	} {
		if err := op(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on the mounted tmpfs: err = %v, want EROFS", name, err)
		}
	}

	mi := mustMountOnce(t, mt.Path())
	if mi.fstype != "tmpfs" {
		t.Errorf("fstype %q, want tmpfs", mi.fstype)
	}
	if !hasOpts(mi.opts, "ro", "nodev", "nosuid", "noexec") {
		t.Errorf("mount options %q lack one of ro,nodev,nosuid,noexec", mi.opts)
	}
	if !hasOpts(mi.superOpts, "ro", "mode=700") {
		t.Errorf("superblock options %q lack ro or mode=700", mi.superOpts)
	}
	if !m.noNoswap.Load() && !hasOpts(mi.superOpts, "noswap") {
		t.Errorf("superblock options %q lack noswap", mi.superOpts)
	}
	i := strings.Index(mi.superOpts, "size=")
	if i < 0 {
		t.Fatalf("superblock options %q have no size limit", mi.superOpts)
	}
	size := strings.SplitN(mi.superOpts[i+len("size="):], ",", 2)[0]
	n, err := strconv.ParseInt(strings.TrimSuffix(size, "k"), 10, 64)
	if err != nil || !strings.HasSuffix(size, "k") || n*1024 > MaxSize || n*1024 < 5000 {
		t.Errorf("size=%s, want between the data size and %d bytes", size, MaxSize)
	}
}

func TestUnmount(t *testing.T) {
	m := newTestManager(t)
	mt, err := m.Mount(context.Background(), "gone1", testFiles())
	if err != nil {
		t.Fatal(err)
	}
	// A file still open (as in a running container) does not block it.
	f, err := os.Open(mt.Bindings()[0].HostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := m.Unmount("gone1"); err != nil {
		t.Fatal(err)
	}
	if ms := mountsAt(t, mt.Path()); len(ms) != 0 {
		t.Errorf("still mounted after Unmount: %+v", ms)
	}
	if _, err := os.Lstat(mt.Path()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("directory remains after Unmount: %v", err)
	}
	if got, err := f.Stat(); err != nil || got.Size() != int64(len("hush-test-db-PLAINTEXT\n")) {
		t.Errorf("open file after lazy unmount: %v, %v", got, err)
	}
	if _, ok := m.Lookup("gone1"); ok {
		t.Error("Lookup found an unmounted task")
	}
	if err := m.Unmount("gone1"); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
	if err := m.Unmount("neverseen"); err != nil {
		t.Errorf("Unmount of an unknown task: %v", err)
	}
	if err := m.Unmount("../etc"); err == nil || !strings.Contains(err.Error(), "invalid task ID") {
		t.Errorf("Unmount(\"../etc\") error = %v, want invalid task ID", err)
	}
	// A mountless directory left by an interrupted Mount is removed too.
	if err := os.Mkdir(filepath.Join(m.Root(), "left1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount("left1"); err != nil {
		t.Fatal(err)
	}
	if ids, err := m.Tasks(); err != nil || len(ids) != 0 {
		t.Errorf("Tasks() = %v, %v; want none", ids, err)
	}
}

func TestLookupAfterRestart(t *testing.T) {
	m1 := newTestManager(t)
	files := testFiles()
	mt1, err := m1.Mount(context.Background(), "adopt1", files)
	if err != nil {
		t.Fatal(err)
	}
	before := mustMountOnce(t, mt1.Path())

	m2, err := NewManager(m1.Root(), nil) // hushd restarted
	if err != nil {
		t.Fatal(err)
	}
	mt2, ok := m2.Lookup("adopt1")
	if !ok {
		t.Fatal("Lookup did not find the mount made by the previous Manager")
	}
	if !slices.Equal(mt2.Bindings(), mt1.Bindings()) || mt2.Path() != mt1.Path() || mt2.TaskID() != "adopt1" {
		t.Fatalf("Lookup bindings %+v, want %+v", mt2.Bindings(), mt1.Bindings())
	}
	for _, id := range []string{"nosuch", "BAD", "", "../adopt1"} {
		if _, ok := m2.Lookup(id); ok {
			t.Errorf("Lookup(%q) found a mount", id)
		}
	}

	// Mount with the same files returns the existing mount as is.
	mt3, err := m2.Mount(context.Background(), "adopt1", cloneFiles(files))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(mt3.Bindings(), mt1.Bindings()) {
		t.Fatalf("re-Mount bindings %+v, want %+v", mt3.Bindings(), mt1.Bindings())
	}
	if after := mustMountOnce(t, mt1.Path()); after.id != before.id {
		t.Errorf("re-Mount replaced the mount (id %s, was %s)", after.id, before.id)
	}

	// Different files for the same task are refused, and the mount kept.
	changed := cloneFiles(files)
	changed[1].Mode = 0o444
	if _, err := m2.Mount(context.Background(), "adopt1", changed); err == nil ||
		!strings.Contains(err.Error(), "already mounted with different files") {
		t.Errorf("Mount with changed files: error = %v", err)
	}
	if after := mustMountOnce(t, mt1.Path()); after.id != before.id {
		t.Error("refused Mount changed the existing mount")
	}
	got, err := os.ReadFile(mt1.Bindings()[0].HostPath)
	if err != nil || string(got) != "hush-test-db-PLAINTEXT\n" {
		t.Errorf("file after refused Mount: %q, %v", got, err)
	}
}

func TestMountReplacesIncompleteMount(t *testing.T) {
	m := newTestManager(t)
	// A crash between mounting the tmpfs and remounting it read-only leaves
	// a writable tmpfs without manifest.
	dir := filepath.Join(m.Root(), "crash1")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", mountFlags, "size=65536,mode=0700"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "0"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Lookup("crash1"); ok {
		t.Fatal("Lookup accepted an incomplete mount")
	}
	if ids, _ := m.Tasks(); !slices.Equal(ids, []string{"crash1"}) {
		t.Errorf("Tasks() = %v, want [crash1]", ids)
	}
	mt, err := m.Mount(context.Background(), "crash1", testFiles())
	if err != nil {
		t.Fatal(err)
	}
	mi := mustMountOnce(t, dir)
	if !hasOpts(mi.opts, "ro") {
		t.Errorf("new mount is not read-only: %q", mi.opts)
	}
	if got, err := os.ReadFile(mt.Bindings()[0].HostPath); err != nil || string(got) != "hush-test-db-PLAINTEXT\n" {
		t.Errorf("file 0 = %q, %v", got, err)
	}

	// An empty directory left before the tmpfs was mounted is reused.
	if err := os.Mkdir(filepath.Join(m.Root(), "crash2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Lookup("crash2"); ok {
		t.Fatal("Lookup accepted a plain directory")
	}
	if _, err := m.Mount(context.Background(), "crash2", testFiles()); err != nil {
		t.Fatal(err)
	}
	mustMountOnce(t, filepath.Join(m.Root(), "crash2"))

	// A non-empty plain directory is not ours to mount over.
	odd := filepath.Join(m.Root(), "odd1")
	if err := os.MkdirAll(filepath.Join(odd, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Mount(context.Background(), "odd1", testFiles()); err == nil ||
		!strings.Contains(err.Error(), "not empty") {
		t.Errorf("Mount over a non-empty directory: error = %v", err)
	}
	if ms := mountsAt(t, odd); len(ms) != 0 {
		t.Errorf("mounted over a non-empty directory: %+v", ms)
	}
}

func TestTasks(t *testing.T) {
	m := newTestManager(t)
	if ids, err := m.Tasks(); err != nil || len(ids) != 0 {
		t.Fatalf("Tasks() = %v, %v; want none", ids, err)
	}
	for _, id := range []string{"b2", "a1"} {
		if _, err := m.Mount(context.Background(), id, testFiles()[:1]); err != nil {
			t.Fatal(err)
		}
	}
	// Entries that are not task directories are ignored.
	if err := os.Mkdir(filepath.Join(m.Root(), "NOT-A-TASK"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.Root(), "zz9"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if ids, err := m.Tasks(); err != nil || !slices.Equal(ids, []string{"a1", "b2"}) {
		t.Errorf("Tasks() = %v, %v; want [a1 b2]", ids, err)
	}
	if err := m.Unmount("a1"); err != nil {
		t.Fatal(err)
	}
	if ids, err := m.Tasks(); err != nil || !slices.Equal(ids, []string{"b2"}) {
		t.Errorf("after Unmount: Tasks() = %v, %v; want [b2]", ids, err)
	}
}

func TestMountRejectsAndLeavesNothing(t *testing.T) {
	m := newTestManager(t)
	ok := testFiles()[:1]
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		taskID  string
		files   []File
		wantErr string
	}{
		{"duplicate targets", nil, "dup1", append(testFiles(), File{Target: "/run/secrets/db_password", Mode: 0o444, Data: secret("hush-test-dup-PLAINTEXT")}),
			`have the same target /run/secrets/db_password`},
		{"nested targets", nil, "nest1", append(testFiles(), File{Target: "a", Mode: 0o444, Data: secret("hush-test-nest-PLAINTEXT")}),
			`conflict`},
		{"dotdot target", nil, "dd1", []File{{Target: "../../etc/passwd", Mode: 0o444, Data: secret("hush-test-dd-PLAINTEXT")}},
			`invalid secret target "../../etc/passwd": must not contain ".."`},
		{"too large", nil, "big1", []File{{Target: "big", Mode: 0o444, Data: make([]byte, MaxSize)}},
			"more than the 16777216-byte limit"},
		{"empty task ID", nil, "", ok, "invalid task ID"},
		{"upper-case task ID", nil, "Task1", ok, "invalid task ID"},
		{"path task ID", nil, "../x", ok, "invalid task ID"},
		{"long task ID", nil, strings.Repeat("a", 65), ok, "invalid task ID"},
		{"canceled", canceled, "cxl1", ok, context.Canceled.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			_, err := m.Mount(ctx, tt.taskID, tt.files)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Mount: error %v, want one containing %q", err, tt.wantErr)
			}
			for _, s := range allSecrets {
				if bytes.Contains([]byte(err.Error()), s) {
					t.Fatalf("error contains secret data: %v", err)
				}
			}
			if names, err := readDirNames(m.Root()); err != nil || len(names) != 0 {
				t.Fatalf("Root holds %v, %v after a refused Mount", names, err)
			}
		})
	}
}

// TestMountCleansUpOnWriteFailure makes writing fail half way (a canceled
// context between files) and checks that nothing stays mounted.
func TestMountCleansUpOnWriteFailure(t *testing.T) {
	m := newTestManager(t)
	dir := filepath.Join(m.Root(), "half1")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.mountTmpfs(dir, 64<<10, 8); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	files := testFiles()
	entries, err := plan(files)
	if err != nil {
		t.Fatal(err)
	}
	if err := fill(ctx, dir, m.Root(), files, entries, []byte("{}")); !errors.Is(err, context.Canceled) {
		t.Fatalf("fill with canceled context: %v", err)
	}
	// Mount discards what such a failure leaves, then succeeds.
	if _, err := m.Mount(context.Background(), "half1", files); err != nil {
		t.Fatal(err)
	}
	mustMountOnce(t, dir)
}

// TestNoPlaintextOutsideTmpfs checks that writes only ever go to a tmpfs
// mounted for the task: fill refuses any other directory, and after Mount no
// file outside the mount holds secret data.
func TestNoPlaintextOutsideTmpfs(t *testing.T) {
	m := newTestManager(t)
	files := testFiles()
	entries, err := plan(files)
	if err != nil {
		t.Fatal(err)
	}

	// A plain directory under Root (not a mount of its own) is refused,
	// and nothing is written into it.
	plain := filepath.Join(m.Root(), "plain1")
	if err := os.Mkdir(plain, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := fill(context.Background(), plain, m.Root(), files, entries, []byte("{}")); err == nil ||
		!strings.Contains(err.Error(), "refusing to write secrets") {
		t.Errorf("fill into a plain directory: error = %v", err)
	}
	if names, err := readDirNames(plain); err != nil || len(names) != 0 {
		t.Errorf("fill wrote %v into a plain directory (%v)", names, err)
	}
	// So is a read-only tmpfs.
	if err := unix.Mount("tmpfs", plain, "tmpfs", mountFlags|unix.MS_RDONLY, "size=65536"); err != nil {
		t.Fatal(err)
	}
	if err := fill(context.Background(), plain, m.Root(), files, entries, []byte("{}")); err == nil ||
		!strings.Contains(err.Error(), "read-only") {
		t.Errorf("fill into a read-only tmpfs: error = %v", err)
	}
	if err := m.Unmount("plain1"); err != nil {
		t.Fatal(err)
	}

	mt, err := m.Mount(context.Background(), "leak1", files)
	if err != nil {
		t.Fatal(err)
	}
	// Everything under the test's temporary directory, except the mount
	// itself, must be free of plaintext.
	base := filepath.Dir(filepath.Dir(m.Root()))
	var baseSt unix.Stat_t
	if err := unix.Stat(base, &baseSt); err != nil {
		t.Fatal(err)
	}
	skipped := 0
	err = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if d.IsDir() && st.Dev != baseSt.Dev {
			if p != mt.Path() {
				t.Errorf("unexpected mount at %s", p)
			}
			skipped++
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, s := range allSecrets {
			if len(s) > 0 && bytes.Contains(data, s) {
				t.Errorf("%s outside the tmpfs holds secret data", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if skipped != 1 {
		t.Errorf("walk skipped %d mounts, want 1", skipped)
	}
}

func TestConcurrentMounts(t *testing.T) {
	m := newTestManager(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	// The same task mounted concurrently ends up mounted once.
	for range 4 {
		wg.Go(func() {
			if _, err := m.Mount(context.Background(), "same1", testFiles()); err != nil {
				errs <- err
			}
		})
	}
	for i := range 8 {
		wg.Go(func() {
			id := fmt.Sprintf("par%d", i)
			mt, err := m.Mount(context.Background(), id, testFiles())
			if err != nil {
				errs <- err
				return
			}
			if got, ok := m.Lookup(id); !ok || !slices.Equal(got.Bindings(), mt.Bindings()) {
				errs <- fmt.Errorf("Lookup(%s) = %v, %v", id, got, ok)
			}
			if err := m.Unmount(id); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	mustMountOnce(t, filepath.Join(m.Root(), "same1"))
	if ids, err := m.Tasks(); err != nil || !slices.Equal(ids, []string{"same1"}) {
		t.Errorf("Tasks() = %v, %v; want [same1]", ids, err)
	}
}

// A kernel without tmpfs noswap is reported once, when the manager starts,
// not at the first task's mount; a kernel with it says nothing.
func TestNoswapReportedAtStart(t *testing.T) {
	for _, tc := range []struct {
		name      string
		supported bool
		probeErr  error
		wantWarn  bool
	}{
		{name: "supported", supported: true},
		{name: "unsupported", wantWarn: true},
		{name: "probe cannot tell", probeErr: errors.New("fsopen: operation not permitted")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &syncBuffer{}
			log := slog.New(slog.NewTextHandler(logs, nil))
			m, err := newManager(filepath.Join(t.TempDir(), "tasks"), log, func() (bool, error) { return tc.supported, tc.probeErr })
			if err != nil {
				t.Fatal(err)
			}
			n := strings.Count(logs.String(), "does not support tmpfs noswap")
			if tc.wantWarn && n != 1 || !tc.wantWarn && n != 0 {
				t.Fatalf("%d warnings about noswap at start, want warn=%v:\n%s", n, tc.wantWarn, logs.String())
			}
			if m.noNoswap.Load() != tc.wantWarn {
				t.Fatalf("noNoswap %v", m.noNoswap.Load())
			}
		})
	}
}

// The probe agrees with what this kernel does (6.4 and later take noswap).
func TestNoswapProbe(t *testing.T) {
	requireMount(t)
	ok, err := noswapSupported()
	if err != nil {
		t.Fatal(err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(uts.Release[:]), "%d.%d", &major, &minor)
	if want := major > 6 || major == 6 && minor >= 4; ok != want {
		t.Fatalf("probe says noswap %v on kernel %d.%d", ok, major, minor)
	}
}
