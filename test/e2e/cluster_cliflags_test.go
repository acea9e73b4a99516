package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// TestClusterSwarmCLIFlags drives `docker swarm init`'s and `docker swarm
// join`'s own address and availability flags through the real docker CLI
// against hushd nodes started with no address flags of their own (issue
// 9): the listen IP advertised when no --advertise-addr is given, a
// manager joining with --listen-addr/--advertise-addr/--availability, a
// worker joining paused, another naming an interface (lo) as its listen
// address, and the flags hush refuses by name (--data-path-addr, an
// advertise port other than the listen port, an address that is neither
// an IP nor an interface), each refusal leaving the node in no swarm. No containers: hushd runs without
// an engine.
func TestClusterSwarmCLIFlags(t *testing.T) {
	noEngine := withArgs("--engine", "", "--no-init")
	ipA, ipB, ipC := "127.0.0.21", "127.0.0.22", "127.0.0.23"
	portA, portB, portC := freePortPair(t, ipA), freePortPair(t, ipB), freePortPair(t, ipC)
	addrA := net.JoinHostPort(ipA, fmt.Sprint(portA))
	addrB := net.JoinHostPort(ipB, fmt.Sprint(portB))
	addrC := net.JoinHostPort(ipC, fmt.Sprint(portC))
	h1 := startHushd(t, noEngine, withSecretsDir(t))
	h2 := startHushd(t, noEngine, withSecretsDir(t))
	h3 := startHushd(t, noEngine, withSecretsDir(t))
	h4 := startHushd(t, noEngine, withSecretsDir(t))
	ref := newDockerCLI(t, enginetest.Socket)

	inactive := func(h *Hushd, after string) {
		t.Helper()
		if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "inactive" {
			t.Fatalf("after %s the node is %q, want inactive", after, st)
		}
	}
	refused := func(h *Hushd, what, want string, args ...string) {
		t.Helper()
		out, stderr, code := h.Docker(args...)
		if code == 0 || !strings.Contains(stderr, want) {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q; want it refused with %q", what, code, out, stderr, want)
		}
		inactive(h, what)
	}

	// Init with an advertise port other than the listen port: refused by
	// name, nothing initialised.
	badInitAdv := net.JoinHostPort(ipA, fmt.Sprint(portA+5))
	refused(h1, "init --advertise-addr with another port",
		fmt.Sprintf("AdvertiseAddr %s: hush advertises its listen port (%d)", badInitAdv, portA),
		"swarm", "init", "--listen-addr", addrA, "--advertise-addr", badInitAdv)

	// Init with --listen-addr only: the listen IP is advertised.
	if out := h1.MustDocker("swarm", "init", "--listen-addr", addrA); !strings.Contains(out, "Swarm initialized") {
		t.Fatalf("swarm init: %q", out)
	}
	// The reference shows the node's address as an IP (docker info's
	// NodeAddr and node inspect's Status.Addr) and the manager's as
	// IP:port; hush shows the same shapes.
	refAddr := strings.TrimSpace(ref.MustDocker("info", "--format", "{{.Swarm.NodeAddr}}"))
	refInspect := strings.TrimSpace(ref.MustDocker("node", "inspect", "self", "--format", "{{.Status.Addr}} {{.ManagerStatus.Addr}}"))
	if host, _, err := net.SplitHostPort(strings.TrimPrefix(refInspect, refAddr+" ")); err != nil || host != refAddr {
		t.Fatalf("reference: docker info NodeAddr %q, node inspect self %q: want the IP, then IP:port (%v)", refAddr, refInspect, err)
	}
	if got := strings.TrimSpace(h1.MustDocker("info", "--format", "{{.Swarm.NodeAddr}}")); got != ipA {
		t.Errorf("docker info NodeAddr after init --listen-addr %s: %q, want %s", addrA, got, ipA)
	}
	if got := strings.TrimSpace(h1.MustDocker("node", "inspect", "self", "--format", "{{.Status.Addr}} {{.ManagerStatus.Addr}}")); got != ipA+" "+addrA {
		t.Errorf("node inspect self after init --listen-addr %s: %q, want %q", addrA, got, ipA+" "+addrA)
	}
	mtok := strings.TrimSpace(h1.MustDocker("swarm", "join-token", "-q", "manager"))
	wtok := strings.TrimSpace(h1.MustDocker("swarm", "join-token", "-q", "worker"))
	if cmd := h1.MustDocker("swarm", "join-token", "manager"); !strings.Contains(cmd, "docker swarm join --token "+mtok+" "+addrA+"\n") {
		t.Errorf("swarm join-token manager does not print the join command for %s:\n%s", addrA, cmd)
	}

	// The CLI's own availability check: the same text against hushd as
	// against the reference (nothing is sent to either).
	_, refErr, refCode := ref.Docker("swarm", "join", "--token", wtok, "--availability", "sleep", addrA)
	_, hushErr, hushCode := h2.Docker("swarm", "join", "--token", wtok, "--availability", "sleep", addrA)
	if refCode == 0 || hushCode == 0 || hushErr != refErr {
		t.Errorf("join --availability sleep: hush exit %d %q, reference exit %d %q; want the same refusal", hushCode, hushErr, refCode, refErr)
	}
	inactive(h2, "join --availability sleep")

	// Refused by name, before anything is admitted.
	refused(h2, "join --data-path-addr", "DataPathAddr is not supported by hush: it runs no overlay data path",
		"swarm", "join", "--token", mtok, "--listen-addr", addrB, "--data-path-addr", ipC, addrA)
	badAdv := net.JoinHostPort(ipB, fmt.Sprint(portB+7))
	refused(h2, "join --advertise-addr with another port",
		fmt.Sprintf("AdvertiseAddr %s: hush advertises its listen port (%d)", badAdv, portB),
		"swarm", "join", "--token", mtok, "--listen-addr", addrB, "--advertise-addr", badAdv, addrA)

	// An address that is neither an IP nor an interface: Swarm's texts.
	refused(h2, "join --listen-addr naming no interface",
		"listen address must be an IP address or network interface (with optional port number)",
		"swarm", "join", "--token", mtok, "--listen-addr", fmt.Sprintf("nosuchif0:%d", portB), addrA)
	refused(h2, "join --advertise-addr naming no interface",
		"advertise address must be a non-zero IP address or network interface (with optional port number)",
		"swarm", "join", "--token", mtok, "--listen-addr", addrB, "--advertise-addr", "nosuchif0", addrA)

	// A manager joins with its own flags, drained from the start.
	out := h2.MustDocker("swarm", "join", "--token", mtok, "--listen-addr", addrB, "--advertise-addr", ipB, "--availability", "drain", addrA)
	if strings.TrimSpace(out) != "This node joined a swarm as a manager." {
		t.Fatalf("manager join: %q", out)
	}
	id1, id2 := h1.nodeID(), h2.nodeID()
	// Reachable: node 2's etcd member is a voting member at the address
	// it was told (which an advertised 127.0.0.1 would not have been).
	for _, h := range []*Hushd{h1, h2} {
		h.waitStatus("2 managers, one Leader", oneLeaderRestReachable([]string{id1, id2}))
	}
	if got := strings.TrimSpace(h1.MustDocker("node", "inspect", id2, "--format", "{{.Spec.Availability}} {{.Status.Addr}} {{.ManagerStatus.Addr}}")); got != "drain "+ipB+" "+addrB {
		t.Errorf("node inspect of the joined manager: %q, want %q", got, "drain "+ipB+" "+addrB)
	}
	if got := strings.TrimSpace(h2.MustDocker("info", "--format", "{{.Swarm.NodeAddr}} {{.Swarm.ControlAvailable}}")); got != ipB+" true" {
		t.Errorf("docker info on the joined manager: %q, want %q", got, ipB+" true")
	}

	// A worker joins paused through the second manager, with a listen
	// address and no advertise address: it is recorded at its listen IP.
	out = h3.MustDocker("swarm", "join", "--token", wtok, "--listen-addr", addrC, "--availability", "pause", addrB)
	if strings.TrimSpace(out) != "This node joined a swarm as a worker." {
		t.Fatalf("worker join: %q", out)
	}
	id3 := h3.nodeID()
	// An interface's name is its address, as for init: the worker
	// listens on lo's one IPv4 address and is recorded there.
	portL := freePortPair(t, "127.0.0.1")
	out = h4.MustDocker("swarm", "join", "--token", wtok, "--listen-addr", fmt.Sprintf("lo:%d", portL), addrA)
	if strings.TrimSpace(out) != "This node joined a swarm as a worker." {
		t.Fatalf("worker join --listen-addr lo:%d: %q", portL, out)
	}
	id4 := h4.nodeID()
	if got := strings.TrimSpace(h1.MustDocker("node", "inspect", id4, "--format", "{{.Status.Addr}}")); got != "127.0.0.1" {
		t.Errorf("node inspect of the worker joined with --listen-addr lo:%d: %q, want 127.0.0.1", portL, got)
	}
	if got := strings.TrimSpace(h1.MustDocker("node", "inspect", id3, "--format", "{{.Spec.Role}} {{.Spec.Availability}} {{.Status.Addr}}")); got != "worker pause "+ipC {
		t.Errorf("node inspect of the joined worker: %q, want %q", got, "worker pause "+ipC)
	}
	avail := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(h1.MustDocker("node", "ls", "--format", "{{.ID}} {{.Availability}}")), "\n") {
		if f := strings.Fields(l); len(f) == 2 {
			avail[f[0]] = f[1]
		}
	}
	if want := map[string]string{id1: "Active", id2: "Drain", id3: "Pause", id4: "Active"}; fmt.Sprint(avail) != fmt.Sprint(want) {
		t.Errorf("node ls availabilities: %v, want %v", avail, want)
	}
}
