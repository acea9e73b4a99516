package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// withListen makes hushd a manager that others can join: its join/CA
// service on ip:port (etcd's peer port is port+1), advertised at ip.
func withListen(ip string, port int) hushdOption {
	return withArgs("--listen-addr", net.JoinHostPort(ip, fmt.Sprint(port)), "--advertise-addr", ip)
}

// withSecretsDir gives hushd its own tmpfs root (and its standalone
// sibling), removed when the test ends.
func withSecretsDir(t testing.TB) hushdOption {
	opt, _ := secretsDirAt(t)
	return opt
}

// secretsDirAt is withSecretsDir that also says where the directory is.
func secretsDirAt(t testing.TB) (hushdOption, string) {
	dir, err := os.MkdirTemp("", "hush-e2e-secrets-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range []string{dir, dir + ".containers"} {
			// A hushd killed with tasks running leaves their tmpfs here
			// (purgeNode unmounts only the default /run/hush root). This
			// runs after the hushd stopped; the directory is the test's own.
			mps := mountsUnder(t, d)
			for i := len(mps) - 1; i >= 0; i-- {
				if err := syscall.Unmount(mps[i], syscall.MNT_DETACH); err != nil {
					t.Logf("cleanup: unmount %s: %v", mps[i], err)
				}
			}
			if len(mountsUnder(t, d)) == 0 {
				_ = os.RemoveAll(d)
			}
		}
	})
	return withArgs("--secrets-dir", dir), dir
}

// freePortPair finds a port on ip whose successor is free too (the join
// service and etcd's peer port). Another process may take it before
// hushd binds it; the window is small and the failure loud.
func freePortPair(t testing.TB, ip string) int {
	t.Helper()
	for range 50 {
		l1, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatalf("listen on %s: %v", ip, err)
		}
		port := l1.Addr().(*net.TCPAddr).Port
		// port+1 is etcd's peer port, port+2 the dispatcher's.
		l2, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port+1)))
		var l3 net.Listener
		if err == nil {
			l3, err = net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port+2)))
			l2.Close()
		}
		l1.Close()
		if err == nil {
			l3.Close()
			return port
		}
	}
	t.Fatalf("no free pair of ports on %s", ip)
	return 0
}

// nodeID reads the node ID hushd made at its first start.
func (h *Hushd) nodeID() string {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.DataDir, "node.json"))
	if err != nil {
		h.t.Fatal(err)
	}
	var ns struct{ NodeID string }
	if err := json.Unmarshal(b, &ns); err != nil {
		h.t.Fatal(err)
	}
	return ns.NodeID
}

const nodeLsFormat = "{{.ID}} {{.ManagerStatus}} {{.Status}}"

// parseNodeLs reads `docker node ls --format nodeLsFormat` as node ID ->
// "MANAGER-STATUS STATUS".
func parseNodeLs(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 {
			m[f[0]] = f[1] + " " + f[2]
		}
	}
	return m
}

// managerStatus is `docker node ls` on h.
func (h *Hushd) managerStatus() map[string]string {
	h.t.Helper()
	return parseNodeLs(h.MustDocker("node", "ls", "--format", nodeLsFormat))
}

// waitStatus polls `docker node ls` on h (bounded) until want holds.
func (h *Hushd) waitStatus(what string, want func(map[string]string) bool) map[string]string {
	h.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last map[string]string
	for time.Now().Before(deadline) {
		if out, _, code := h.Docker("node", "ls", "--format", nodeLsFormat); code == 0 {
			if last = parseNodeLs(out); want(last) {
				return last
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	h.t.Fatalf("node ls on %s: %s not reached within 60s; last: %v", h.Socket, what, last)
	return nil
}

func oneLeaderRestReachable(ids []string) func(map[string]string) bool {
	return func(m map[string]string) bool {
		if len(m) != len(ids) {
			return false
		}
		leaders := 0
		for _, id := range ids {
			switch m[id] {
			case "Leader Ready":
				leaders++
			case "Reachable Ready":
			default:
				return false
			}
		}
		return leaders == 1
	}
}

// TestClusterJoinManagers forms a cluster of three hushd managers on three
// loopback addresses with the real docker CLI: join with Swarm's token
// checks, `node ls` everywhere, a secret written on one manager read on
// another, a write surviving kill -9 of the leader, and the leader
// rejoining after a restart.
func TestClusterJoinManagers(t *testing.T) {
	eng := withArgs("--engine", "unix://"+enginetest.Socket)
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	ports := make([]int, len(ips))
	for i, ip := range ips {
		ports[i] = freePortPair(t, ip)
	}
	// Node 1 takes its addresses from `docker swarm init`; nodes 2 and 3
	// from hushd's flags.
	h1 := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"))
	h2 := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(ips[1], ports[1]))
	h3 := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(ips[2], ports[2]))
	all := []*Hushd{h1, h2, h3}
	remote := net.JoinHostPort(ips[0], fmt.Sprint(ports[0]))

	out := h1.MustDocker("swarm", "init", "--listen-addr", remote, "--advertise-addr", ips[0])
	if !strings.Contains(out, "Swarm initialized") {
		t.Fatalf("swarm init: %q", out)
	}
	mtok := strings.TrimSpace(h1.MustDocker("swarm", "join-token", "-q", "manager"))

	// Refusals, each leaving node 2 out of any swarm.
	wrongSecret := mtok[:len(mtok)-25] + strings.Repeat("a", 25)
	wrongCA := "SWMTKN-1-" + strings.Repeat("0", 50) + mtok[len(mtok)-26:]
	for _, tc := range []struct{ name, token, want string }{
		{"wrong secret", wrongSecret, "A valid join token is necessary to join this cluster"},
		{"wrong CA digest", wrongCA, "remote CA does not match fingerprint. Expected: " + strings.Repeat("0", 64)},
		{"malformed", "SWMTKN-1-nope", "invalid join token"},
	} {
		_, stderr, code := h2.Docker("swarm", "join", "--token", tc.token, remote)
		if code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("join with a %s: exit %d, stderr %q; want the text %q", tc.name, code, stderr, tc.want)
		}
		if st := strings.TrimSpace(h2.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "inactive" {
			t.Fatalf("after a refused join (%s) node 2 is %q, want inactive", tc.name, st)
		}
	}

	for _, h := range []*Hushd{h2, h3} {
		out := h.MustDocker("swarm", "join", "--token", mtok, remote)
		if strings.TrimSpace(out) != "This node joined a swarm as a manager." {
			t.Fatalf("swarm join: %q", out)
		}
	}
	ids := []string{h1.nodeID(), h2.nodeID(), h3.nodeID()}
	for _, h := range all {
		h.waitStatus("3 managers, one Leader", oneLeaderRestReachable(ids))
	}
	if got := strings.TrimSpace(h3.MustDocker("info", "--format", "{{.Swarm.Managers}} {{.Swarm.Nodes}} {{len .Swarm.RemoteManagers}}")); got != "3 3 3" {
		t.Errorf("docker info on node 3: managers, nodes, remote managers = %q, want 3 3 3", got)
	}
	// Every manager serves the whole swarm API over the one store.
	sid := strings.TrimSpace(h2.MustDockerStdin("joined-value", "secret", "create", "e2e-join-s1", "-"))
	if got := strings.TrimSpace(h3.MustDocker("secret", "inspect", "--format", "{{.ID}}", "e2e-join-s1")); got != sid {
		t.Fatalf("secret created on node 2 is %q on node 3, want %q", got, sid)
	}

	// kill -9 the leader: a write through another manager succeeds once
	// the others have elected a new leader.
	st := h1.managerStatus()
	leader := -1
	for i, id := range ids {
		if st[id] == "Leader Ready" {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatalf("no leader in %v", st)
	}
	all[leader].Kill()
	other := all[(leader+1)%3]
	deadline := time.Now().Add(60 * time.Second)
	var lastErr string
	for {
		_, stderr, code := other.DockerStdin("after-failover", "secret", "create", "e2e-join-s2", "-")
		if code == 0 {
			break
		}
		lastErr = stderr
		if time.Now().After(deadline) {
			t.Fatalf("no write through a surviving manager within 60s of killing the leader; last: %s", lastErr)
		}
		time.Sleep(500 * time.Millisecond)
	}
	other.waitStatus("the killed manager Unreachable", func(m map[string]string) bool {
		return m[ids[leader]] == "Unreachable Down"
	})

	// Restarted, the old leader rejoins from its own data and catches up.
	all[leader].start()
	for _, h := range all {
		h.waitStatus("3 managers again, one Leader", oneLeaderRestReachable(ids))
	}
	all[leader].MustDocker("secret", "inspect", "e2e-join-s2")
}
