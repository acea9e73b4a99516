package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// TestClusterLeaveManager: `docker swarm leave --force` on a manager of
// three with the real docker CLI. The node leaves (Swarm's output,
// inactive), the other two keep writing, node ls lists it Unreachable and
// Down as Swarm does until it is demoted and removed, and it can join
// again.
func TestClusterLeaveManager(t *testing.T) {
	eng := withArgs("--engine", "unix://"+enginetest.Socket)
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	var hs []*Hushd
	var remote, mtok string
	for i, ip := range ips {
		port := freePortPair(t, ip)
		h := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(ip, port))
		if i == 0 {
			h.MustDocker("swarm", "init")
			remote = net.JoinHostPort(ip, fmt.Sprint(port))
			mtok = strings.TrimSpace(h.MustDocker("swarm", "join-token", "-q", "manager"))
		} else {
			h.MustDocker("swarm", "join", "--token", mtok, remote)
		}
		hs = append(hs, h)
	}
	h1, h2, h3 := hs[0], hs[1], hs[2]
	id1, id2, id3 := h1.nodeID(), h2.nodeID(), h3.nodeID()
	h1.waitStatus("three managers", oneLeaderRestReachable([]string{id1, id2, id3}))

	const warn = "You are attempting to leave the swarm on a node that is participating as a manager. "
	if _, stderr, code := h3.Docker("swarm", "leave"); code == 0 || !strings.Contains(stderr, warn) {
		t.Fatalf("leave without --force: exit %d, %q", code, stderr)
	}
	if out := strings.TrimSpace(h3.MustDocker("swarm", "leave", "--force")); out != "Node left the swarm." {
		t.Fatalf("swarm leave --force: %q", out)
	}
	if out := strings.TrimSpace(h3.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); out != "inactive" {
		t.Fatalf("state after leaving: %q", out)
	}
	// The two left keep their quorum: writes through either.
	sid := strings.TrimSpace(h1.MustDockerStdin("v1", "secret", "create", "e2e-leave-s1", "-"))
	h2.MustDockerStdin("v2", "secret", "create", "e2e-leave-s2", "-")
	if got := strings.TrimSpace(h2.MustDocker("secret", "inspect", "--format", "{{.ID}}", "e2e-leave-s1")); got != sid {
		t.Fatalf("secret created on node 1, on node 2: %q, want %q", got, sid)
	}
	for _, h := range []*Hushd{h1, h2} {
		h.waitStatus("the manager that left Unreachable Down", func(m map[string]string) bool {
			return m[id3] == "Unreachable Down" && len(m) == 3
		})
	}
	// Swarm's way out of the list: demote, then remove.
	if out := strings.TrimSpace(h1.MustDocker("node", "demote", id3)); out != "Manager "+id3+" demoted in the swarm." {
		t.Fatalf("node demote: %q", out)
	}
	// Down in its record once its presence lease has expired (as Swarm's
	// heartbeats), so that node rm needs no --force.
	waitFor(t, 60*time.Second, "the node that left recorded down", func() bool {
		out, _, code := h1.Docker("node", "inspect", "--format", "{{.Status.State}}", id3)
		return code == 0 && strings.TrimSpace(out) == "down"
	})
	if out := strings.TrimSpace(h1.MustDocker("node", "rm", id3)); out != id3 {
		t.Fatalf("node rm: %q", out)
	}
	h1.waitStatus("two managers", oneLeaderRestReachable([]string{id1, id2}))

	if out := strings.TrimSpace(h3.MustDocker("swarm", "join", "--token", mtok, remote)); out != "This node joined a swarm as a manager." {
		t.Fatalf("join again: %q", out)
	}
	for _, h := range []*Hushd{h1, h2} {
		h.waitStatus("three managers again", oneLeaderRestReachable([]string{id1, id2, id3}))
	}
	h3.MustDocker("secret", "inspect", "e2e-leave-s2")
}
