package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// stackEngine is a docker CLI on the host engine itself, to see what hushd
// realised there (hushd's own answers hide it).
func stackEngine(t *testing.T) *dockerCLI { return newDockerCLI(t, enginetest.Socket) }

// requireSwarmNetworks skips (fails under CI) unless hushd serves swarm
// networks itself: an overlay network it creates is realised on the engine
// as a bridge labelled with the network's ID. (A hushd without them passes
// the create to the engine, which makes it a Swarm network of its own, or
// refuses outside swarm mode.)
func requireSwarmNetworks(t *testing.T, h *Hushd) {
	t.Helper()
	name := "hush-netprobe-" + randHex(t, 4)
	id, _, code := h.Docker("network", "create", "-d", "overlay", name)
	id = strings.TrimSpace(id)
	if code != 0 {
		skipOrFatal(t, "hushd does not serve swarm networks (network create -d overlay failed)")
	}
	real := stackEngine(t).MustDocker("network", "ls", "-q", "--filter", "label=io.hush.network.id="+id)
	h.Docker("network", "rm", name)
	if strings.TrimSpace(real) == "" {
		stackEngine(t).Docker("network", "rm", name)
		skipOrFatal(t, "hushd does not serve swarm networks (the overlay network was not realised as an engine bridge)")
	}
}

// stackCleanup removes stack when the test ends, even after a failure: the
// containers of a stack still running when hushd stops would outlive it.
func stackCleanup(t *testing.T, h *Hushd, stack string) {
	t.Cleanup(func() {
		if len(stackLeftovers(t, h, stack)) == 0 {
			return
		}
		h.Docker("stack", "rm", stack)
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) && len(stackLeftovers(t, h, stack)) > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		eng := stackEngine(t)
		filters := []string{"--filter", "label=com.docker.stack.namespace=" + stack, "--filter", "label=io.hush.node.id=" + nodeID(t, h)}
		if cs := strings.Fields(eng.MustDocker(append([]string{"ps", "-aq"}, filters...)...)); len(cs) > 0 {
			eng.Docker(append([]string{"rm", "-f"}, cs...)...)
		}
		if ns := strings.Fields(eng.MustDocker(append([]string{"network", "ls", "-q"}, filters...)...)); len(ns) > 0 {
			eng.Docker(append([]string{"network", "rm"}, ns...)...)
		}
	})
}

// stackImage makes an image whose default command keeps running and stops
// at once on SIGTERM, so a compose file without a command works. It stands
// in for the runbook's image name:latest under the suite's own tag (see
// suiteTag), returned, and removed when the test ends.
func stackImage(t *testing.T, h *Hushd, name string) string {
	t.Helper()
	img := enginetest.BusyboxImage(t)
	eng := stackEngine(t)
	ref := suiteRef(t, eng, name)
	ctr := "hush-stack-img-" + randHex(t, 4)
	h.MustDocker("create", "--name", ctr, img)
	defer h.Docker("rm", "-f", ctr)
	h.MustDocker("commit", "--change", `CMD ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]`, ctr, ref)
	t.Cleanup(func() { removeSuiteTag(t, eng, ref) })
	return ref
}

// stackWrite writes files into a fresh directory and returns it.
func stackWrite(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// stackRunning waits for n running containers of service and returns them.
func stackRunning(t *testing.T, h *Hushd, service string, n int) []string {
	t.Helper()
	var cs []string
	eventually(t, 60*time.Second, service+" running", func() bool {
		cs = hushContainers(t, h, service)
		return len(cs) == n
	})
	return cs
}

// stackLeftovers lists what of stack is still known to hushd or realised on
// the engine; empty when the stack is gone.
func stackLeftovers(t *testing.T, h *Hushd, stack string) []string {
	t.Helper()
	label := "label=com.docker.stack.namespace=" + stack
	var left []string
	for _, kind := range []string{"service", "secret", "config", "network"} {
		if out := strings.TrimSpace(h.MustDocker(kind, "ls", "-q", "--filter", label)); out != "" {
			left = append(left, kind+": "+strings.Join(strings.Fields(out), ","))
		}
	}
	if cs := h.MustDocker("ps", "-aq", "--filter", "label=com.docker.stack.namespace="+stack, "--filter", "label=io.hush.node.id="+nodeID(t, h)); strings.TrimSpace(cs) != "" {
		left = append(left, "containers: "+strings.Join(strings.Fields(cs), ","))
	}
	real := stackEngine(t).MustDocker("network", "ls", "-q", "--filter", label, "--filter", "label=io.hush.node.id="+nodeID(t, h))
	if strings.TrimSpace(real) != "" {
		left = append(left, "engine networks: "+strings.Join(strings.Fields(real), ","))
	}
	return left
}

func stackRemove(t *testing.T, h *Hushd, stack string) {
	t.Helper()
	out := h.MustDocker("stack", "rm", stack)
	if !strings.Contains(out, "Removing service") {
		t.Fatalf("stack rm %s:\n%s", stack, out)
	}
	var left []string
	eventually(t, 60*time.Second, "stack "+stack+" gone", func() bool {
		left = stackLeftovers(t, h, stack)
		return len(left) == 0
	})
}

// TestStackRunbookCompose is the runbook's compose example, verbatim:
// `docker stack deploy` creates the stack's network, secret and service on
// hushd, the task reads the secret file, and `docker stack rm` removes it
// all.
func TestStackRunbookCompose(t *testing.T) {
	h := startHushd(t)
	requireSwarmNetworks(t, h)
	// The runbook's compose file verbatim, but for the image: mysql:latest
	// is the suite's own tag (see stackImage), not the engine's mysql.
	mysql := stackImage(t, h, "mysql")
	dir := stackWrite(t, map[string]string{
		"db_password.txt": "mysecretpassword",
		"docker-compose.yml": strings.ReplaceAll(`version: '3.8'
services:
  db:
    image: mysql:latest
    secrets:
      - db_password
secrets:
  db_password:
    file: ./db_password.txt
`, "mysql:latest", mysql),
	})
	stackCleanup(t, h, "app")

	out := h.MustDocker("stack", "deploy", "-c", filepath.Join(dir, "docker-compose.yml"), "app")
	for _, want := range []string{"Creating network app_default", "Creating secret app_db_password", "Creating service app_db"} {
		if !strings.Contains(out, want) {
			t.Fatalf("stack deploy output lacks %q:\n%s", want, out)
		}
	}
	cs := stackRunning(t, h, "app_db", 1)
	if got := h.MustDocker("exec", cs[0], "cat", "/run/secrets/db_password"); got != "mysecretpassword" {
		t.Fatalf("secret file: %q", got)
	}
	// The stack's objects are swarm objects on hushd.
	if got := h.MustDocker("stack", "ls", "--format", "{{.Name}} {{.Services}}"); !strings.Contains(got, "app 1") {
		t.Fatalf("stack ls:\n%s", got)
	}
	if got := h.MustDocker("stack", "services", "--format", "{{.Name}} {{.Replicas}}", "app"); strings.TrimSpace(got) != "app_db 1/1" {
		t.Fatalf("stack services:\n%s", got)
	}
	if got := h.MustDocker("stack", "ps", "--format", "{{.Name}} {{.CurrentState}}", "app"); !strings.HasPrefix(got, "app_db.1 Running") {
		t.Fatalf("stack ps:\n%s", got)
	}
	if got := h.MustDocker("network", "ls", "--filter", "name=app_default", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"); strings.TrimSpace(got) != "app_default overlay swarm" {
		t.Fatalf("network ls:\n%s", got)
	}
	// The network is realised on the engine, and the task is on it.
	real := stackEngine(t).MustDocker("network", "ls", "-q", "--filter", "label=io.hush.node.id="+nodeID(t, h), "--filter", "name=app_default")
	if len(strings.Fields(real)) != 1 {
		t.Fatalf("engine networks realising app_default: %q", real)
	}
	nets := h.MustDocker("inspect", "--format", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", cs[0])
	if strings.TrimSpace(nets) != "app_default" {
		t.Fatalf("task container networks: %q", nets)
	}
	// The engine network's ID (as the container's inspect shows it) stands
	// for the swarm network.
	eid := strings.TrimSpace(h.MustDocker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.NetworkID}}{{end}}", cs[0]))
	if got := h.MustDocker("network", "inspect", "--format", "{{.Name}} {{.Scope}}", eid); strings.TrimSpace(got) != "app_default swarm" {
		t.Fatalf("network inspect %s: %q", eid, got)
	}
	// The network is in use while the service is.
	_, errOut, code := h.Docker("network", "rm", "app_default")
	if code == 0 || !strings.Contains(errOut, "rpc error: code = FailedPrecondition desc = network ") || !strings.Contains(errOut, " is in use by service ") {
		t.Fatalf("network rm in use: exit %d %s", code, errOut)
	}

	// Re-deploying with a changed secret file makes a new version of the
	// secret and rolls the service onto it (Swarm refuses with "only
	// updates to Labels are allowed"; a deliberate difference, see
	// docs/COMPATIBILITY.md): the old value is gone from the tasks.
	secID := h.MustDocker("secret", "inspect", "--format", "{{.ID}}", "app_db_password")
	if err := os.WriteFile(filepath.Join(dir, "db_password.txt"), []byte("another-password"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := h.Docker("stack", "deploy", "-c", filepath.Join(dir, "docker-compose.yml"), "app"); code != 0 {
		t.Fatalf("re-deploy with a changed secret: exit %d\n%s\n%s", code, out, errOut)
	}
	if got := h.MustDocker("secret", "inspect", "--format", "{{.ID}}", "app_db_password"); got != secID {
		t.Fatalf("secret ID changed on re-deploy: %s → %s", secID, got)
	}
	eventually(t, 60*time.Second, "app_db rolled onto the new value", func() bool {
		now := hushContainers(t, h, "app_db")
		if len(now) != 1 || now[0] == cs[0] {
			return false
		}
		got, _, code := h.Docker("exec", now[0], "cat", "/run/secrets/db_password")
		return code == 0 && got == "another-password"
	})

	stackRemove(t, h, "app")
	if out := h.MustDocker("stack", "ls"); strings.Contains(out, "app") {
		t.Fatalf("stack ls after rm:\n%s", out)
	}
}

// TestStackServicesReachEachOther deploys a larger stack: two services on a
// shared network reaching each other by name (and by a network alias), an
// external secret in long syntax, a config in long and short syntax, one
// global service; re-deploying it unchanged restarts nothing.
func TestStackServicesReachEachOther(t *testing.T) {
	h := startHushd(t)
	requireSwarmNetworks(t, h)
	img := enginetest.BusyboxImage(t)
	stackbox := suiteTag(t, stackEngine(t), img, "stackbox")
	dir := stackWrite(t, map[string]string{
		"app.conf": "listen=8080\n",
		"docker-compose.yml": strings.ReplaceAll(`version: '3.8'
services:
  web:
    image: stackbox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]
    stop_grace_period: 1s
    networks:
      - backend
    secrets:
      - source: api_key
        target: api.key
        uid: '1000'
        gid: '1001'
        mode: 0400
    configs:
      - source: app_conf
        target: /etc/app.conf
  worker:
    image: stackbox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]
    stop_grace_period: 1s
    deploy:
      mode: global
    networks:
      backend:
        aliases: [jobs]
    configs:
      - app_conf
networks:
  backend:
    driver: overlay
secrets:
  api_key:
    external: true
configs:
  app_conf:
    file: ./app.conf
`, "stackbox:latest", stackbox),
	})
	compose := filepath.Join(dir, "docker-compose.yml")
	stackCleanup(t, h, "big")

	// An external secret must exist before the services can be created
	// (the CLI has created the network and config by then).
	out, errOut, code := h.Docker("stack", "deploy", "-c", compose, "big")
	if code == 0 || !strings.Contains(errOut, "secret not found: api_key") ||
		!strings.Contains(out, "Creating network big_backend") || !strings.Contains(out, "Creating config big_app_conf") {
		t.Fatalf("deploy without the external secret: exit %d\n%s\n%s", code, out, errOut)
	}
	h.MustDockerStdin("k-123", "secret", "create", "api_key", "-")
	t.Cleanup(func() { h.Docker("secret", "rm", "api_key") })

	out = h.MustDocker("stack", "deploy", "-c", compose, "big")
	for _, want := range []string{"Creating service big_web", "Creating service big_worker"} {
		if !strings.Contains(out, want) {
			t.Fatalf("stack deploy output lacks %q:\n%s", want, out)
		}
	}
	web := stackRunning(t, h, "big_web", 1)[0]
	worker := stackRunning(t, h, "big_worker", 1)[0]
	if got := h.MustDocker("service", "ls", "--filter", "name=big_worker", "--format", "{{.Mode}}"); strings.TrimSpace(got) != "global" {
		t.Fatalf("worker mode %q", got)
	}

	// By service key (the CLI's alias), by service name and tasks.<name>
	// (hush's, as Swarm's DNS answers them), and by a network alias.
	for _, probe := range [][]string{
		{web, "ping", "-c1", "-W2", "worker"},
		{worker, "ping", "-c1", "-W2", "web"},
		{web, "nslookup", "big_worker"},
		{web, "nslookup", "tasks.big_worker"},
		{web, "nslookup", "jobs"},
	} {
		eventually(t, 15*time.Second, strings.Join(probe[1:], " "), func() bool {
			_, _, code := h.Docker(append([]string{"exec"}, probe...)...)
			return code == 0
		})
	}
	// The external secret, long syntax.
	if got := strings.TrimSpace(h.MustDocker("exec", web, "stat", "-c", "%u %g %a", "/run/secrets/api.key")); got != "1000 1001 400" {
		t.Fatalf("secret owner/mode %q", got)
	}
	if got := h.MustDocker("exec", web, "cat", "/run/secrets/api.key"); got != "k-123" {
		t.Fatalf("secret content %q", got)
	}
	// The config: long syntax at its target, short syntax at /<key> as on
	// Swarm.
	if got := h.MustDocker("exec", web, "cat", "/etc/app.conf"); got != "listen=8080\n" {
		t.Fatalf("config at /etc/app.conf: %q", got)
	}
	if got := h.MustDocker("exec", worker, "cat", "/app_conf"); got != "listen=8080\n" {
		t.Fatalf("config at /app_conf: %q", got)
	}

	// Re-deploying the unchanged stack updates the services (as Swarm does)
	// but restarts nothing.
	tasks := func() []string {
		ids := strings.Fields(h.MustDocker("stack", "ps", "-q", "big"))
		slices.Sort(ids)
		return ids
	}
	before := tasks()
	if len(before) != 2 {
		t.Fatalf("tasks before re-deploy: %v", before)
	}
	out = h.MustDocker("stack", "deploy", "-c", compose, "big")
	if !strings.Contains(out, "Updating service big_web") || strings.Contains(out, "Creating") {
		t.Fatalf("re-deploy output:\n%s", out)
	}
	// An unchanged task template starts no rollout (Swarm clears the
	// status), and once hushd has acted on the re-deploy no task was
	// replaced.
	for _, svc := range []string{"big_web", "big_worker"} {
		if us := h.MustDocker("service", "inspect", "--format", "{{json .UpdateStatus}}", svc); us != "null\n" {
			t.Errorf("UpdateStatus of %s after an unchanged re-deploy: %s, want null", svc, us)
		}
	}
	agentPassed(t, h, img)
	if after := tasks(); !slices.Equal(after, before) {
		t.Fatalf("re-deploy replaced tasks: %v → %v", before, after)
	}
	if cs := hushContainers(t, h, "big_web"); len(cs) != 1 || cs[0] != web {
		t.Fatalf("web container changed: %v (was %s)", cs, web)
	}

	stackRemove(t, h, "big")
	// External objects are not the stack's to remove.
	if got := h.MustDocker("secret", "ls", "--filter", "name=api_key", "--format", "{{.Name}}"); strings.TrimSpace(got) != "api_key" {
		t.Fatalf("external secret after stack rm: %q", got)
	}
}

// TestStackNetworkErrors checks network texts through the CLI.
func TestStackNetworkErrors(t *testing.T) {
	h := startHushd(t)
	requireSwarmNetworks(t, h)
	img := enginetest.BusyboxImage(t)
	_, errOut, code := h.Docker("service", "create", "-d", "--name", "neterr", "--network", "nosuch", img)
	if code == 0 || !strings.Contains(errOut, "network nosuch not found") {
		t.Fatalf("unknown network: exit %d %s", code, errOut)
	}
	// A local engine network is not a swarm network.
	_, errOut, code = h.Docker("service", "create", "-d", "--name", "neterr", "--network", "bridge", img)
	if code == 0 || !strings.Contains(errOut, "network bridge not found") {
		t.Fatalf("local network: exit %d %s", code, errOut)
	}
	for _, tt := range []struct{ name, want string }{
		{"bridge", "network with name bridge already exists"},
		{"none", "operation is not permitted on predefined none network"},
		{"a.b", "rpc error: code = InvalidArgument desc = name must be valid as a DNS name component"},
	} {
		_, errOut, code = h.Docker("network", "create", "-d", "overlay", tt.name)
		if code == 0 || !strings.Contains(errOut, tt.want) {
			t.Errorf("network create %s: exit %d %s", tt.name, code, errOut)
		}
	}
	id := strings.TrimSpace(h.MustDocker("network", "create", "-d", "overlay", "--attachable", "--label", "k=v", "neterr_net"))
	// Cleanups remove by what this test made, and only while it exists:
	// a name hushd no longer knows goes to the engine, where a network of
	// that name is someone else's.
	netRemoved, localRemoved := false, false
	t.Cleanup(func() {
		if !netRemoved {
			h.Docker("network", "rm", id)
		}
	})
	_, errOut, code = h.Docker("network", "create", "-d", "overlay", "neterr_net")
	if code == 0 || !strings.Contains(errOut, "network with name neterr_net already exists") {
		t.Fatalf("duplicate: exit %d %s", code, errOut)
	}
	if got := h.MustDocker("network", "inspect", "--format", "{{.Id}} {{.Scope}} {{.Driver}} {{.Attachable}} {{index .Labels \"k\"}}", "neterr_net"); strings.TrimSpace(got) != id+" swarm overlay true v" {
		t.Fatalf("inspect: %q", got)
	}
	if got := h.MustDocker("network", "ls", "--filter", "label=k=v", "--format", "{{.Name}}"); strings.TrimSpace(got) != "neterr_net" {
		t.Fatalf("ls by label: %q", got)
	}
	// Local networks still pass through to the engine.
	local := "neterr-local-" + randHex(t, 3)
	localID := strings.TrimSpace(h.MustDocker("network", "create", local))
	t.Cleanup(func() {
		if !localRemoved {
			stackEngine(t).Docker("network", "rm", localID)
		}
	})
	if got := h.MustDocker("network", "inspect", "--format", "{{.Scope}} {{.Driver}}", local); strings.TrimSpace(got) != "local bridge" {
		t.Fatalf("local inspect: %q", got)
	}
	h.MustDocker("network", "rm", local)
	localRemoved = true
	h.MustDocker("network", "rm", "neterr_net")
	netRemoved = true
	eventually(t, 15*time.Second, "engine network removed", func() bool {
		out := stackEngine(t).MustDocker("network", "ls", "-q", "--filter", "label=io.hush.network.id="+id)
		return strings.TrimSpace(out) == ""
	})
}
