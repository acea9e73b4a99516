package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
	"github.com/moby/moby/api/types/swarm"
)

// The multi-host fixture: each hushd runs in a network namespace of its
// own ("host"), wired by a veth pair to one bridge. The bridge lives in a
// namespace of its own too ("switch"), not in the root namespace: this
// machine (and CI's) loads br_netfilter with the root namespace's FORWARD
// policy at Docker's DROP, which would drop bridged frames; a fresh
// namespace's firewall is empty and accepts, and nothing of the host's
// firewall or routing is touched. hushd enters only the network namespace
// (nsenter --net), so it shares the mount namespace with the engine: the
// tmpfs mounts it makes for tasks are the ones the engine bind-mounts, and
// its unix socket is reachable from the root namespace. Every name carries
// a per-run random part; removing the namespaces removes the veths and the
// bridge with them.

const (
	// labPort is every node's --listen-addr port: each node has a network
	// stack of its own, so all can use Swarm's port (etcd's peer port is
	// labPort+1, the dispatcher's labPort+2).
	labPort = 2377
	// labCmdTimeout bounds every ip/nsenter/tcpdump command.
	labCmdTimeout = 20 * time.Second
)

// netLab is a set of network namespaces on one bridge.
type netLab struct {
	t      testing.TB
	prefix string // hush-<random>
	subnet string // "10.231.N."
	sw     string // the switch namespace, holding bridge br0
	hosts  []*labHost
}

// labHost is one namespace: its name, its address on the bridge, and the
// name of its veth's end on the switch side.
type labHost struct {
	name, ns, ip, swPort string
}

// requireNetLab skips when the machine cannot make network namespaces
// (not root, no iproute2 or nsenter) unless CI=true, which fails instead.
func requireNetLab(t testing.TB) {
	t.Helper()
	why := ""
	switch {
	case os.Geteuid() != 0:
		why = "not root"
	default:
		for _, bin := range []string{"ip", "nsenter"} {
			if _, err := exec.LookPath(bin); err != nil {
				why = bin + " not found"
			}
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("network namespace fixture: %s (CI=true)", why)
	}
	t.Skipf("network namespace fixture: %s", why)
}

// labRun runs a command, bounded in time, and fails the test unless it
// exits 0.
func labRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := labTry(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func labTry(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), labCmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// newNetLab makes the switch namespace with its bridge and one namespace
// per name, each with an address 10.231.N.(10+i)/24; all is removed when
// the test ends (after the hushds it registers later are stopped:
// cleanups run last-registered first).
func newNetLab(t testing.TB, names ...string) *netLab {
	t.Helper()
	requireNetLab(t)
	r := randHex(t, 3)
	l := &netLab{t: t, prefix: "hush-" + r[:4]}
	// The subnet exists only inside the lab's namespaces; varying it per
	// run keeps two concurrent runs' captures apart when read by hand.
	var n int
	fmt.Sscanf(r[4:], "%x", &n)
	l.subnet = fmt.Sprintf("10.231.%d.", n)
	l.sw = l.prefix + "-sw"
	t.Cleanup(l.remove)
	labRun(t, "ip", "netns", "add", l.sw)
	labRun(t, "ip", "-n", l.sw, "link", "add", "br0", "type", "bridge")
	labRun(t, "ip", "-n", l.sw, "link", "set", "br0", "up")
	labRun(t, "ip", "-n", l.sw, "link", "set", "lo", "up")
	for i, name := range names {
		h := &labHost{name: name, ns: l.prefix + "-" + name, ip: fmt.Sprintf("%s%d", l.subnet, 10+i), swPort: "p-" + name}
		l.hosts = append(l.hosts, h)
		labRun(t, "ip", "netns", "add", h.ns)
		labRun(t, "ip", "-n", l.sw, "link", "add", h.swPort, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
		labRun(t, "ip", "-n", l.sw, "link", "set", h.swPort, "master", "br0")
		labRun(t, "ip", "-n", l.sw, "link", "set", h.swPort, "up")
		labRun(t, "ip", "-n", h.ns, "addr", "add", h.ip+"/24", "dev", "eth0")
		labRun(t, "ip", "-n", h.ns, "link", "set", "eth0", "up")
		labRun(t, "ip", "-n", h.ns, "link", "set", "lo", "up")
	}
	return l
}

// remove deletes every namespace the lab made (their veths and the bridge
// go with them).
func (l *netLab) remove() {
	for _, h := range l.hosts {
		if out, err := labTry("ip", "netns", "del", h.ns); err != nil {
			l.t.Errorf("cleanup: ip netns del %s: %v %s", h.ns, err, out)
		}
	}
	if out, err := labTry("ip", "netns", "del", l.sw); err != nil {
		l.t.Errorf("cleanup: ip netns del %s: %v %s", l.sw, err, out)
	}
}

func (l *netLab) host(name string) *labHost {
	for _, h := range l.hosts {
		if h.name == name {
			return h
		}
	}
	l.t.Fatalf("no lab host %q", name)
	return nil
}

// cut takes the host's port on the switch down: the host sees no peer,
// the others see it vanish (no reset, no FIN: a real partition).
func (l *netLab) cut(name string) {
	l.t.Helper()
	labRun(l.t, "ip", "-n", l.sw, "link", "set", l.host(name).swPort, "down")
}

// heal brings the host's port up again.
func (l *netLab) heal(name string) {
	l.t.Helper()
	labRun(l.t, "ip", "-n", l.sw, "link", "set", l.host(name).swPort, "up")
}

// withNetns starts hushd inside the host's network namespace only.
func withNetns(h *labHost) hushdOption {
	return func(hd *Hushd) { hd.wrap = []string{"nsenter", "--net=/run/netns/" + h.ns, "--"} }
}

// lockedBuffer is an io.Writer safe to read while a command writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// capture records the packets on every port of the switch (all traffic
// between the lab's hosts: a bridge device itself sees only what is
// addressed to it) into a pcap file until stop is called; stop returns the
// file's bytes.
func (l *netLab) capture(t testing.TB) (stop func() []byte) {
	t.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("tcpdump not found (CI=true: .ci/run installs it)")
		}
		t.Skip("tcpdump not found")
	}
	path := t.TempDir() + "/bridge.pcap"
	// -U writes each packet as it comes, -s 0 whole frames, -n no lookups.
	cmd := exec.Command("nsenter", "--net=/run/netns/"+l.sw, "--", "tcpdump", "-i", "any", "-n", "-s", "0", "-U", "-w", path)
	var errOut lockedBuffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stopFn := func() []byte {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-done:
			case <-time.After(labCmdTimeout):
				_ = cmd.Process.Kill()
				<-done
			}
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("reading the capture: %v (tcpdump: %s)", err, errOut.String())
		}
		return b
	}
	t.Cleanup(func() { stopFn() })
	// tcpdump says "listening on br0" once it captures.
	deadline := time.Now().Add(labCmdTimeout)
	for !strings.Contains(errOut.String(), "listening on") {
		select {
		case err := <-done:
			t.Fatalf("tcpdump exited: %v: %s", err, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tcpdump not capturing within %s: %s", labCmdTimeout, errOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return stopFn
}

// ---- the shared cluster ----

// labCluster is three managers and one worker, each hushd in its own
// namespace with its own data dir and secrets dir, all driving the host's
// engine.
type labCluster struct {
	lab      *netLab
	managers []*Hushd // m1, m2, m3
	worker   *Hushd   // w1
	// secretsDir is each node's tmpfs root, by node name.
	secretsDir map[string]string
	// byName maps the lab host name to its hushd.
	byName map[string]*Hushd
	ids    map[string]string // lab host name -> node ID
}

// Cluster timing for a loaded 2-core machine: heartbeats every 3 s (a node
// is down after about three missed ones), and etcd's heartbeat 300 ms and
// election timeout 3 s (Swarm's default ticks give 100 ms and 1 s, on
// which a loaded machine sees spurious elections). etcd reads its timing
// at start only, and a manager's first start as a member already uses the
// spec's (enterMemberLocked): so the spec m1 inits carries it (labInit),
// and checkRaftTiming asserts every member runs on it.
const (
	labDispatcherHeartbeat = "3s"
	labRaftHeartbeatTick   = 3
	labRaftElectionTick    = 30
)

func newLabCluster(t *testing.T) *labCluster {
	t.Helper()
	requireHushd(t)
	requireDockerCLI(t)
	lab := newNetLab(t, "m1", "m2", "m3", "w1")
	c := &labCluster{lab: lab, secretsDir: map[string]string{}, byName: map[string]*Hushd{}, ids: map[string]string{}}
	eng := withArgs("--engine", "unix://"+enginetest.Socket)
	start := func(name string, extra ...hushdOption) *Hushd {
		h := lab.host(name)
		opt, dir := secretsDirAt(t)
		c.secretsDir[name] = dir
		opts := append([]hushdOption{eng, opt, withNetns(h), withArgs("--no-init")}, extra...)
		hd := startHushd(t, opts...)
		c.byName[name] = hd
		return hd
	}
	for _, name := range []string{"m1", "m2", "m3"} {
		c.managers = append(c.managers, start(name, withListen(lab.host(name).ip, labPort)))
	}
	m1 := c.managers[0]
	labInit(t, m1)
	remote := net.JoinHostPort(lab.host("m1").ip, fmt.Sprint(labPort))
	mtok := strings.TrimSpace(m1.MustDocker("swarm", "join-token", "-q", "manager"))
	wtok := strings.TrimSpace(m1.MustDocker("swarm", "join-token", "-q", "worker"))
	for _, m := range c.managers[1:] {
		if out := m.MustDocker("swarm", "join", "--token", mtok, remote); strings.TrimSpace(out) != "This node joined a swarm as a manager." {
			t.Fatalf("swarm join: %q", out)
		}
	}
	c.worker = start("w1", withArgs("--advertise-addr", lab.host("w1").ip))
	if out := c.worker.MustDocker("swarm", "join", "--token", wtok, remote); strings.TrimSpace(out) != "This node joined a swarm as a worker." {
		t.Fatalf("swarm join: %q", out)
	}
	for name, h := range c.byName {
		c.ids[name] = h.nodeID()
	}
	// Torn down with kill -9 (this cleanup runs before startHushd's
	// SIGTERM ones, which then find nothing running): whichever manager
	// stops last has no quorum, and its SIGTERM has been seen to take
	// longer than the helper's 20 s (reported; not what these tests test).
	t.Cleanup(c.killAll)
	c.waitHealthy(t)
	c.checkRaftTiming(t)
	return c
}

// checkRaftTiming fails t unless every manager's etcd member runs on the
// lab's raft timing now (its last start's log line, which hushd writes
// as the member starts, says so): a member on Swarm's default 100 ms /
// 1 s would call spurious elections on a loaded machine.
func (c *labCluster) checkRaftTiming(t testing.TB) {
	t.Helper()
	want := fmt.Sprintf("heartbeat=%s electionTimeout=%s", time.Duration(labRaftHeartbeatTick)*100*time.Millisecond,
		time.Duration(labRaftElectionTick)*100*time.Millisecond)
	for i, m := range c.managers {
		if got := lastRaftTiming(t, m); got != want {
			t.Errorf("m%d's etcd member runs on %q, want %q", i+1, got, want)
		}
	}
}

// lastRaftTiming is the timing in the last "etcd member raft timing" line
// of h's log ("" if none).
func lastRaftTiming(t testing.TB, h *Hushd) string {
	t.Helper()
	b, err := os.ReadFile(h.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	got := ""
	for _, l := range strings.Split(string(b), "\n") {
		if _, rest, ok := strings.Cut(l, `msg="etcd member raft timing" `); ok {
			got = strings.TrimSpace(rest)
		}
	}
	return got
}

// labInit makes m the first manager with the lab's timing in the spec it
// inits: its etcd member starts on that raft timing, and each manager it
// admits is sent it (enterMemberLocked), so no member runs on Swarm's
// default 100 ms / 1 s until a restart. Through the API: the CLI has no
// flag for the raft ticks.
func labInit(t testing.TB, m *Hushd) {
	t.Helper()
	hb, err := time.ParseDuration(labDispatcherHeartbeat)
	if err != nil {
		t.Fatal(err)
	}
	req := swarm.InitRequest{
		ListenAddr:   "0.0.0.0:2377", // the CLI's default: hushd's --listen-addr decides
		Availability: swarm.NodeAvailabilityActive,
		Spec: swarm.Spec{
			Dispatcher: swarm.DispatcherConfig{HeartbeatPeriod: hb},
			Raft:       swarm.RaftConfig{HeartbeatTick: labRaftHeartbeatTick, ElectionTick: labRaftElectionTick},
		},
	}
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if res := m.Raw("POST", "/swarm/init", "application/json", body); res.Status != 200 {
		t.Fatalf("POST /swarm/init: %d %s", res.Status, res.Body)
	}
}

// bind makes every hushd of the cluster report to t (a subtest) until t
// ends: a helper's Fatal must end the subtest that called it, not its
// parent.
func (c *labCluster) bind(t *testing.T) {
	for _, h := range c.byName {
		prev := h.t
		h.t, h.dockerCLI.t = t, t
		t.Cleanup(func() { h.t, h.dockerCLI.t = prev, prev })
	}
}

// managerIDs is the managers' node IDs, in m1..m3 order.
func (c *labCluster) managerIDs() []string {
	return []string{c.ids["m1"], c.ids["m2"], c.ids["m3"]}
}

// nodeStates is `docker node ls` on h as node ID -> "MANAGER-STATUS|STATUS"
// (a worker's manager status is empty); ok is false when the CLI failed.
func nodeStates(h *Hushd) (map[string]string, bool) {
	out, _, code := h.Docker("node", "ls", "--format", "{{.ID}}|{{.ManagerStatus}}|{{.Status}}")
	if code != 0 {
		return nil, false
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if id, rest, ok := strings.Cut(l, "|"); ok {
			m[id] = rest
		}
	}
	return m, true
}

// waitNodes polls `docker node ls` on h (bounded) until want holds.
func waitNodes(t testing.TB, h *Hushd, timeout time.Duration, what string, want func(map[string]string) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last map[string]string
	for {
		st, ok := nodeStates(h)
		if ok {
			last = st
			if want(st) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node ls on %s: %s not reached within %s; last: %v", h.Socket, what, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// healthy: the three managers, one of them Leader, the others Reachable,
// all Ready, and the worker Ready (liveness is shared through the store,
// so every manager must see the same).
func (c *labCluster) healthy(st map[string]string) bool {
	leaders := 0
	for _, id := range c.managerIDs() {
		switch st[id] {
		case "Leader|Ready":
			leaders++
		case "Reachable|Ready":
		default:
			return false
		}
	}
	return leaders == 1 && len(st) == 4 && st[c.ids["w1"]] == "|Ready"
}

// waitHealthy waits (bounded) until every manager sees the cluster healthy.
func (c *labCluster) waitHealthy(t testing.TB) {
	t.Helper()
	for _, m := range c.managers {
		waitNodes(t, m, 90*time.Second, "3 managers, one leader, the worker Ready", c.healthy)
	}
}

// leader returns the name of the manager that m1..m3 (the first that
// answers) calls Leader, waiting (bounded) for one.
func (c *labCluster) leader(t testing.TB) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range c.managers {
			if !m.running() {
				continue
			}
			st, ok := nodeStates(m)
			if !ok {
				continue
			}
			for _, n := range []string{"m1", "m2", "m3"} {
				if st[c.ids[n]] == "Leader|Ready" {
					return n
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatal("no manager reports a leader within 60s")
	return ""
}
