package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// TestConfigsCLI covers docker config create/ls/inspect/rm and delivery of a
// config to a service with a custom target, owner and mode.
func TestConfigsCLI(t *testing.T) {
	img := enginetest.BusyboxImage(t)
	h := startHushd(t)
	file := filepath.Join(t.TempDir(), "app.conf")
	if err := os.WriteFile(file, []byte("listen=8080\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(h.MustDocker("config", "create", "--label", "team=web", "app_conf", file))
	if got := h.MustDocker("config", "ls", "--format", "{{.ID}} {{.Name}}"); strings.TrimSpace(got) != id+" app_conf" {
		t.Fatalf("config ls: %q", got)
	}
	if got := h.MustDocker("config", "inspect", "--format", "{{.Spec.Name}} {{index .Spec.Labels \"team\"}}", id[:6]); strings.TrimSpace(got) != "app_conf web" {
		t.Fatalf("config inspect: %q", got)
	}
	// Unlike a secret's, a config's data is returned, as in Swarm.
	if got := h.MustDocker("config", "inspect", "--format", "{{printf \"%s\" .Spec.Data}}", "app_conf"); got != "listen=8080\n\n" && got != "listen=8080\n" {
		t.Fatalf("config data from inspect: %q", got)
	}
	big := filepath.Join(t.TempDir(), "big.conf")
	if err := os.WriteFile(big, make([]byte, 1000*1024), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := h.Docker("config", "create", "too_big", big); code == 0 || !strings.Contains(errOut, "config data must be larger than 0 and less than 1024000 bytes") {
		t.Fatalf("oversized config: exit %d %s", code, errOut)
	}
	svc := "confsvc"
	t.Cleanup(func() { h.Docker("service", "rm", svc) })
	h.MustDocker(append([]string{"service", "create", "-d", "--name", svc, "--stop-grace-period", "1s",
		"--config", "source=app_conf,target=/etc/app/app.conf,uid=1000,gid=1000,mode=0440", img}, serviceCmd...)...)
	eventually(t, 30*time.Second, "the task running", func() bool { return len(hushContainers(t, h, svc)) == 1 })
	c := hushContainers(t, h, svc)[0]
	if got := h.MustDocker("exec", c, "cat", "/etc/app/app.conf"); got != "listen=8080\n" {
		t.Fatalf("config content %q", got)
	}
	if got := strings.TrimSpace(h.MustDocker("exec", c, "stat", "-c", "%a %u %g", "/etc/app/app.conf")); got != "440 1000 1000" {
		t.Fatalf("config mode/owner %q", got)
	}
	if _, errOut, code := h.Docker("config", "rm", "app_conf"); code == 0 || !strings.Contains(errOut, "config 'app_conf' is in use by the following service: confsvc") {
		t.Fatalf("config rm in use: exit %d %s", code, errOut)
	}
	h.MustDocker("service", "rm", svc)
	h.MustDocker("config", "rm", "app_conf")
}

// TestServiceLogsInspectNodes covers docker service logs, service inspect
// --pretty, and node ls/inspect.
func TestServiceLogsInspectNodes(t *testing.T) {
	img := enginetest.BusyboxImage(t)
	h := startHushd(t)
	svc := "logsvc"
	t.Cleanup(func() { h.Docker("service", "rm", svc) })
	h.MustDocker("service", "create", "-d", "--name", svc, "--stop-grace-period", "1s", img,
		"sh", "-c", `echo out-line; echo err-line >&2; trap "exit 0" TERM; while :; do sleep 0.2; done`)
	eventually(t, 30*time.Second, "the task running", func() bool { return len(hushContainers(t, h, svc)) == 1 })
	var out string
	eventually(t, 10*time.Second, "both log lines", func() bool {
		o, _, code := h.Docker("service", "logs", svc)
		out = o
		return code == 0 && strings.Contains(o, "out-line")
	})
	// The CLI names the task from the context hush adds to each line.
	if !strings.Contains(out, svc+".1.") || !strings.Contains(out, "| out-line") {
		t.Fatalf("service logs stdout:\n%s", out)
	}
	_, errOut, _ := h.Docker("service", "logs", svc)
	if !strings.Contains(errOut, "| err-line") {
		t.Fatalf("service logs stderr:\n%s", errOut)
	}
	pretty := h.MustDocker("service", "inspect", "--pretty", svc)
	for _, want := range []string{"Name:\t\t" + svc, "Replicas:\t1", "Update order:      stop-first"} {
		if !strings.Contains(pretty, want) {
			t.Fatalf("inspect --pretty lacks %q:\n%s", want, pretty)
		}
	}
	nodes := h.MustDocker("node", "ls", "--format", "{{.Self}} {{.Status}} {{.Availability}} {{.ManagerStatus}}")
	if strings.TrimSpace(nodes) != "true Ready Active Leader" {
		t.Fatalf("node ls: %q", nodes)
	}
	h.MustDocker("node", "update", "--label-add", "zone=a", "self")
	if got := h.MustDocker("node", "inspect", "--format", "{{.Spec.Labels.zone}} {{.Spec.Role}}", "self"); strings.TrimSpace(got) != "a manager" {
		t.Fatalf("node inspect: %q", got)
	}
}

// TestServicePublishedPort: `-p published:target` binds the port on the
// host, as a single-node Swarm's routing mesh would expose it.
func TestServicePublishedPort(t *testing.T) {
	img := enginetest.BusyboxImage(t)
	h := startHushd(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	svc := "websvc"
	t.Cleanup(func() { h.Docker("service", "rm", svc) })
	h.MustDocker("service", "create", "-d", "--name", svc, "-p", fmt.Sprintf("%d:80", port), "--stop-grace-period", "1s", img,
		"sh", "-c", `while :; do printf 'HTTP/1.0 200 OK\r\n\r\nhello-from-hush' | nc -l -p 80; done`)
	var body string
	eventually(t, 30*time.Second, "the published port to answer", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return strings.Contains(body, "hello-from-hush")
	})
	got := h.MustDocker("service", "inspect", "--format", "{{range .Endpoint.Ports}}{{.PublishedPort}}:{{.TargetPort}}{{end}}", svc)
	if strings.TrimSpace(got) != fmt.Sprintf("%d:80", port) {
		t.Fatalf("endpoint ports %q", got)
	}
}
