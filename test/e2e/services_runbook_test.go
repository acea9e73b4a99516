package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// serviceCmd keeps a task up and stops at once on SIGTERM.
var serviceCmd = []string{"sh", "-c", `trap "exit 0" TERM; while :; do sleep 0.2; done`}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

// nodeID is the hushd node's ID, which labels its containers and names its
// tmpfs root, so tests never confuse it with another hushd or with Swarm.
func nodeID(t *testing.T, h *Hushd) string {
	t.Helper()
	return strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.NodeID}}"))
}

// hushContainers lists the running containers of a hushd service on the
// engine (IDs), found by Swarm's service label plus hush's node label.
func hushContainers(t *testing.T, h *Hushd, service string) []string {
	t.Helper()
	out := h.MustDocker("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+service, "--filter", "label=io.hush.node.id="+nodeID(t, h))
	return strings.Fields(out)
}

// hushMounts counts the tmpfs mounts of hushd h on the host.
func hushMounts(t *testing.T, h *Hushd) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	root := " /run/hush/" + nodeID(t, h) + "/"
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, root) {
			n++
		}
	}
	return n
}

// TestServicesRunbookCLI is the services runbook through the real docker CLI
// against hushd, with containers on the host engine.
func TestServicesRunbookCLI(t *testing.T) {
	img := enginetest.BusyboxImage(t)
	h := startHushd(t)
	svc := "webapp"
	// The runbook's nginx:latest, as the suite's own tag (see suiteTag): the
	// host engine's nginx:latest, if any, is not the test's to replace.
	nginx := suiteTag(t, newDockerCLI(t, enginetest.Socket), img, "nginx")
	h.MustDockerStdin("mysecretpassword", "secret", "create", "db_password", "-")
	keyFile := t.TempDir() + "/api_key.txt"
	if err := os.WriteFile(keyFile, []byte("apikey-123"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.MustDocker("secret", "create", "api_key", keyFile)
	t.Cleanup(func() { h.Docker("service", "rm", svc) })

	// Attached create: the CLI polls tasks until converged.
	out, errOut, code := h.Docker(append([]string{"service", "create", "--name", svc, "--secret", "db_password", "--stop-grace-period", "1s", nginx}, serviceCmd...)...)
	if code != 0 || !strings.Contains(out+errOut, "converged") {
		t.Fatalf("service create: exit %d\n%s\n%s", code, out, errOut)
	}
	cs := hushContainers(t, h, svc)
	if len(cs) != 1 {
		t.Fatalf("want 1 task container, have %v", cs)
	}
	if got := h.MustDocker("exec", cs[0], "cat", "/run/secrets/db_password"); got != "mysecretpassword" {
		t.Fatalf("secret content %q", got)
	}
	if got := strings.TrimSpace(h.MustDocker("exec", cs[0], "stat", "-c", "%a %u %g", "/run/secrets/db_password")); got != "444 0 0" {
		t.Fatalf("mode/owner %q", got)
	}
	mounts := h.MustDocker("exec", cs[0], "cat", "/proc/mounts")
	if !strings.Contains(mounts, "/run/secrets/db_password tmpfs ro") {
		t.Fatalf("secret is not a read-only tmpfs mount:\n%s", mounts)
	}
	// In use: refused with Swarm's text.
	_, errOut, code = h.Docker("secret", "rm", "db_password")
	if code == 0 || !strings.Contains(errOut, "secret 'db_password' is in use by the following service: webapp") {
		t.Fatalf("secret rm in use: exit %d %s", code, errOut)
	}
	// --secret-add: the replacement container sees both.
	h.MustDocker("service", "update", "--secret-add", "api_key", svc)
	eventually(t, 30*time.Second, "a container with both secrets", func() bool {
		cs := hushContainers(t, h, svc)
		if len(cs) != 1 {
			return false
		}
		ls, _, code := h.Docker("exec", cs[0], "ls", "/run/secrets")
		return code == 0 && strings.Fields(ls) != nil && strings.Join(strings.Fields(ls), ",") == "api_key,db_password"
	})
	// --secret-rm: only api_key is left, and the secret can then go.
	h.MustDocker("service", "update", "--secret-rm", "db_password", svc)
	eventually(t, 30*time.Second, "a container with only api_key", func() bool {
		cs := hushContainers(t, h, svc)
		if len(cs) != 1 {
			return false
		}
		ls, _, code := h.Docker("exec", cs[0], "ls", "/run/secrets")
		return code == 0 && strings.TrimSpace(ls) == "api_key"
	})
	cs = hushContainers(t, h, svc)
	if got := h.MustDocker("exec", cs[0], "cat", "/run/secrets/api_key"); got != "apikey-123" {
		t.Fatalf("api_key content %q", got)
	}
	h.MustDocker("secret", "rm", "db_password")
	h.MustDocker("service", "rm", svc)
	eventually(t, 30*time.Second, "containers and mounts gone", func() bool {
		return len(hushContainers(t, h, svc)) == 0 && hushMounts(t, h) == 0
	})
}

// TestServicesSurviveKill9 kills hushd with running tasks: after the
// restart the same containers are adopted (no duplicates) and still read
// their secrets.
func TestServicesSurviveKill9(t *testing.T) {
	img := enginetest.BusyboxImage(t)
	h := startHushd(t)
	svc := "k9svc"
	h.MustDockerStdin("k9-value", "secret", "create", "k9secret", "-")
	t.Cleanup(func() { h.Docker("service", "rm", svc) })
	h.MustDocker(append([]string{"service", "create", "-d", "--name", svc, "--replicas", "2", "--secret", "k9secret", "--stop-grace-period", "1s", img}, serviceCmd...)...)
	eventually(t, 30*time.Second, "2 running tasks", func() bool { return len(hushContainers(t, h, svc)) == 2 })
	before := strings.Join(hushContainers(t, h, svc), ",")

	h.Kill()
	h.Restart()
	// Once the restarted agent has acted, nothing of svc may have changed.
	agentPassed(t, h, img)
	after := hushContainers(t, h, svc)
	if strings.Join(after, ",") != before {
		t.Fatalf("containers changed across kill -9: before %s, after %v", before, after)
	}
	for _, c := range after {
		if got := h.MustDocker("exec", c, "cat", "/run/secrets/k9secret"); got != "k9-value" {
			t.Fatalf("secret after restart: %q", got)
		}
	}
	ps := h.MustDocker("service", "ps", "--format", "{{.Name}} {{.CurrentState}}", svc)
	if strings.Count(ps, "Running") != 2 {
		t.Fatalf("service ps after restart:\n%s", ps)
	}
	h.MustDocker("service", "rm", svc)
	eventually(t, 30*time.Second, "containers and mounts gone", func() bool {
		return len(hushContainers(t, h, svc)) == 0 && hushMounts(t, h) == 0
	})
}
