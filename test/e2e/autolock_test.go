package e2e

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// masterKeyHex reads the plaintext master key file ("hush-mk-v1:<id>:<hex>").
func masterKeyHex(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "keys", "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(strings.TrimSpace(string(b)), ":")
	return parts[len(parts)-1]
}

// scanDir fails if any file under dir contains any of needles.
func scanDir(t *testing.T, dir string, needles map[string][]byte) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for name, n := range needles {
			if bytes.Contains(b, n) {
				t.Errorf("%s found in %s", name, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAutolockCLI drives autolock through the docker CLI: enable, restart
// (locked), wrong key, right key, rotation, disable; and checks that
// neither key is left on disk in plaintext.
func TestAutolockCLI(t *testing.T) {
	img := enginetest.BusyboxImage(t)
	h := startHushd(t)
	mkHex := masterKeyHex(t, h.DataDir)
	mkRaw, err := hex.DecodeString(mkHex)
	if err != nil || len(mkRaw) == 0 {
		t.Fatalf("master key file: not hex (%v)", err)
	}
	h.MustDockerStdin("locked-canary", "secret", "create", "alpha", "-")
	svc := "lockedsvc"
	t.Cleanup(func() { h.Docker("service", "rm", svc) })
	h.MustDocker(append([]string{"service", "create", "-d", "--name", svc, "--secret", "alpha", "--stop-grace-period", "1s", img}, serviceCmd...)...)
	eventually(t, 30*time.Second, "the task running", func() bool { return len(hushContainers(t, h, svc)) == 1 })
	ctr := hushContainers(t, h, svc)[0]

	// Join-token rotation changes the token.
	w1 := strings.TrimSpace(h.MustDocker("swarm", "join-token", "-q", "worker"))
	w2 := strings.TrimSpace(h.MustDocker("swarm", "join-token", "-q", "--rotate", "worker"))
	if w1 == w2 || !strings.HasPrefix(w2, "SWMTKN-1-") || w1[:59] != w2[:59] {
		t.Fatalf("join token rotation: %q → %q", w1, w2)
	}

	out := h.MustDocker("swarm", "update", "--autolock=true")
	if !strings.Contains(out, "SWMKEY-1-") {
		t.Fatalf("swarm update --autolock=true printed no key:\n%s", out)
	}
	key1 := strings.TrimSpace(h.MustDocker("swarm", "unlock-key", "-q"))
	if !strings.Contains(out, key1) {
		t.Fatalf("unlock-key %q differs from the one printed at enable", key1)
	}
	if !strings.Contains(h.MustDocker("info"), "Autolock Managers: true") {
		t.Fatal("docker info does not show autolock")
	}
	needles := map[string][]byte{
		"master key (raw)": mkRaw, "master key (hex)": []byte(mkHex),
		"unlock key": []byte(key1), "unlock key body": []byte(strings.TrimPrefix(key1, "SWMKEY-1-")),
	}
	h.Stop()
	scanDir(t, h.DataDir, needles)
	logb, err := os.ReadFile(h.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for name, n := range needles {
		if bytes.Contains(logb, n) {
			t.Errorf("%s found in the hushd log", name)
		}
	}

	// Restarted: locked.
	h.Restart()
	if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "locked" {
		t.Fatalf("state after restart: %q", st)
	}
	_, errOut, code := h.Docker("secret", "ls")
	if code == 0 || !strings.Contains(errOut, `Swarm is encrypted and needs to be unlocked before it can be used. Please use "docker swarm unlock" to unlock it.`) {
		t.Fatalf("secret ls while locked: exit %d %s", code, errOut)
	}
	// The running container keeps its secret while the manager is locked.
	if got := h.MustDocker("exec", ctr, "cat", "/run/secrets/alpha"); got != "locked-canary" {
		t.Fatalf("secret in the running container while locked: %q", got)
	}
	bad := "SWMKEY-1-" + strings.Repeat("A", 43)
	_, errOut, code = h.DockerStdin(bad+"\n", "swarm", "unlock")
	if code == 0 || !strings.Contains(errOut, "swarm could not be unlocked: invalid key provided") {
		t.Fatalf("wrong key: exit %d %s", code, errOut)
	}
	h.MustDockerStdin(key1+"\n", "swarm", "unlock")
	if got := h.MustDocker("secret", "ls", "--format", "{{.Name}}"); strings.TrimSpace(got) != "alpha" {
		t.Fatalf("after unlock: %q", got)
	}
	// Adopted, not replaced.
	eventually(t, 10*time.Second, "the same container still running", func() bool {
		cs := hushContainers(t, h, svc)
		return len(cs) == 1 && cs[0] == ctr
	})

	// Rotation: the old key stops working at once.
	key2 := strings.TrimSpace(h.MustDocker("swarm", "unlock-key", "--rotate", "-q"))
	if key2 == key1 || !strings.HasPrefix(key2, "SWMKEY-1-") {
		t.Fatalf("rotated key %q", key2)
	}
	h.Stop()
	h.Restart()
	if _, errOut, code = h.DockerStdin(key1+"\n", "swarm", "unlock"); code == 0 || !strings.Contains(errOut, "invalid key provided") {
		t.Fatalf("old key after rotation: exit %d %s", code, errOut)
	}
	h.MustDockerStdin(key2+"\n", "swarm", "unlock")

	// Disable: a restart no longer locks.
	h.MustDocker("swarm", "update", "--autolock=false")
	if _, errOut, code = h.Docker("swarm", "unlock-key"); code == 0 || !strings.Contains(errOut, "no unlock key is set") {
		t.Fatalf("unlock-key after disable: exit %d %s", code, errOut)
	}
	h.Stop()
	h.Restart()
	if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "active" {
		t.Fatalf("state after disable and restart: %q", st)
	}
	if _, errOut, code = h.DockerStdin(key2+"\n", "swarm", "unlock"); code == 0 || !strings.Contains(errOut, "not locked") {
		t.Fatalf("unlock when not locked: exit %d %s", code, errOut)
	}
}

// TestSwarmInitLeave covers a hushd started with --no-init.
func TestSwarmInitLeave(t *testing.T) {
	h := startHushd(t, withArgs("--no-init"))
	if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "inactive" {
		t.Fatalf("state: %q", st)
	}
	_, errOut, code := h.Docker("secret", "ls")
	if code == 0 || !strings.Contains(errOut, "This node is not a swarm manager.") {
		t.Fatalf("secret ls before init: exit %d %s", code, errOut)
	}
	out := h.MustDocker("swarm", "init", "--autolock")
	if !strings.Contains(out, "Swarm initialized") || !strings.Contains(out, "SWMKEY-1-") {
		t.Fatalf("swarm init --autolock:\n%s", out)
	}
	if _, errOut, code = h.Docker("swarm", "init"); code == 0 || !strings.Contains(errOut, "This node is already part of a swarm.") {
		t.Fatalf("second init: exit %d %s", code, errOut)
	}
	h.MustDockerStdin("v", "secret", "create", "s", "-")
	if _, errOut, code = h.Docker("swarm", "leave"); code == 0 || !strings.Contains(errOut, "Use `--force` to ignore this message.") {
		t.Fatalf("leave without force: exit %d %s", code, errOut)
	}
	h.MustDocker("swarm", "leave", "--force")
	if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "inactive" {
		t.Fatalf("state after leave: %q", st)
	}
	entries, err := os.ReadDir(filepath.Join(h.DataDir, "keys"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "master.key") {
			t.Fatalf("key file %s left after leave", e.Name())
		}
	}
	h.MustDocker("swarm", "init")
	if got := strings.TrimSpace(h.MustDocker("secret", "ls", "-q")); got != "" {
		t.Fatalf("a new cluster must start empty, has %q", got)
	}
}
