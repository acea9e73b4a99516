package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
)

// `docker swarm update --autolock=true` is two calls: POST /swarm/update,
// then GET /swarm/unlockkey to print the key. hushd killed with SIGKILL
// between the two must not come back locked under a key no one saw: it
// comes back unlocked, autolock on, warning in `docker info` that the key
// was never fetched; the key fetched then locks and unlocks it from the
// next restart on, and the secret created before still reaches a task.
func TestAutolockKill9BeforeKeyFetch(t *testing.T) {
	img := enginetest.BusyboxImage(t)
	h := startHushd(t)
	h.MustDockerStdin("kill9-canary", "secret", "create", "keys-crash-alpha", "-")

	// The CLI's first call, made raw so that nothing fetches the key.
	res := h.Raw("GET", "/swarm", "", nil)
	var sw swarm.Swarm
	if res.Status != 200 || json.Unmarshal(res.Body, &sw) != nil {
		t.Fatalf("GET /swarm: %d %s", res.Status, res.Body)
	}
	sw.Spec.EncryptionConfig.AutoLockManagers = true
	body, _ := json.Marshal(sw.Spec)
	if res := h.Raw("POST", "/swarm/update?version="+strconv.FormatUint(sw.Version.Index, 10), "application/json", body); res.Status != 200 {
		t.Fatalf("POST /swarm/update: %d %s", res.Status, res.Body)
	}
	h.Kill() // kill -9 before GET /swarm/unlockkey
	h.Restart()

	if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "active" {
		t.Fatalf("state after kill -9 before the key was fetched: %q, want active", st)
	}
	// The CLI has no `docker swarm inspect`: `docker info` shows the
	// cluster spec (GET /swarm is the API's inspect).
	if on := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.Cluster.Spec.EncryptionConfig.AutoLockManagers}}")); on != "true" {
		t.Fatalf("docker info: autolock %q, want true", on)
	}
	if res := h.Raw("GET", "/swarm", "", nil); json.Unmarshal(res.Body, &sw) != nil || !sw.Spec.EncryptionConfig.AutoLockManagers {
		t.Fatalf("GET /swarm: autolock off after the restart: %d %s", res.Status, res.Body)
	}
	stdout, stderr, code := h.Docker("info")
	if code != 0 || !strings.Contains(stdout+stderr, "unlock key has not been fetched") {
		t.Fatalf("docker info carries no warning about the unfetched key (exit %d):\n%s\n%s", code, stdout, stderr)
	}
	if !fileExists(filepath.Join(h.DataDir, "keys", "master.key")) {
		t.Fatal("the plaintext master key is gone although its unlock key was never fetched")
	}

	key := strings.TrimSpace(h.MustDocker("swarm", "unlock-key", "-q"))
	if !strings.HasPrefix(key, "SWMKEY-1-") {
		t.Fatalf("unlock key %q", key)
	}
	// hushd records the delivery once the answer has left, which is
	// after the CLI may have read it: wait for that step, not a time.
	eventually(t, 10*time.Second, "the plaintext master key removed once its unlock key was fetched", func() bool {
		return !fileExists(filepath.Join(h.DataDir, "keys", "master.key"))
	})
	var info system.Info
	if res := h.Raw("GET", "/info", "", nil); json.Unmarshal(res.Body, &info) != nil || strings.Contains(strings.Join(info.Warnings, "\n"), "unlock key") {
		t.Fatalf("warnings after the key was fetched: %q", info.Warnings)
	}

	h.Restart()
	if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "locked" {
		t.Fatalf("state after the key was fetched and a restart: %q, want locked", st)
	}
	h.MustDockerStdin(key+"\n", "swarm", "unlock")

	svc := "keys-crash-svc"
	t.Cleanup(func() { h.Docker("service", "rm", svc) })
	h.MustDocker(append([]string{"service", "create", "-d", "--name", svc, "--secret", "keys-crash-alpha", "--stop-grace-period", "1s", img}, serviceCmd...)...)
	eventually(t, 60*time.Second, "the task running", func() bool { return len(hushContainers(t, h, svc)) == 1 })
	if got := h.MustDocker("exec", hushContainers(t, h, svc)[0], "cat", "/run/secrets/keys-crash-alpha"); got != "kill9-canary" {
		t.Fatalf("secret in the task after the crash, fetch and unlock: %q", got)
	}
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// procField returns the value of the line of /proc/<pid>/<file> that
// starts with prefix.
func procField(t *testing.T, pid int, file, prefix string) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			return strings.TrimSpace(rest)
		}
	}
	t.Fatalf("no %q in /proc/%d/%s", prefix, pid, file)
	return ""
}

// A running hushd keeps its keys in locked memory (VmLck above zero) and
// cannot dump core (core size limit 0); --allow-core-dumps leaves the limit
// it was started with (the keys stay locked either way).
func TestHushdKeyMemoryProtected(t *testing.T) {
	// Start hushd with a core limit that is not 0, so that 0 is hushd's
	// doing and --allow-core-dumps visibly leaves it.
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_CORE, &old); err != nil {
		t.Fatal(err)
	}
	lim := syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if old.Max != 0 && old.Max < lim.Max && os.Geteuid() != 0 {
		lim = syscall.Rlimit{Cur: old.Max, Max: old.Max}
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_CORE, &lim); err != nil {
		skipOrFatal(t, "cannot set a core size limit for hushd to inherit: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_CORE, &old) })

	for _, tc := range []struct {
		name     string
		args     []string
		wantCore string
	}{
		{name: "default", wantCore: "0 0"},
		{name: "allow-core-dumps", args: []string{"--allow-core-dumps"}, wantCore: fmt.Sprintf("%d %d", lim.Cur, lim.Max)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHushd(t, withArgs(append([]string{"--engine", ""}, tc.args...)...))
			h.MustDockerStdin("v", "secret", "create", "keys-mem-"+tc.name, "-")
			pid := h.cmd.Process.Pid

			lck := strings.Fields(procField(t, pid, "status", "VmLck:"))
			if n, err := strconv.Atoi(lck[0]); err != nil || n <= 0 {
				t.Fatalf("VmLck of a running hushd: %v; want above zero (its keys in locked memory)", lck)
			}
			// "Max core file size   <soft> <hard> bytes"
			core := strings.Fields(procField(t, pid, "limits", "Max core file size"))
			if len(core) < 2 || core[0]+" "+core[1] != tc.wantCore {
				t.Fatalf("core size limit of hushd: %v, want %s", core, tc.wantCore)
			}
		})
	}
}
