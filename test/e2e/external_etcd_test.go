package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	_, stderr, code = h.Docker("swarm", "join", "--token", "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx", "127.0.0.1:2377")
	if code == 0 || !strings.Contains(stderr, "joining a swarm is not supported by a hushd started with --external-etcd") {
		t.Fatalf("swarm join: code %d, %q", code, stderr)
	}
	_, stderr, code = h.Docker("swarm", "init", "--listen-addr", "127.0.0.1:4567")
	if code == 0 || !strings.Contains(stderr, "--listen-addr is not supported with --external-etcd") {
		t.Fatalf("swarm init --listen-addr: code %d, %q", code, stderr)
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
		{"with listen-addr", []string{"--external-etcd", "https://127.0.0.1:2379", "--etcd-cacert", "a", "--etcd-cert", "b", "--etcd-key", "c", "--listen-addr", "127.0.0.1:4567"}, "--listen-addr is not supported with --external-etcd"},
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
