package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// TestClusterRoles changes roles with the real docker CLI: a worker that
// joined with a listen address is promoted (every manager lists it
// Reachable, and a secret written through it is read elsewhere); a
// demotion that would lose the quorum (one of three managers down) is
// refused with Swarm's text; the promoted node demotes itself through its
// own socket, as Swarm allows; and demoting the last manager is refused.
func TestClusterRoles(t *testing.T) {
	eng := withArgs("--engine", "unix://"+enginetest.Socket)
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	ports := make([]int, len(ips))
	for i, ip := range ips {
		ports[i] = freePortPair(t, ip)
	}
	h1 := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(ips[0], ports[0]))
	h1.MustDocker("swarm", "init")
	remote := net.JoinHostPort(ips[0], fmt.Sprint(ports[0]))
	mtok := strings.TrimSpace(h1.MustDocker("swarm", "join-token", "-q", "manager"))
	wtok := strings.TrimSpace(h1.MustDocker("swarm", "join-token", "-q", "worker"))
	h2 := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(ips[1], ports[1]))
	h2.MustDocker("swarm", "join", "--token", mtok, remote)
	w := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(ips[2], ports[2]))
	if out := strings.TrimSpace(w.MustDocker("swarm", "join", "--token", wtok, remote)); out != "This node joined a swarm as a worker." {
		t.Fatalf("worker join: %q", out)
	}
	id1, id2, wid := h1.nodeID(), h2.nodeID(), w.nodeID()
	all := []string{id1, id2, wid}

	if out := strings.TrimSpace(h1.MustDocker("node", "promote", wid)); out != "Node "+wid+" promoted to a manager in the swarm." {
		t.Fatalf("node promote: %q", out)
	}
	for _, h := range []*Hushd{h1, h2} {
		h.waitStatus("the promoted worker Reachable", oneLeaderRestReachable(all))
	}
	waitFor(t, 60*time.Second, "the promoted node serves the swarm API", func() bool {
		out, _, code := w.Docker("info", "--format", "{{.Swarm.ControlAvailable}}")
		return code == 0 && strings.TrimSpace(out) == "true"
	})
	sid := strings.TrimSpace(w.MustDockerStdin("promoted-value", "secret", "create", "e2e-roles-s1", "-"))
	if got := strings.TrimSpace(h2.MustDocker("secret", "inspect", "--format", "{{.ID}}", "e2e-roles-s1")); got != sid {
		t.Fatalf("secret created through the promoted node: %q on another manager, want %q", got, sid)
	}

	// One of three down: demoting a reachable manager would leave one of
	// two voters up.
	h2.Kill()
	h1.waitStatus("node 2 Unreachable", func(m map[string]string) bool { return m[id2] == "Unreachable Down" })
	const quorumMsg = "can't remove member from the raft: this would result in a loss of quorum"
	if _, stderr, code := w.Docker("node", "demote", id1); code == 0 || !strings.Contains(stderr, quorumMsg) {
		t.Fatalf("quorum-losing demotion: exit %d, %q; want %q", code, stderr, quorumMsg)
	}
	h2.Restart()
	h1.waitStatus("all three Reachable again", oneLeaderRestReachable(all))

	// Demoting the node the CLI talks to.
	if out := strings.TrimSpace(w.MustDocker("node", "demote", wid)); out != "Manager "+wid+" demoted in the swarm." {
		t.Fatalf("node demote: %q", out)
	}
	// A worker has no manager status (parseNodeLs leaves it out).
	h1.waitStatus("the demoted node no longer a manager", oneLeaderRestReachable([]string{id1, id2}))
	waitFor(t, 60*time.Second, "the demoted node a worker", func() bool {
		out, _, code := w.Docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}")
		return code == 0 && strings.TrimSpace(out) == "active false"
	})
	h1.MustDocker("secret", "inspect", "e2e-roles-s1")

	h1.MustDocker("node", "demote", id2)
	waitFor(t, 60*time.Second, "node 2 a worker", func() bool {
		out, _, code := h2.Docker("info", "--format", "{{.Swarm.ControlAvailable}}")
		return code == 0 && strings.TrimSpace(out) == "false"
	})
	const lastMsg = "attempting to demote the last manager of the swarm"
	if _, stderr, code := h1.Docker("node", "demote", id1); code == 0 || !strings.Contains(stderr, lastMsg) {
		t.Fatalf("demoting the last manager: exit %d, %q; want %q", code, stderr, lastMsg)
	}
}
