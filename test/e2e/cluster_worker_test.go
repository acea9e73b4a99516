package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// A hushd joining with the worker token becomes a worker: the CLI says so,
// the manager lists it without manager status, the worker answers swarm
// calls with Swarm's not-a-manager text while passing engine calls
// through, and a restart resumes worker mode.
func TestClusterJoinWorker(t *testing.T) {
	eng := withArgs("--engine", "unix://"+enginetest.Socket)
	mip, wip := "127.0.0.2", "127.0.0.5"
	port := freePortPair(t, mip)
	m := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(mip, port))
	remote := net.JoinHostPort(mip, fmt.Sprint(port))
	m.MustDocker("swarm", "init")
	wtok := strings.TrimSpace(m.MustDocker("swarm", "join-token", "-q", "worker"))

	w := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init", "--advertise-addr", wip))
	out := w.MustDocker("swarm", "join", "--token", wtok, remote)
	if strings.TrimSpace(out) != "This node joined a swarm as a worker." {
		t.Fatalf("swarm join: %q", out)
	}
	wid := w.nodeID()
	ls := m.MustDocker("node", "ls", "--format", "{{.ID}} {{.ManagerStatus}}|")
	if !strings.Contains(ls, wid+" |") {
		t.Fatalf("node ls on the manager does not list worker %s without manager status: %q", wid, ls)
	}
	check := func() {
		t.Helper()
		const want = `This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this node to swarm and try again.`
		_, stderr, code := w.Docker("service", "ls")
		if code == 0 || !strings.Contains(stderr, want) {
			t.Fatalf("service ls on the worker: exit %d, %q", code, stderr)
		}
		if st := strings.TrimSpace(w.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}")); st != "active false" {
			t.Fatalf("worker info: %q", st)
		}
		// The engine pass-through still serves.
		w.MustDocker("image", "ls", "-q")
	}
	check()
	w.Restart()
	check()
}
