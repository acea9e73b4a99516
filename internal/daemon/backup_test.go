package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/backup"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/moby/moby/api/types/swarm"
)

var backupKey = []byte("a passphrase in a file\n")

func takeBackup(t *testing.T, d *Daemon, key []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := newBackups(d).Backup(context.Background(), key, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "backup.hush")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// tree describes every entry under dir: path, mode, and a hash of the
// contents, so two calls compare equal only for an unchanged tree.
func tree(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				lines = append(lines, "(absent)")
				return nil
			}
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %s", strings.TrimPrefix(p, dir), fi.Mode())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	d := start(t, t.TempDir())
	id, err := d.secrets.Create(ctx, objects.Spec{Name: "db-password", Data: []byte("s3cret-value")})
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := cluster.Get(ctx, d.store)
	file := takeBackup(t, d, backupKey)
	// Written after the backup: not restored.
	if _, err := d.secrets.Create(ctx, objects.Spec{Name: "later", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	node := d.NodeID()
	d.Close()
	if bytes.Contains(file, []byte("s3cret-value")) || bytes.Contains(file, []byte("db-password")) || bytes.Contains(file, []byte(node)) {
		t.Fatal("the backup file reveals a value, a name or the node ID")
	}

	dir := filepath.Join(t.TempDir(), "restored")
	res, err := Restore(ctx, RestoreConfig{DataDir: dir, Backup: writeTemp(t, file), Key: backupKey})
	if err != nil {
		t.Fatal(err)
	}
	if res.NodeID != node || res.ClusterID != c1.ID || res.Autolock {
		t.Fatalf("restore result %+v", res)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("restored data dir: %v %v", fi, err)
	}
	d = start(t, dir)
	defer d.Close()
	if d.NodeID() != node || d.State() != swarm.LocalNodeStateActive {
		t.Fatalf("restored node %s state %s", d.NodeID(), d.State())
	}
	c2, _ := cluster.Get(ctx, d.store)
	if c2.ID != c1.ID {
		t.Fatalf("cluster ID %s after restore, want %s", c2.ID, c1.ID)
	}
	data, err := d.secrets.Data(ctx, id)
	if err != nil || string(data) != "s3cret-value" {
		t.Fatalf("restored secret: %q %v", data, err)
	}
	if _, err := d.secrets.Get(ctx, "later"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a secret created after the backup exists after restore: %v", err)
	}
}

func TestBackupRestoreAutolock(t *testing.T) {
	ctx := context.Background()
	d := start(t, t.TempDir())
	id, err := d.secrets.Create(ctx, objects.Spec{Name: "s", Data: []byte("locked-value")})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := cluster.Get(ctx, d.store)
	spec := c.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	if err := d.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	k1, err := d.UnlockKey(ctx)
	if err != nil || k1 == "" {
		t.Fatalf("unlock key: %v", err)
	}
	// As the API does once the key has reached the client: until then the
	// node keeps its plaintext key (and so would its backup).
	if err := d.UnlockKeyDelivered(ctx, k1); err != nil {
		t.Fatal(err)
	}
	file := takeBackup(t, d, backupKey)
	// A rotation after the backup does not change which key opens it.
	c, _ = cluster.Get(ctx, d.store)
	if err := d.Update(ctx, c.Version, c.Spec, api.SwarmUpdateFlags{RotateManagerUnlockKey: true}); err != nil {
		t.Fatal(err)
	}
	k2, _ := d.UnlockKey(ctx)
	if err := d.UnlockKeyDelivered(ctx, k2); err != nil {
		t.Fatal(err)
	}
	d.Close()

	dir := filepath.Join(t.TempDir(), "restored")
	res, err := Restore(ctx, RestoreConfig{DataDir: dir, Backup: writeTemp(t, file), Key: backupKey})
	if err != nil || !res.Autolock {
		t.Fatalf("restore: %+v %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys", "master.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an autolocked backup restored a plaintext master key: %v", err)
	}
	d = start(t, dir)
	defer d.Close()
	if d.State() != swarm.LocalNodeStateLocked {
		t.Fatalf("restored autolocked node is %s, want locked", d.State())
	}
	if err := d.Unlock(ctx, k2); err == nil {
		t.Fatal("the unlock key rotated after the backup opened it")
	}
	if err := d.Unlock(ctx, k1); err != nil {
		t.Fatalf("the unlock key of the backup's time: %v", err)
	}
	if data, err := d.secrets.Data(ctx, id); err != nil || string(data) != "locked-value" {
		t.Fatalf("secret after unlock: %q %v", data, err)
	}
}

// TestRestoreRefusals: every refused restore leaves the target and its
// parent exactly as they were.
func TestRestoreRefusals(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	d := start(t, src)
	if _, err := d.secrets.Create(ctx, objects.Spec{Name: "s", Data: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	file := takeBackup(t, d, backupKey)

	flipped := bytes.Clone(file)
	flipped[len(flipped)/2] ^= 1
	// Cut exactly at a chunk boundary (the final chunk removed).
	atBoundary := file[:len(file)-((len(file)-56)%(backup.DefaultChunkSize+16))]
	cases := []struct {
		name string
		file []byte
		key  []byte
		dir  func(t *testing.T, parent string) string
		want string
	}{
		{"wrong key", file, []byte("another passphrase\n"), absent, "wrong key"},
		{"changed byte", flipped, backupKey, absent, "damaged"},
		{"truncated mid-chunk", file[:len(file)-100], backupKey, absent, "damaged"},
		{"truncated at a chunk boundary", atBoundary, backupKey, absent, "damaged"},
		{"empty file", nil, backupKey, absent, "damaged"},
		{"not empty", file, backupKey, func(t *testing.T, parent string) string {
			dir := filepath.Join(parent, "data")
			if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "keys", "x"), []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			return dir
		}, "not empty"},
		{"in use", file, backupKey, func(t *testing.T, parent string) string { return src }, "in use by a running hushd"},
		{"a file", file, backupKey, func(t *testing.T, parent string) string {
			p := filepath.Join(parent, "data")
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, "not a directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := c.dir(t, parent)
			before, beforeParent := tree(t, dir), tree(t, parent)
			_, err := Restore(ctx, RestoreConfig{DataDir: dir, Backup: writeTemp(t, c.file), Key: c.key})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			if after := tree(t, dir); after != before {
				t.Fatalf("the data dir changed:\nbefore\n%s\nafter\n%s", before, after)
			}
			if dir != src {
				if after := tree(t, parent); after != beforeParent {
					t.Fatalf("the parent directory changed:\nbefore\n%s\nafter\n%s", beforeParent, after)
				}
			}
		})
	}
	d.Close()

	// An empty existing directory is a valid target.
	empty := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(ctx, RestoreConfig{DataDir: empty, Backup: writeTemp(t, file), Key: backupKey}); err != nil {
		t.Fatalf("restore into an empty directory: %v", err)
	}
}

func absent(t *testing.T, parent string) string { return filepath.Join(parent, "data") }

func TestBackupRefusedWhenBusyOrLocked(t *testing.T) {
	ctx := context.Background()
	d := start(t, t.TempDir())
	defer d.Close()
	b := newBackups(d)
	b.busy <- struct{}{}
	var buf bytes.Buffer
	if err := b.Backup(ctx, backupKey, &buf); !errors.Is(err, errdefs.ErrUnavailable) || buf.Len() != 0 {
		t.Fatalf("a second backup while one runs: %v (%d bytes written)", err, buf.Len())
	}
	<-b.busy
	d.mu.Lock()
	d.state = swarm.LocalNodeStateLocked
	d.mu.Unlock()
	if err := b.Backup(ctx, backupKey, &buf); !errors.Is(err, errdefs.ErrUnavailable) || buf.Len() != 0 {
		t.Fatalf("a backup of a locked node: %v (%d bytes written)", err, buf.Len())
	}
	d.mu.Lock()
	d.state = swarm.LocalNodeStateActive
	d.mu.Unlock()
}

// A data dir that is a mount point of its own (a volume, a partition: the
// usual production layout) cannot be renamed over; restore must still
// fill it, and leave it as it was when it refuses.
func TestRestoreIntoMountPoint(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	ctx := context.Background()
	d := start(t, t.TempDir())
	id, err := d.secrets.Create(ctx, objects.Spec{Name: "mounted", Data: []byte("on a volume")})
	if err != nil {
		t.Fatal(err)
	}
	file := takeBackup(t, d, backupKey)
	d.Close()

	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })

	flipped := bytes.Clone(file)
	flipped[len(flipped)-40] ^= 1
	before := tree(t, dir)
	if _, err := Restore(ctx, RestoreConfig{DataDir: dir, Backup: writeTemp(t, flipped), Key: backupKey}); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("a damaged backup into a mount point: %v", err)
	}
	if after := tree(t, dir); after != before {
		t.Fatalf("the refused restore changed the mount point:\n%s\n%s", before, after)
	}

	if _, err := Restore(ctx, RestoreConfig{DataDir: dir, Backup: writeTemp(t, file), Key: backupKey}); err != nil {
		t.Fatalf("restore into a mount point: %v", err)
	}
	d = start(t, dir)
	defer d.Close()
	data, err := d.secrets.Data(ctx, id)
	if err != nil || string(data) != "on a volume" {
		t.Fatalf("restored secret: %q %v", data, err)
	}
}

// A backup taken while a master-key rotation re-wraps the store holds
// records under both keys and the rotating key file: the restored node
// opens every secret (with the unlock key of the backup's time under
// autolock) and finishes the rotation.
func TestBackupDuringRotation(t *testing.T) {
	for _, autolock := range []bool{false, true} {
		t.Run(fmt.Sprintf("autolock=%v", autolock), func(t *testing.T) {
			ctx := context.Background()
			d := start(t, t.TempDir())
			f := newFixture(t, d, 60)
			var unlock string
			if autolock {
				unlock = enableAutolock(t, d)
			}
			old := copyKey(t, d)
			var file []byte
			d.rot.fail = func(step string, batch int) error {
				if step == stepBatch && batch == 1 {
					var buf bytes.Buffer
					if err := newBackups(d).Backup(ctx, backupKey, &buf); err != nil {
						return err
					}
					file = buf.Bytes()
				}
				return nil
			}
			if _, err := d.RotateMaster(ctx); err != nil {
				t.Fatal(err)
			}
			if file == nil {
				t.Fatal("no backup was taken during the rotation")
			}
			d.Close()
			dir := filepath.Join(t.TempDir(), "restored")
			if _, err := Restore(ctx, RestoreConfig{DataDir: dir, Backup: writeTemp(t, file), Key: backupKey}); err != nil {
				t.Fatal(err)
			}
			d = start(t, dir)
			defer d.Close()
			if autolock {
				if err := d.Unlock(ctx, unlock); err != nil {
					t.Fatalf("unlock of the restored node: %v", err)
				}
			}
			f.dir = dir
			f.check(t, d, old)
		})
	}
}
