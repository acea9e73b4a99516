package e2e

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// TestClusterForceNew is the recovery of a cluster of managers that lost
// its quorum for good, with the real docker CLI on a lab cluster of its
// own (it is destructive): two managers of three killed with -9, the
// survivor refuses writes with Swarm's no-leader text, `docker swarm init
// --force-new-cluster` on it makes it the only manager with every object,
// a new secret and a service using it run on the worker, a killed manager
// restarted stops with the dropped text instead of rejoining, and a fresh
// manager joins the recovered cluster.
func TestClusterForceNew(t *testing.T) {
	began := time.Now()
	c := newLabCluster(t)
	img := enginetest.BusyboxImage(t)
	sfx := randHex(t, 3)
	m1, m2, m3, w1 := c.byName["m1"], c.byName["m2"], c.byName["m3"], c.byName["w1"]
	sec, svc := "fnc-s-"+sfx, "fnc-svc-"+sfx
	sec2, svc2 := "fnc-s2-"+sfx, "fnc-svc2-"+sfx
	removeServices := func() {
		if !m1.running() {
			return
		}
		for _, s := range []string{svc, svc2} {
			_, _, _ = m1.Docker("service", "rm", s)
		}
		for _, s := range []string{svc, svc2} {
			waitFor(t, 60*time.Second, "the services' containers gone", func() bool {
				return strings.TrimSpace(m1.MustDocker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+s)) == ""
			})
		}
	}
	// On a failure before the end (the end removes them while the
	// cluster still has its quorum).
	t.Cleanup(removeServices)
	m2.MustDockerStdin("before-"+sfx, "secret", "create", sec, "-")
	m1.MustDocker("service", "create", "-d", "--name", svc, "--secret", sec,
		"--constraint", "node.role==worker", "--stop-grace-period", "1s", img, "sleep", "3600")
	before := labObjects(m1)
	mtok := strings.TrimSpace(m1.MustDocker("swarm", "join-token", "-q", "manager"))
	cid := strings.TrimSpace(m1.MustDocker("info", "--format", "{{.Swarm.Cluster.ID}}"))

	m2.Kill()
	m3.Kill()
	waitFor(t, 60*time.Second, "the survivor refusing writes with Swarm's no-leader text", func() bool {
		_, errOut, code, err := tryDocker(m1, 30*time.Second, "v", "secret", "create", "noq-"+sfx, "-")
		return err == nil && code != 0 && strings.Contains(errOut, noLeaderText)
	})

	recoverAt := time.Now()
	out, errOut, code := m1.Docker("swarm", "init", "--force-new-cluster")
	if code != 0 || !strings.Contains(out, "Swarm initialized: current node ("+c.ids["m1"]+") is now a manager.") {
		t.Fatalf("swarm init --force-new-cluster: exit %d, %q, %q", code, out, errOut)
	}
	t.Logf("force-new-cluster took %s", time.Since(recoverAt).Round(time.Millisecond))
	if got := strings.TrimSpace(m1.MustDocker("info", "--format", "{{.Swarm.Cluster.ID}}")); got != cid {
		t.Errorf("cluster ID after recovery %q, want %q", got, cid)
	}
	if got := strings.TrimSpace(m1.MustDocker("swarm", "join-token", "-q", "manager")); got != mtok {
		t.Errorf("manager token changed by the recovery")
	}
	if got := labObjects(m1); strings.Join(got, "\n") != strings.Join(before, "\n") {
		t.Errorf("objects after recovery:\n%s\nbefore:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
	// As in Swarm: the dropped managers stay listed, Down, with no
	// manager status; the survivor leads.
	waitNodes(t, m1, 60*time.Second, "the survivor leading, the dropped managers down with no manager status", func(st map[string]string) bool {
		return st[c.ids["m1"]] == "Leader|Ready" && st[c.ids["m2"]] == "|Down" && st[c.ids["m3"]] == "|Down"
	})

	// Writes work again, and the worker runs a new service's task with a
	// new secret.
	m1.MustDockerStdin("after-"+sfx, "secret", "create", sec2, "-")
	m1.MustDocker("service", "create", "-d", "--name", svc2, "--secret", sec2,
		"--constraint", "node.role==worker", "--stop-grace-period", "1s", img, "sleep", "3600")
	waitFor(t, 90*time.Second, "the new service's task running on the worker", func() bool {
		out := m1.MustDocker("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc2,
			"--filter", "label=com.docker.swarm.node.id="+c.ids["w1"])
		return strings.TrimSpace(out) != ""
	})
	if w1.running() {
		if _, _, code := w1.Docker("info"); code != 0 {
			t.Errorf("worker's hushd not answering after the recovery")
		}
	}

	// A dropped manager restarted from its old data stops with the
	// dropped text, and the recovered cluster keeps one member.
	m2.launch()
	waitFor(t, 60*time.Second, "the dropped manager stopping", func() bool { return !m2.running() })
	if b, _ := os.ReadFile(m2.LogPath); !strings.Contains(string(b), "was dropped from its swarm by `docker swarm init --force-new-cluster` on node "+c.ids["m1"]) {
		t.Errorf("the dropped manager's log lacks the dropped text:\n%s", tailFile(m2.LogPath, 30))
	}
	if _, _, code, err := tryDocker(m1, 30*time.Second, "v", "secret", "create", "after-drop-"+sfx, "-"); err != nil || code != 0 {
		t.Errorf("writes on the recovered cluster after the dropped manager's attempt: exit %d, %v", code, err)
	}

	// The cluster grows again: a fresh hushd on m3's host joins as a
	// manager with the same token.
	h := c.lab.host("m3")
	opt, _ := secretsDirAt(t)
	m4 := startHushd(t, withArgs("--engine", "unix://"+enginetest.Socket), opt, withNetns(h), withArgs("--no-init"), withListen(h.ip, labPort))
	remote := net.JoinHostPort(c.lab.host("m1").ip, fmt.Sprint(labPort))
	if out := m4.MustDocker("swarm", "join", "--token", mtok, remote); strings.TrimSpace(out) != "This node joined a swarm as a manager." {
		t.Fatalf("manager join after recovery: %q", out)
	}
	id4 := m4.nodeID()
	waitNodes(t, m1, 60*time.Second, "the new manager reachable", func(st map[string]string) bool {
		return st[c.ids["m1"]] == "Leader|Ready" && st[id4] == "Reachable|Ready"
	})
	if got := labObjects(m4); !strings.Contains(strings.Join(got, "\n"), " "+sec2) {
		t.Errorf("the new manager lacks the secret made after the recovery: %v", got)
	}
	t.Logf("TestClusterForceNew took %s", time.Since(began).Round(time.Second))
	// Stopping m4 would take the quorum of two: the services go first.
	removeServices()
}
