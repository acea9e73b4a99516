package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Backup and restore end to end: `hush backup` against a running hushd,
// `hushd restore` offline, and the restored node compared with the one
// backed up, through the real docker CLI.

var (
	hushOnce   sync.Once
	hushBin    string
	hushBinErr error
)

// hushCLI builds cmd/hush once per run.
func hushCLI(t testing.TB) string {
	t.Helper()
	hushOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hush-e2e-cli-")
		if err != nil {
			hushBinErr = err
			return
		}
		hushBin = filepath.Join(dir, "hush")
		cmd := exec.Command("go", "build", "-o", hushBin, "./cmd/hush")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			hushBinErr = fmt.Errorf("go build ./cmd/hush: %v\n%s", err, out)
		}
	})
	if hushBinErr != nil {
		t.Fatal(hushBinErr)
	}
	return hushBin
}

// runBin runs a binary with env added to a clean environment (no DOCKER_*
// of the caller's), returning stdout, stderr and the exit code.
func runBin(t testing.TB, env []string, bin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return so.String(), se.String(), 0
	case errors.As(err, &ee):
		return so.String(), se.String(), ee.ExitCode()
	}
	t.Fatalf("%s %q: %v", bin, args, err)
	return "", "", -1
}

// hushBackup runs `hush backup` against h and fails the test unless it
// succeeds.
func hushBackup(t *testing.T, h *Hushd, keyFile, file string) {
	t.Helper()
	out, errOut, code := runBin(t, []string{"DOCKER_HOST=unix://" + h.Socket, "DOCKER_CONFIG=" + t.TempDir()},
		hushCLI(t), "backup", "--key-file", keyFile, file)
	if code != 0 || !strings.Contains(out, "verified") {
		t.Fatalf("hush backup: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
}

func hushdRestore(t *testing.T, dataDir, keyFile, file string) (string, string, int) {
	t.Helper()
	return runBin(t, nil, hushdBin, "restore", "--data-dir", dataDir, "--key-file", keyFile, file)
}

// dirTree lists every entry under dir with its mode and a hash of its
// contents ("(absent)" when dir does not exist).
func dirTree(t *testing.T, dir string) string {
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

// refusedRestores checks that a changed file, a truncated one and a wrong
// key are each refused with one clear line, and that neither the data dir
// (absent, then empty) nor its parent changes.
func refusedRestores(t *testing.T, dataDir, keyFile, file string) {
	t.Helper()
	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x01
	wrongKey := filepath.Join(dir, "wrong.key")
	if err := os.WriteFile(wrongKey, []byte("not the passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, key string
		file      []byte
		want      string
	}{
		{"changed byte", keyFile, flipped, "backup file is damaged"},
		{"truncated", keyFile, good[:len(good)-300], "backup file is damaged"},
		{"wrong key", wrongKey, good, "wrong key file"},
	}
	for _, empty := range []bool{false, true} {
		if empty {
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range cases {
			f := filepath.Join(dir, "bad.hush")
			if err := os.WriteFile(f, c.file, 0o600); err != nil {
				t.Fatal(err)
			}
			before, beforeParent := dirTree(t, dataDir), dirTree(t, filepath.Dir(dataDir))
			out, errOut, code := hushdRestore(t, dataDir, c.key, f)
			if code != 1 || !strings.Contains(errOut, c.want) || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
				t.Errorf("restore of a %s file (data dir empty: %v): exit %d\nstdout: %s\nstderr: %s", c.name, empty, code, out, errOut)
			}
			if after := dirTree(t, dataDir); after != before {
				t.Errorf("%s: the data dir changed:\n%s\n---\n%s", c.name, before, after)
			}
			if after := dirTree(t, filepath.Dir(dataDir)); after != beforeParent {
				t.Errorf("%s: the data dir's parent changed:\n%s\n---\n%s", c.name, beforeParent, after)
			}
		}
	}
}

func writeKey(t *testing.T) string {
	t.Helper()
	k := filepath.Join(t.TempDir(), "backup.key")
	if err := os.WriteFile(k, []byte("correct horse battery staple "+randHex(t, 8)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

// TestBackupRestoreServices: backup → stop → wipe (data dir and the node's
// task containers) → restore → the same cluster, node, secrets, configs and
// services, whose tasks converge again and read the same secret.
func TestBackupRestoreServices(t *testing.T) {
	s := startSvcHushd(t)
	canary := "backup-canary-" + randHex(t, 8)
	s.MustDockerStdin(canary, "secret", "create", "--label", "suite=backup", "bk_secret", "-")
	s.MustDockerStdin("config-"+canary, "config", "create", "bk_config", "-")
	svc := "bk_svc_" + randHex(t, 3)
	s.MustDocker(svcArgs("service", "create", "-d", "--name", svc, "--secret", "bk_secret",
		"--config", "source=bk_config,target=/bk_config", "--env", "MODE=backup", "--stop-grace-period", "1s", s.img)...)
	ctrs := s.waitTasks(svc, 1, "with its secret", s.withSecrets("bk_secret"))
	if got := s.MustDocker("exec", ctrs[0], "cat", "/run/secrets/bk_secret"); got != canary {
		t.Fatalf("secret in the task before the backup: %q", got)
	}
	state := func() string {
		return strings.Join([]string{
			s.MustDocker("info", "--format", "{{.Swarm.Cluster.ID}} {{.Swarm.NodeID}}"),
			s.MustDocker("secret", "ls", "--format", "{{.ID}} {{.Name}}"),
			s.MustDocker("config", "ls", "--format", "{{.ID}} {{.Name}}"),
			s.MustDocker("service", "ls", "--format", "{{.ID}} {{.Name}} {{.Mode}} {{.Image}}"),
			s.MustDocker("service", "inspect", svc),
			s.MustDocker("secret", "inspect", "bk_secret"),
			s.MustDocker("config", "inspect", "bk_config"),
		}, "\n")
	}
	before := state()

	key := writeKey(t)
	file := filepath.Join(t.TempDir(), "cluster.hush")
	hushBackup(t, s.Hushd, key, file)
	b, _ := os.ReadFile(file)
	for _, needle := range []string{canary, "bk_secret", "bk_config", svc, s.node} {
		if bytes.Contains(b, []byte(needle)) {
			t.Fatalf("the backup file reveals %q", needle)
		}
	}

	s.Stop()
	// The tasks outlive hushd by design: remove this node's containers
	// (and mounts) as a wiped machine would have none.
	purgeNode(t, s.node)
	if err := os.RemoveAll(s.DataDir); err != nil {
		t.Fatal(err)
	}
	refusedRestores(t, s.DataDir, key, file)
	if err := os.RemoveAll(s.DataDir); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := hushdRestore(t, s.DataDir, key, file)
	if code != 0 {
		t.Fatalf("hushd restore: exit %d\n%s\n%s", code, out, errOut)
	}
	// Restoring again onto the restored dir is refused: it is not empty.
	if _, errOut, code := hushdRestore(t, s.DataDir, key, file); code != 1 || !strings.Contains(errOut, "not empty") {
		t.Fatalf("restore onto a restored dir: exit %d %s", code, errOut)
	}
	s.start()
	if got := strings.TrimSpace(s.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); got != "active" {
		t.Fatalf("restored node state %q", got)
	}
	ctrs = s.waitTasks(svc, 1, "with its secret after the restore", s.withSecrets("bk_secret"))
	if got := s.MustDocker("exec", ctrs[0], "cat", "/run/secrets/bk_secret"); got != canary {
		t.Fatalf("secret in the task after the restore: %q", got)
	}
	if got := s.MustDocker("exec", ctrs[0], "cat", "/bk_config"); got != "config-"+canary {
		t.Fatalf("config in the task after the restore: %q", got)
	}
	if after := state(); after != before {
		t.Fatalf("state after the restore differs:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// The restored node takes writes.
	s.MustDockerStdin("after", "secret", "create", "bk_after", "-")
}

// TestBackupRestoreAutolock: a backup of an autolocked node restores
// locked, and the unlock key of the backup's time opens it (not one
// rotated in after it).
func TestBackupRestoreAutolock(t *testing.T) {
	h := startHushd(t)
	h.MustDockerStdin("locked-"+randHex(t, 4), "secret", "create", "bk_locked", "-")
	h.MustDocker("swarm", "update", "--autolock=true")
	key1 := strings.TrimSpace(h.MustDocker("swarm", "unlock-key", "-q"))
	lsBefore := h.MustDocker("secret", "ls", "--format", "{{.ID}} {{.Name}}") + h.MustDocker("secret", "inspect", "bk_locked")
	cluster := h.MustDocker("info", "--format", "{{.Swarm.Cluster.ID}}")

	key := writeKey(t)
	file := filepath.Join(t.TempDir(), "locked.hush")
	hushBackup(t, h, key, file)
	key2 := strings.TrimSpace(h.MustDocker("swarm", "unlock-key", "--rotate", "-q"))
	if key2 == key1 {
		t.Fatal("unlock key rotation kept the key")
	}
	h.Stop()
	if err := os.RemoveAll(h.DataDir); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := hushdRestore(t, h.DataDir, key, file)
	if code != 0 || !strings.Contains(out, "start locked") {
		t.Fatalf("hushd restore: exit %d\n%s\n%s", code, out, errOut)
	}
	h.start()
	if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "locked" {
		t.Fatalf("restored autolocked node: state %q, want locked", st)
	}
	if _, errOut, code := h.DockerStdin(key2+"\n", "swarm", "unlock"); code == 0 || !strings.Contains(errOut, "invalid key") {
		t.Fatalf("a key rotated in after the backup opened it: exit %d %s", code, errOut)
	}
	h.MustDockerStdin(key1+"\n", "swarm", "unlock")
	if got := h.MustDocker("secret", "ls", "--format", "{{.ID}} {{.Name}}") + h.MustDocker("secret", "inspect", "bk_locked"); got != lsBefore {
		t.Fatalf("secret ls after restore and unlock:\n%s\nwant:\n%s", got, lsBefore)
	}
	if got := h.MustDocker("info", "--format", "{{.Swarm.Cluster.ID}}"); got != cluster {
		t.Fatalf("cluster %s after restore, want %s", got, cluster)
	}
}

// TestHushDockerPlugin: the hush binary installed as docker-hush in a
// cli-plugins directory runs as `docker hush …` through the real docker
// CLI, which hands it the host given with DOCKER_HOST or docker -H.
func TestHushDockerPlugin(t *testing.T) {
	h := startHushd(t)
	pdir := filepath.Join(h.configDir, "cli-plugins")
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(hushCLI(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pdir, "docker-hush"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if out := h.MustDocker("help"); !strings.Contains(out, "hush*") {
		t.Fatalf("docker help does not list the hush plugin:\n%s", out)
	}
	out := h.MustDocker("hush", "--help")
	if !strings.Contains(out, "Usage:  docker hush [OPTIONS] COMMAND") || !strings.Contains(out, "backup") {
		t.Fatalf("docker hush --help:\n%s", out)
	}
	if _, errOut, code := h.Docker("hush", "frobnicate"); code != 2 || !strings.HasPrefix(errOut, "hush: ") {
		t.Fatalf("docker hush frobnicate: exit %d %q", code, errOut)
	}
	key := writeKey(t)
	file := filepath.Join(t.TempDir(), "plugin.hush")
	// DOCKER_HOST (the dockerCLI helper sets it to hushd).
	if out, errOut, code := h.Docker("hush", "backup", "--key-file", key, file); code != 0 || !strings.Contains(out, "verified") {
		t.Fatalf("docker hush backup: exit %d\n%s\n%s", code, out, errOut)
	}
	// docker -H: DOCKER_HOST points nowhere, the flag must win.
	other := &dockerCLI{t: t, host: "/nonexistent/docker.sock", configDir: h.configDir}
	file2 := filepath.Join(t.TempDir(), "plugin-h.hush")
	if out, errOut, code := other.Docker("-H", "unix://"+h.Socket, "hush", "backup", "--key-file", key, file2); code != 0 || !strings.Contains(out, "verified") {
		t.Fatalf("docker -H … hush backup: exit %d\n%s\n%s", code, out, errOut)
	}
	if _, errOut, code := other.Docker("hush", "backup", "--key-file", key, file2); code != 1 || !strings.Contains(errOut, "cannot connect to hushd at unix:///nonexistent/docker.sock") {
		t.Fatalf("docker hush with DOCKER_HOST pointing nowhere: exit %d %q", code, errOut)
	}
	h.Stop()
	if err := os.RemoveAll(h.DataDir); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := hushdRestore(t, h.DataDir, key, file2); code != 0 {
		t.Fatalf("restoring the backup taken through the plugin: %s", errOut)
	}
}

// TestHushKeyRotateCLI: `hush key rotate` through the CLI rotates the
// master key online; the new key is the one `hush key show` names, and
// what was stored before opens after a restart (a config's data is
// returned by inspect, so it shows the value came through).
func TestHushKeyRotateCLI(t *testing.T) {
	requireDockerCLI(t)
	requireHushd(t)
	h := startHushd(t)
	env := []string{"DOCKER_HOST=unix://" + h.Socket, "DOCKER_CONFIG=" + t.TempDir()}
	h.MustDockerStdin("rotate-me-value", "config", "create", "keyrot_conf", "-")
	show := func() string {
		t.Helper()
		out, errOut, code := runBin(t, env, hushCLI(t), "key", "show", "-q")
		if code != 0 || strings.TrimSpace(out) == "" {
			t.Fatalf("hush key show: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		return strings.TrimSpace(out)
	}
	before := show()
	out, errOut, code := runBin(t, env, hushCLI(t), "key", "rotate")
	if code != 0 || !strings.Contains(out, "Master key rotated: the new key is ") {
		t.Fatalf("hush key rotate: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	after := show()
	if after == before || !strings.Contains(out, after) {
		t.Fatalf("key before %s, after %s; rotate said %q", before, after, out)
	}
	if _, _, code := runBin(t, env, hushCLI(t), "key", "rotate", "extra"); code != 2 {
		t.Fatalf("hush key rotate with an argument: exit %d, want 2 (usage)", code)
	}
	h.Restart()
	if got := show(); got != after {
		t.Fatalf("key after restart %s, want %s", got, after)
	}
	data := strings.TrimSpace(h.MustDocker("config", "inspect", "--format", "{{printf \"%s\" .Spec.Data}}", "keyrot_conf"))
	if data != "rotate-me-value" {
		t.Fatalf("config data after rotation and restart: %q", data)
	}
}
