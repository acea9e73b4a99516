package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tests of issue 7's bounds: what a client or a workload controls must not
// crash hushd or grow its memory without bound, and node filters, node
// errors and TTY logs behave as on Swarm. Every object is named bnd_<run>.

// hushdAlive checks that hushd still answers its own API and has not
// exited.
func hushdAlive(t *testing.T, h *Hushd) {
	t.Helper()
	if !h.running() {
		t.Fatalf("hushd exited: %v\n%s", h.exitErr(), tailFile(h.LogPath, 50))
	}
	h.MustDocker("service", "ls")
	h.MustDocker("secret", "ls")
}

// hushdRSS is hushd's resident memory in bytes (from /proc).
func hushdRSS(t *testing.T, h *Hushd) int64 {
	t.Helper()
	h.mu.Lock()
	pid := h.cmd.Process.Pid
	h.mu.Unlock()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestBoundsRefusedHushdAlive: a billion replicas and an oversized spec
// are refused by name through the real CLI, nothing is stored, and hushd
// answers before and after a restart.
func TestBoundsRefusedHushdAlive(t *testing.T) {
	s := startSvcHushd(t)
	sfx := runSuffix(t)
	huge := "bnd_huge_" + sfx
	_, errOut, code := s.Docker("service", "create", "-d", "--name", huge, "--replicas", "1000000000", s.img, "true")
	if code == 0 || !strings.Contains(errOut, "invalid replica count 1000000000: hush runs at most 10000 replicas per service") {
		t.Fatalf("huge replica count: exit %d, stderr %q", code, errOut)
	}
	hushdAlive(t, s.Hushd)

	// 600 KiB of environment, in lines the CLI reads from a file (one
	// argument could not hold it).
	envFile := filepath.Join(t.TempDir(), "big.env")
	var env bytes.Buffer
	for i := range 500 {
		fmt.Fprintf(&env, "BND_%d=%s\n", i, strings.Repeat("x", 1200))
	}
	if err := os.WriteFile(envFile, env.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	big := "bnd_big_" + sfx
	_, errOut, code = s.Docker("service", "create", "-d", "--name", big, "--env-file", envFile, s.img, "true")
	if code == 0 || !strings.Contains(errOut, "more than hush's limit of 524288 bytes") {
		t.Fatalf("oversized spec: exit %d, stderr %q", code, errOut)
	}
	// Raw API: the same refusals are 400s.
	body := fmt.Sprintf(`{"Name":%q,"TaskTemplate":{"ContainerSpec":{"Image":%q}},"Mode":{"Replicated":{"Replicas":18446744073709551615}}}`, huge, s.img)
	if res := s.Raw("POST", "/v1.41/services/create", "application/json", []byte(body)); res.Status != 400 {
		t.Fatalf("raw huge create: %d %s", res.Status, res.Body)
	}
	// A scale beyond the bound is refused too, and the service unchanged.
	ok := "bnd_ok_" + sfx
	s.MustDocker(append([]string{"service", "create", "-d", "--name", ok, "--replicas", "0"}, svcArgs(s.img)...)...)
	_, errOut, code = s.Docker("service", "scale", "-d", ok+"=20000")
	if code == 0 || !strings.Contains(errOut, "hush runs at most 10000 replicas") {
		t.Fatalf("scale beyond the bound: exit %d, stderr %q", code, errOut)
	}
	check := func() {
		t.Helper()
		out := s.MustDocker("service", "ls", "--format", "{{.Name}} {{.Replicas}}", "--filter", "name=bnd_")
		if strings.TrimSpace(out) != ok+" 0/0" {
			t.Fatalf("services after refusals: %q", out)
		}
	}
	check()
	hushdAlive(t, s.Hushd)
	s.Restart()
	hushdAlive(t, s.Hushd)
	check()
}

// nodeSide runs the node commands of the comparison on one system and
// returns their normalised outputs.
func nodeSide(t *testing.T, cli *dockerCLI, label string) string {
	t.Helper()
	self := strings.TrimSpace(cli.MustDocker("info", "--format", "{{.Swarm.NodeID}}"))
	n := &normaliser{prefixes: []string{self[:8], self[:6], strings.ToUpper(self[:6])}}
	n.addID(self)
	run := func(args ...string) string {
		out, errOut, code := cli.Docker(args...)
		return fmt.Sprintf("$ docker %s\nexit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	cli.MustDocker("node", "update", "--label-add", label+"=1", self)
	t.Cleanup(func() { cli.Docker("node", "update", "--label-rm", label, self) })
	var b strings.Builder
	for _, args := range [][]string{
		{"node", "ls", "-q", "--filter", "role=worker"},
		{"node", "ls", "-q", "--filter", "role=manager"},
		{"node", "ls", "-q", "--filter", "role=Manager"},
		{"node", "ls", "-q", "--filter", "role=bogus"},
		{"node", "ls", "-q", "--filter", "membership=bogus"},
		{"node", "ls", "-q", "--filter", "foo=bar"},
		{"node", "ls", "-q", "--filter", "id=" + self[:6]},
		{"node", "ls", "-q", "--filter", "id=" + strings.ToUpper(self[:6])},
		{"node", "ls", "-q", "--filter", "node.label=" + label},
		{"node", "ls", "-q", "--filter", "node.label=" + label + "=1"},
		{"node", "ls", "-q", "--filter", "node.label=" + label + "=2"},
		// label matches the engine's labels, not the node's.
		{"node", "ls", "-q", "--filter", "label=" + label},
		{"node", "ls", "-q", "--filter", "role=manager", "--filter", "node.label=" + label},
		{"node", "rm", "foobar01"},
		{"node", "rm", "--force", "foobar01"},
		{"node", "inspect", "foobar01"},
		{"node", "rm", self},
		{"node", "rm", self[:8]},
	} {
		b.WriteString(run(args...))
	}
	return strings.ReplaceAll(n.norm(b.String()), label, "<LABEL>")
}

// TestBoundsNodesVsSwarm compares node filters and node errors with live
// Swarm through the real CLI.
func TestBoundsNodesVsSwarm(t *testing.T) {
	requireSwarm(t)
	h := startHushd(t)
	label := "bnd_" + runSuffix(t)
	want := nodeSide(t, swarmCLI(t), label)
	got := nodeSide(t, h.dockerCLI, label)
	if got != want {
		t.Fatalf("node commands differ from Swarm:\n%s", lineDiff(want, got))
	}
	// Membership is not compared: Swarm 20.10 reports a node as pending
	// once any `docker node update` went through its API (the API's node
	// spec has no membership, and the conversion resets it). hush's node
	// is accepted.
	self := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.NodeID}}"))
	if got := strings.TrimSpace(h.MustDocker("node", "ls", "-q", "--filter", "membership=accepted")); got != self {
		t.Fatalf("membership=accepted: %q", got)
	}
	if got := strings.TrimSpace(h.MustDocker("node", "ls", "-q", "--filter", "membership=pending")); got != "" {
		t.Fatalf("membership=pending: %q", got)
	}
}

// ttySide creates a --tty service printing known lines (and frame-like
// garbage), waits for its output through `service logs --raw`, and returns
// what the CLI printed with and without --raw.
func ttySide(t *testing.T, cli *dockerCLI, img, name string) string {
	t.Helper()
	t.Cleanup(func() { cli.Docker("service", "rm", name) })
	cli.MustDocker("service", "create", "-d", "--name", name, "--tty", "--stop-grace-period", "1s", img,
		"sh", "-c", `echo hello-tty; printf '\377\377\377\377garbage\n'; echo second; trap "exit 0" TERM; while :; do sleep 0.2; done`)
	var raw string
	waitFor(t, 60*time.Second, "the TTY service's output in service logs --raw", func() bool {
		out, _, code := cli.Docker("service", "logs", "--raw", name)
		raw = out
		return code == 0 && strings.Contains(out, "second")
	})
	_, plainErr, plainCode := cli.Docker("service", "logs", name)
	return fmt.Sprintf("--raw: %q\nwithout --raw: exit %d %q\n", raw, plainCode, plainErr)
}

// TestBoundsTTYLogsVsSwarm: `docker service logs --raw` of a --tty service
// prints what Swarm prints.
func TestBoundsTTYLogsVsSwarm(t *testing.T) {
	requireSwarm(t)
	s := startSvcHushd(t)
	sfx := runSuffix(t)
	want := ttySide(t, swarmCLI(t), s.img, "bnd_tty_"+sfx)
	got := ttySide(t, s.dockerCLI, s.img, "bnd_tty_"+sfx)
	if got != want {
		t.Fatalf("TTY service logs differ from Swarm:\nSwarm: %s\nhushd: %s", want, got)
	}
	t.Logf("both: %s", got)
	hushdAlive(t, s.Hushd)
}

// TestBoundsLogGarbage: a non-TTY workload printing bytes that spell a
// 4 GiB frame length, in bulk, is relayed without hushd's memory growing
// with it; hushd stays alive and answers.
func TestBoundsLogGarbage(t *testing.T) {
	s := startSvcHushd(t)
	name := "bnd_garbage_" + runSuffix(t)
	// About 8 MiB of 0xff, then a marker line.
	s.MustDocker("service", "create", "-d", "--name", name, "--stop-grace-period", "1s", s.img, "sh", "-c",
		`i=0; while [ $i -lt 2048 ]; do printf '\377\377\377\377%.0s' $(seq 1 1024); i=$((i+1)); done; echo; echo bnd-marker; trap "exit 0" TERM; while :; do sleep 0.2; done`)
	before := hushdRSS(t, s.Hushd)
	var out string
	waitFor(t, 120*time.Second, "the marker after the garbage in service logs", func() bool {
		o, _, code := s.Docker("service", "logs", "--raw", name)
		out = o
		return code == 0 && strings.Contains(o, "bnd-marker")
	})
	if len(out) < 4<<20 {
		t.Fatalf("service logs relayed only %d bytes of the garbage", len(out))
	}
	// Read it twice more, all of it, with timestamps and context.
	for range 2 {
		s.MustDocker("service", "logs", "--timestamps", name)
	}
	after := hushdRSS(t, s.Hushd)
	t.Logf("relayed %d bytes; hushd RSS %d -> %d bytes", len(out), before, after)
	hushdAlive(t, s.Hushd)
	// Memory: generous, but far below what parsing the bytes as frame
	// lengths (4 GiB per header) or buffering the output would take.
	if after-before > 256<<20 {
		t.Fatalf("hushd's resident memory grew from %d to %d bytes relaying logs", before, after)
	}
}

// TestBoundsStaleVersion409: a stale ?version= is the client's conflict:
// 409 with the text Swarm's CLI users see (Swarm itself answers 500), for
// every kind of object that takes a version.
func TestBoundsStaleVersion409(t *testing.T) {
	s := startSvcHushd(t)
	sfx := runSuffix(t)
	s.MustDockerStdin("x", "secret", "create", "bnd_sec_"+sfx, "-")
	s.MustDockerStdin("x", "config", "create", "bnd_cfg_"+sfx, "-")
	s.MustDocker(append([]string{"service", "create", "-d", "--name", "bnd_svc_" + sfx, "--replicas", "0"}, svcArgs(s.img)...)...)
	self := strings.TrimSpace(s.MustDocker("info", "--format", "{{.Swarm.NodeID}}"))
	const want = `{"message":"rpc error: code = Unknown desc = update out of sequence"}`
	for _, c := range []struct{ kind, ref, inspect, spec string }{
		{"secrets", "bnd_sec_" + sfx, "secret", "{{json .Spec}}"},
		{"configs", "bnd_cfg_" + sfx, "config", "{{json .Spec}}"},
		{"services", "bnd_svc_" + sfx, "service", "{{json .Spec}}"},
		{"nodes", self, "node", "{{json .Spec}}"},
		{"swarm", "", "", ""},
	} {
		var version, spec string
		if c.kind == "swarm" {
			res := s.Raw("GET", "/v1.41/swarm", "", nil)
			var sw struct {
				Version struct{ Index uint64 }
				Spec    json.RawMessage
			}
			if err := json.Unmarshal(res.Body, &sw); err != nil {
				t.Fatalf("GET /swarm: %v %s", err, res.Body)
			}
			version, spec = strconv.FormatUint(sw.Version.Index, 10), string(sw.Spec)
		} else {
			version = strings.TrimSpace(s.MustDocker(c.inspect, "inspect", "--format", "{{.Version.Index}}", c.ref))
			spec = strings.TrimSpace(s.MustDocker(c.inspect, "inspect", "--format", c.spec, c.ref))
		}
		n, err := strconv.ParseUint(version, 10, 64)
		if err != nil {
			t.Fatalf("%s version %q", c.kind, version)
		}
		path := "/v1.41/" + c.kind + "/" + c.ref + "/update?version=" + strconv.FormatUint(n-1, 10)
		if c.kind == "swarm" {
			path = "/v1.41/swarm/update?version=" + strconv.FormatUint(n-1, 10)
		}
		res := s.Raw("POST", path, "application/json", []byte(spec))
		if res.Status != 409 || strings.TrimSpace(string(res.Body)) != want {
			t.Errorf("%s: stale update answered %d %s, want 409 %s", c.kind, res.Status, res.Body, want)
		}
	}
}
