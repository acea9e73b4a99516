package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/testutil/etcdtest"
)

// TestExternalEtcd runs hushd on an etcd it does not own (an etcd server
// in this test process, https on loopback with client certificates):
// secrets through the docker CLI, a restart of hushd and of etcd, nothing
// of a secret's value or name in clear in etcd, and a leave that erases
// hush's keys and no one else's.
func TestExternalEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := raw.Put(ctx, "/users-own/config", "theirs"); err != nil {
		t.Fatal(err)
	}
	tlsArgs := []string{"--etcd-cacert", srv.CAFile, "--etcd-cert", srv.CertFile, "--etcd-key", srv.KeyFile}
	h := startHushd(t, withArgs(append([]string{"--engine", "", "--external-etcd", srv.Endpoint}, tlsArgs...)...))

	suffix := make([]byte, 8)
	_, _ = rand.Read(suffix)
	name := "ext-name-" + hex.EncodeToString(suffix)
	value := "ext-value-" + hex.EncodeToString(suffix) + "-padding-for-the-base64-forms"

	id := strings.TrimSpace(h.MustDockerStdin(value, "secret", "create", name, "-"))
	if out := h.MustDocker("secret", "ls", "--format", "{{.Name}}"); !strings.Contains(out, name) {
		t.Fatalf("secret ls: %q", out)
	}
	if out := h.MustDocker("secret", "inspect", "--format", "{{.ID}} {{.Spec.Name}}", name); strings.TrimSpace(out) != id+" "+name {
		t.Fatalf("secret inspect: %q", out)
	}

	// The only manager of its hush cluster: Leader, as a lone node; the
	// etcd members are not swarm nodes.
	if out := strings.TrimSpace(h.MustDocker("node", "ls", "--format", "{{.Self}} {{.ManagerStatus}}")); out != "true Leader" {
		t.Fatalf("node ls: %q", out)
	}

	h.Restart()
	if out := h.MustDocker("secret", "inspect", "--format", "{{.Spec.Name}}", id); strings.TrimSpace(out) != name {
		t.Fatalf("after a hushd restart: %q", out)
	}
	if _, err := os.Stat(filepath.Join(h.DataDir, "etcd")); !os.IsNotExist(err) {
		t.Fatalf("hushd made an embedded store beside the external one: %v", err)
	}

	// etcd itself going away: Swarm's no-leader answer, then service again.
	srv.Stop()
	_, stderr, code := h.Docker("secret", "ls")
	if code == 0 || !strings.Contains(stderr, "The swarm does not have a leader") {
		t.Fatalf("secret ls with etcd down: code %d, %q", code, stderr)
	}
	srv.Restart(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, stderr, code := h.Docker("secret", "ls", "--format", "{{.Name}}")
		if code == 0 && strings.Contains(out, name) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("secret ls after etcd came back: code %d, %q %q", code, out, stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// What the user's etcd holds: hush's keys under /hush/v1/, sealed.
	forms := canaryForms([]byte(value))
	for k, v := range canaryForms([]byte(name)) {
		forms["name "+k] = v
	}
	dump := srv.Dump(t)
	var hushKeys int
	for k, v := range dump {
		switch {
		case strings.HasPrefix(k, "/hush/v1/"):
			hushKeys++
		case k == "/users-own/config":
		default:
			t.Errorf("hush wrote outside /hush/v1/: %q", k)
		}
		scanForCanary(t, "etcd key", k, []byte(k), forms)
		scanForCanary(t, "etcd value of", k, v, forms)
	}
	if hushKeys == 0 {
		t.Fatal("no key of hush's in the external etcd")
	}

	h.MustDocker("secret", "rm", name)
	if out := h.MustDocker("secret", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("secret ls after rm: %q", out)
	}

	h.MustDocker("swarm", "leave", "--force")
	for k := range srv.Dump(t) {
		if k != "/users-own/config" {
			t.Errorf("left in etcd after swarm leave: %q", k)
		}
	}
}

// TestExternalEtcdFlagsRefused: hushd refuses bad combinations at once,
// by name, and exits 2 without touching its data dir.
func TestExternalEtcdFlagsRefused(t *testing.T) {
	requireHushd(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"http endpoint", []string{"--external-etcd", "http://127.0.0.1:2379", "--etcd-cacert", "a", "--etcd-cert", "b", "--etcd-key", "c"}, "scheme http refused, use https"},
		{"no TLS files", []string{"--external-etcd", "https://127.0.0.1:2379"}, "--external-etcd needs --etcd-cacert, --etcd-cert and --etcd-key"},
		{"TLS without endpoint", []string{"--etcd-cert", "b"}, "--etcd-cert needs --external-etcd"},
		{"missing CA file", []string{"--external-etcd", "https://127.0.0.1:2379", "--etcd-cacert", filepath.Join(dir, "missing.pem"), "--etcd-cert", "b", "--etcd-key", "c"}, "--etcd-cacert, --etcd-cert, --etcd-key: external etcd: CA file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			data := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			cmd := exec.CommandContext(ctx, hushdBin, append([]string{"--data-dir", data, "--socket", filepath.Join(data, "s.sock"), "--engine", ""}, tc.args...)...)
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
				t.Fatalf("got %v, %q; want exit 2 and %q", err, out, tc.want)
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Fatalf("data dir made: %v", err)
			}
		})
	}
}

// TestExternalEtcdManagers runs two hushd managers on 127.0.0.2 and
// 127.0.0.3 over one external etcd (same endpoints and prefix) with the
// docker CLI: the second joins with the manager token (no etcd membership
// change), both `node ls` agree on one Leader and the other Reachable, a
// secret written on one is read on the other, and after kill -9 of the
// leader writes go on through the other, which takes the election and
// shows the killed one Unreachable.
func TestExternalEtcdManagers(t *testing.T) {
	srv := etcdtest.Start(t)
	ext := withArgs("--engine", "", "--external-etcd", srv.Endpoint, "--external-etcd-prefix", "/e2e-team",
		"--etcd-cacert", srv.CAFile, "--etcd-cert", srv.CertFile, "--etcd-key", srv.KeyFile)
	ips := []string{"127.0.0.2", "127.0.0.3"}
	p1 := freePortPair(t, ips[0])
	h1 := startHushd(t, ext, withListen(ips[0], p1))
	h2 := startHushd(t, ext, withArgs("--no-init"), withListen(ips[1], freePortPair(t, ips[1])))
	all := []*Hushd{h1, h2}
	remote := net.JoinHostPort(ips[0], fmt.Sprint(p1))
	mtok := strings.TrimSpace(h1.MustDocker("swarm", "join-token", "-q", "manager"))
	if out := h2.MustDocker("swarm", "join", "--token", mtok, remote); strings.TrimSpace(out) != "This node joined a swarm as a manager." {
		t.Fatalf("swarm join: %q", out)
	}
	if _, err := os.Stat(filepath.Join(h2.DataDir, "etcd", "member")); !os.IsNotExist(err) {
		t.Fatalf("the joined manager runs an etcd member of its own: %v", err)
	}
	ids := []string{h1.nodeID(), h2.nodeID()}
	const format = "{{.ID}} {{.ManagerStatus}}"
	statuses := func(h *Hushd) map[string]string {
		out, _, code := h.Docker("node", "ls", "--format", format)
		m := map[string]string{}
		if code != 0 {
			return m
		}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 {
				m[f[0]] = f[1]
			}
		}
		return m
	}
	waitAll := func(what string, hs []*Hushd, want func(map[string]string) bool) map[string]string {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		var last map[string]string
		for time.Now().Before(deadline) {
			ok := true
			for _, h := range hs {
				if last = statuses(h); !want(last) {
					ok = false
					break
				}
			}
			if ok {
				return last
			}
			time.Sleep(300 * time.Millisecond)
		}
		t.Fatalf("node ls: %s not reached within 45s; last: %v", what, last)
		return nil
	}
	agreed := waitAll("one Leader, one Reachable, on both", all, func(m map[string]string) bool {
		return len(m) == 2 && (m[ids[0]] == "Leader" && m[ids[1]] == "Reachable" || m[ids[0]] == "Reachable" && m[ids[1]] == "Leader")
	})
	for _, h := range all {
		if got := statuses(h); got[ids[0]] != agreed[ids[0]] || got[ids[1]] != agreed[ids[1]] {
			t.Fatalf("the managers disagree: %v and %v", agreed, got)
		}
	}

	sid := strings.TrimSpace(h1.MustDockerStdin("ext-managers-value", "secret", "create", "e2e-ext-s1", "-"))
	if got := strings.TrimSpace(h2.MustDocker("secret", "inspect", "--format", "{{.ID}}", "e2e-ext-s1")); got != sid {
		t.Fatalf("secret created on manager 1 is %q on manager 2, want %q", got, sid)
	}

	leader := 0
	if agreed[ids[1]] == "Leader" {
		leader = 1
	}
	all[leader].Kill()
	other := all[1-leader]
	sid2 := strings.TrimSpace(other.MustDockerStdin("after-kill", "secret", "create", "e2e-ext-s2", "-"))
	if got := strings.TrimSpace(other.MustDocker("secret", "inspect", "--format", "{{.ID}}", "e2e-ext-s2")); got != sid2 {
		t.Fatalf("secret written after the kill: %q, want %q", got, sid2)
	}
	waitAll("the survivor leads, the killed one unreachable", []*Hushd{other}, func(m map[string]string) bool {
		return m[ids[1-leader]] == "Leader" && m[ids[leader]] == "Unreachable"
	})
}
