package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// Services end-to-end tests: hushd runs service tasks as containers on the
// host's Docker Engine, with secrets on a per-task tmpfs.
//
// The host engine may be shared: it is Swarm's engine too, and other hushd
// processes (other tests, other checkouts) may run tasks on it at the same
// time. So every container query here is scoped by hushd's node label
// (io.hush.node.id=<this hushd's node ID>) or, on Swarm, by a service name
// unique to the run; every mount query by /run/hush/<node ID>/.

// taskLoop keeps a task up and exits 0 at once on SIGTERM (busybox sh as
// PID 1 would otherwise make every stop wait the grace period).
var taskLoop = []string{"sh", "-c", `trap "exit 0" TERM; while :; do sleep 0.2; done`}

const (
	hushNodeLabel = "io.hush.node.id"
	svcNameLabel  = "com.docker.swarm.service.name"
	taskTimeout   = 30 * time.Second
)

// waitFor polls cond every 200 ms until it holds, and fails the test
// (naming what was awaited) when timeout passes first.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// svcHushd is a hushd that runs tasks on the host engine, plus what the
// tests need to look at its containers and mounts.
type svcHushd struct {
	*Hushd
	t      testing.TB
	img    string     // the busybox test image
	node   string     // hushd's node ID
	engine *dockerCLI // the docker CLI pointed at the engine itself
}

// startSvcHushd starts hushd on the host engine and registers cleanups:
// first (while hushd still runs) every service is removed through hushd;
// then, after hushd has stopped, any container left with this node's label
// is force-removed and any tmpfs left under /run/hush/<node> is unmounted.
func startSvcHushd(t *testing.T) *svcHushd {
	t.Helper()
	requireHushd(t)
	img := enginetest.BusyboxImage(t)
	s := &svcHushd{t: t, img: img, engine: newDockerCLI(t, enginetest.Socket)}
	// Registered before startHushd: runs after hushd has been stopped.
	t.Cleanup(func() {
		if s.node != "" {
			s.purge()
		}
	})
	s.Hushd = startHushd(t)
	node := strings.TrimSpace(s.MustDocker("info", "--format", "{{.Swarm.NodeID}}"))
	if !regexp.MustCompile(`^[a-z0-9]{25}$`).MatchString(node) {
		t.Fatalf("docker info through hushd: node ID %q is not a 25-character ID", node)
	}
	s.node = node
	// Registered after startHushd: runs first, while hushd still runs.
	t.Cleanup(func() {
		if !s.running() {
			return
		}
		ids, _, code := s.Docker("service", "ls", "-q")
		if code != 0 || strings.TrimSpace(ids) == "" {
			return
		}
		s.Docker(append([]string{"service", "rm"}, strings.Fields(ids)...)...)
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) && len(s.allContainers()) > 0 {
			time.Sleep(200 * time.Millisecond)
		}
	})
	return s
}

func (s *svcHushd) mountRoot() string { return filepath.Join("/run/hush", s.node) }

// purge removes what a failed test may have left on the host.
func (s *svcHushd) purge() { purgeNode(s.t, s.node) }

// allContainers lists every container (any state) with this hushd's node label.
func (s *svcHushd) allContainers() []string {
	out, _, _ := s.engine.Docker("ps", "-aq", "--no-trunc", "--filter", "label="+hushNodeLabel+"="+s.node)
	return strings.Fields(out)
}

// containers lists the full IDs of the running containers of one service run
// by this hushd, sorted.
func (s *svcHushd) containers(service string) []string {
	s.t.Helper()
	out := s.engine.MustDocker("ps", "-q", "--no-trunc",
		"--filter", "label="+hushNodeLabel+"="+s.node,
		"--filter", "label="+svcNameLabel+"="+service)
	ids := strings.Fields(out)
	sort.Strings(ids)
	return ids
}

// mounts lists the mount points under /run/hush/<node>.
func (s *svcHushd) mounts() []string { return mountsUnder(s.t, s.mountRoot()) }

// secretFiles lists /run/secrets in a container (through hushd's socket),
// or nil when docker exec fails (the container may be going away).
func (s *svcHushd) secretFiles(ctr string) []string {
	out, _, code := s.Docker("exec", ctr, "ls", "/run/secrets")
	if code != 0 {
		return nil
	}
	f := strings.Fields(out)
	sort.Strings(f)
	return f
}

// waitTasks waits until the service has exactly n running containers that
// all satisfy ok (nil: any), and returns them.
func (s *svcHushd) waitTasks(service string, n int, what string, ok func(ctr string) bool) []string {
	s.t.Helper()
	var ids []string
	waitFor(s.t, taskTimeout, fmt.Sprintf("%d running container(s) of %s %s", n, service, what), func() bool {
		ids = s.containers(service)
		if len(ids) != n {
			return false
		}
		for _, c := range ids {
			if ok != nil && !ok(c) {
				return false
			}
		}
		return true
	})
	return ids
}

// withSecrets matches a container whose /run/secrets holds exactly names.
func (s *svcHushd) withSecrets(names ...string) func(string) bool {
	want := slices.Clone(names)
	sort.Strings(want)
	return func(ctr string) bool { return slices.Equal(s.secretFiles(ctr), want) }
}

// replicas is the REPLICAS column of `docker service ls` for one service.
func (s *svcHushd) replicas(service string) string {
	out, _, _ := s.Docker("service", "ls", "--filter", "name="+service, "--format", "{{.Name}} {{.Replicas}}")
	for _, l := range strings.Split(out, "\n") {
		if name, r, ok := strings.Cut(l, " "); ok && name == service {
			return r
		}
	}
	return ""
}

// mountsUnder lists the mount points at or below root in this process's
// mount namespace (hushd's and the engine's: the host's).
func mountsUnder(t testing.TB, root string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == root || strings.HasPrefix(mp, root+"/") {
			mps = append(mps, mp)
		}
	}
	return mps
}

// unescapeMountinfo undoes the octal escapes (\040 for space...) of /proc/*/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// containerMount finds the /proc/mounts line of a mount point inside a
// container: its fstype and options.
func containerMount(t testing.TB, procMounts, mountPoint string) (fstype string, opts []string, ok bool) {
	t.Helper()
	for _, line := range strings.Split(procMounts, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[1] == mountPoint {
			return f[2], strings.Split(f[3], ","), true
		}
	}
	return "", nil, false
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func svcArgs(args ...string) []string { return append(args, taskLoop...) }

// TestServiceRunbook follows the services runbook verbatim against hushd,
// with three adaptations for a shared engine without a registry: the
// runbook's nginx:latest is the busybox test image under the suite's own
// tag hush-e2e/…/nginx:latest (see suiteTag: the engine's real nginx:latest
// is not the test's to replace); so the service gets a command that stays
// up; and the task container is found with hushd's node label added to
// `docker ps -q --filter name=webapp` (Swarm's or another hushd's webapp
// containers may share the engine).
func TestServiceRunbook(t *testing.T) {
	h := startSvcHushd(t)
	nginx := suiteTag(t, h.engine, h.img, "nginx")

	h.MustDockerStdin("mysecretpassword", "secret", "create", "db_password", "-")
	apiFile := filepath.Join(t.TempDir(), "api_key.txt")
	if err := os.WriteFile(apiFile, []byte("k3y-api-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.MustDocker("secret", "create", "api_key", apiFile)

	// Attached: the CLI follows the tasks until converged, then waits the
	// 5 s monitor period.
	out, errOut, code := h.Docker(svcArgs("service", "create", "--name", "webapp", "--secret", "db_password", nginx)...)
	if code != 0 {
		t.Fatalf("docker service create (attached): exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	svcID := strings.SplitN(out, "\n", 2)[0]
	if m := regexp.MustCompile(`^verify: Service (\S+) converged$`).FindStringSubmatch(lastLine(out)); m == nil || (m[1] != svcID && m[1] != "webapp") {
		t.Errorf("docker service create (attached): stdout should end with \"verify: Service %s converged\"; got:\n%s", svcID, out)
	}

	psQ := func() []string {
		out := h.MustDocker("ps", "-q", "--filter", "name=webapp", "--filter", "label="+hushNodeLabel+"="+h.node)
		return strings.Fields(out)
	}
	ctrs := psQ()
	if len(ctrs) != 1 {
		t.Fatalf("docker ps -q --filter name=webapp (hushd's): want 1 container right after converging, got %v", ctrs)
	}
	c1 := ctrs[0]
	if got := h.MustDocker("exec", c1, "cat", "/run/secrets/db_password"); got != "mysecretpassword" {
		t.Errorf("docker exec %s cat /run/secrets/db_password = %q, want %q", c1, got, "mysecretpassword")
	}
	if got := strings.TrimSpace(h.MustDocker("exec", c1, "stat", "-c", "%a %u %g", "/run/secrets/db_password")); got != "444 0 0" {
		t.Errorf("stat -c '%%a %%u %%g' /run/secrets/db_password = %q, want %q (Swarm's default mode 0444, uid 0, gid 0)", got, "444 0 0")
	}
	pm := h.MustDocker("exec", c1, "cat", "/proc/mounts")
	if fstype, opts, ok := containerMount(t, pm, "/run/secrets/db_password"); !ok || fstype != "tmpfs" || !slices.Contains(opts, "ro") {
		t.Errorf("/run/secrets/db_password should be a read-only tmpfs mount in the container (Swarm: \"tmpfs /run/secrets/db_password tmpfs ro,relatime\"); /proc/mounts:\n%s", pm)
	}
	if m := h.mounts(); len(m) != 1 {
		t.Errorf("host: want exactly 1 tmpfs under %s for the one task, got %v", h.mountRoot(), m)
	}

	// In use: refused with Swarm's text, before the secret is detached.
	inUse := "Error response from daemon: rpc error: code = InvalidArgument desc = secret 'db_password' is in use by the following service: webapp\n"
	if so, se, code := h.Docker("secret", "rm", "db_password"); code != 1 || se != inUse || so != "" {
		t.Errorf("docker secret rm db_password (in use): want exit 1, stderr %q; got exit %d, stdout %q, stderr %q", inUse, code, so, se)
	}

	// --secret-add: a new task whose container sees both files.
	h.MustDocker("service", "update", "-d", "--secret-add", "api_key", "webapp")
	var c2 string
	waitFor(t, taskTimeout, "a new webapp container with api_key and db_password", func() bool {
		cs := psQ()
		if len(cs) != 1 || strings.HasPrefix(c1, cs[0]) {
			return false
		}
		if !h.withSecrets("api_key", "db_password")(cs[0]) {
			return false
		}
		c2 = cs[0]
		return true
	})
	if got := h.MustDocker("exec", c2, "cat", "/run/secrets/api_key"); got != "k3y-api-0123456789" {
		t.Errorf("after --secret-add: /run/secrets/api_key = %q", got)
	}
	if got := h.MustDocker("exec", c2, "cat", "/run/secrets/db_password"); got != "mysecretpassword" {
		t.Errorf("after --secret-add: /run/secrets/db_password = %q", got)
	}
	if so, se, code := h.Docker("secret", "rm", "db_password"); code != 1 || se != inUse {
		t.Errorf("docker secret rm db_password (still in use after --secret-add): want exit 1, stderr %q; got exit %d, stdout %q, stderr %q", inUse, code, so, se)
	}

	// --secret-rm: only api_key is left.
	h.MustDocker("service", "update", "-d", "--secret-rm", "db_password", "webapp")
	var c3 string
	waitFor(t, taskTimeout, "a new webapp container with only api_key", func() bool {
		cs := psQ()
		if len(cs) != 1 || strings.HasPrefix(c2, cs[0]) || !h.withSecrets("api_key")(cs[0]) {
			return false
		}
		c3 = cs[0]
		return true
	})
	if _, _, code := h.Docker("exec", c3, "cat", "/run/secrets/db_password"); code == 0 {
		t.Errorf("after --secret-rm: /run/secrets/db_password is still readable in %s", c3)
	}
	// The old tasks' tmpfs are gone; only the running task's remains.
	waitFor(t, taskTimeout, "one tmpfs under "+h.mountRoot(), func() bool { return len(h.mounts()) == 1 })

	// No longer referenced by the service: removal accepted.
	if so, se, code := h.Docker("secret", "rm", "db_password"); code != 0 || so != "db_password\n" {
		t.Errorf("docker secret rm db_password (after --secret-rm): want exit 0, stdout \"db_password\\n\"; got exit %d, stdout %q, stderr %q", code, so, se)
	}

	if so, se, code := h.Docker("service", "rm", "webapp"); code != 0 || so != "webapp\n" {
		t.Fatalf("docker service rm webapp: want exit 0, stdout \"webapp\\n\"; got exit %d, stdout %q, stderr %q", code, so, se)
	}
	waitFor(t, taskTimeout, "no container with "+hushNodeLabel+"="+h.node+" (any state) and no mount under "+h.mountRoot(), func() bool {
		return len(h.allContainers()) == 0 && len(h.mounts()) == 0
	})
	if out := h.MustDocker("service", "ls", "-q"); out != "" {
		t.Errorf("docker service ls -q after service rm: %q", out)
	}
	if out := h.MustDocker("secret", "ls", "--format", "{{.Name}}"); out != "api_key\n" {
		t.Errorf("docker secret ls after the runbook: %q, want only api_key", out)
	}
}

// TestServiceSecretOptions: --secret with target, uid, gid and mode; an
// absolute target; refused targets and sources.
func TestServiceSecretOptions(t *testing.T) {
	h := startSvcHushd(t)
	h.MustDockerStdin("opt-value-42", "secret", "create", "db_password", "-")

	h.MustDocker(svcArgs("service", "create", "-d", "--name", "opts",
		"--secret", "source=db_password,target=custom,uid=1000,gid=1000,mode=0400",
		"--secret", "source=db_password,target=/etc/app/key.pem",
		h.img)...)
	c := h.waitTasks("opts", 1, "with /run/secrets/custom", func(c string) bool {
		return slices.Equal(h.secretFiles(c), []string{"custom"})
	})[0]
	checks := []struct{ cmd, want string }{
		{"cat /run/secrets/custom", "opt-value-42"},
		{"stat -c '%a %u %g' /run/secrets/custom", "400 1000 1000\n"},
		{"cat /etc/app/key.pem", "opt-value-42"},
		{"stat -c '%a %u %g' /etc/app/key.pem", "444 0 0\n"},
	}
	for _, ck := range checks {
		if got := h.MustDocker("exec", c, "sh", "-c", ck.cmd); got != ck.want {
			t.Errorf("docker exec opts %s = %q, want %q", ck.cmd, got, ck.want)
		}
	}
	pm := h.MustDocker("exec", c, "cat", "/proc/mounts")
	for _, mp := range []string{"/run/secrets/custom", "/etc/app/key.pem"} {
		if fstype, opts, ok := containerMount(t, pm, mp); !ok || fstype != "tmpfs" || !slices.Contains(opts, "ro") {
			t.Errorf("%s should be a read-only tmpfs mount in the container; /proc/mounts:\n%s", mp, pm)
		}
	}
	// Neither file is writable, even for root in the container.
	if _, _, code := h.Docker("exec", c, "sh", "-c", "echo x > /etc/app/key.pem"); code == 0 {
		t.Errorf("writing /etc/app/key.pem in the container succeeded; want a read-only mount")
	}

	// A target containing "..": hush is stricter than Swarm here. Swarm
	// accepts target=../../etc/passwd and mounts the secret over the
	// container's /etc/passwd; hush refuses it at create.
	so, se, code := h.Docker(svcArgs("service", "create", "-d", "--name", "dotdot",
		"--secret", "source=db_password,target=../../etc/passwd", h.img)...)
	if code == 0 || !strings.Contains(se, "../../etc/passwd") || !strings.Contains(se, `".."`) {
		t.Errorf("service create with target=../../etc/passwd: want a refusal naming the target and \"..\"; got exit %d, stdout %q, stderr %q", code, so, se)
	}

	// A missing secret: the CLI resolves names first (Swarm's text).
	so, se, code = h.Docker(svcArgs("service", "create", "-d", "--name", "missing", "--secret", "nosuch", h.img)...)
	if code != 1 || se != "secret not found: nosuch\n" {
		t.Errorf("service create --secret nosuch: want exit 1, stderr %q; got exit %d, stdout %q, stderr %q", "secret not found: nosuch\n", code, so, se)
	}
	// And the daemon itself refuses a reference it cannot resolve (a raw
	// API call skips the CLI's check), with Swarm's status and body.
	spec := fmt.Sprintf(`{"Name":"rawmissing","TaskTemplate":{"ContainerSpec":{"Image":%q,"Secrets":[{"SecretID":"nosuchid0000000000000000","SecretName":"nosuch","File":{"Name":"nosuch","UID":"0","GID":"0","Mode":292}}]}},"Mode":{"Replicated":{"Replicas":1}}}`, h.img)
	res := h.Raw("POST", "/v1.41/services/create", "application/json", []byte(spec))
	wantBody := `{"message":"rpc error: code = InvalidArgument desc = secret not found: nosuch"}` + "\n"
	if res.Status != 400 || string(res.Body) != wantBody {
		t.Errorf("POST /services/create with an unknown secret: want 400 %q (Swarm's), got %d %q", wantBody, res.Status, res.Body)
	}

	if out := h.MustDocker("service", "ls", "--format", "{{.Name}}"); out != "opts\n" {
		t.Errorf("docker service ls after the refused creates: %q, want only opts", out)
	}
}

// TestServiceReplicasAndScale: replicated services with several tasks, scale
// down and up, and a global service (one task on the one node).
func TestServiceReplicasAndScale(t *testing.T) {
	h := startSvcHushd(t)
	h.MustDockerStdin("replica-secret", "secret", "create", "rs", "-")
	readsSecret := func(c string) bool {
		out, _, code := h.Docker("exec", c, "cat", "/run/secrets/rs")
		return code == 0 && out == "replica-secret"
	}

	h.MustDocker(svcArgs("service", "create", "-d", "--name", "rep", "--replicas", "3", "--secret", "rs", h.img)...)
	h.MustDocker(svcArgs("service", "create", "-d", "--name", "glob", "--mode", "global", "--secret", "rs", h.img)...)
	h.waitTasks("rep", 3, "reading the secret", readsSecret)
	waitFor(t, taskTimeout, "service ls REPLICAS 3/3 for rep", func() bool { return h.replicas("rep") == "3/3" })
	if got := h.mounts(); len(got) < 3 {
		t.Errorf("want a tmpfs per task under %s, got %v", h.mountRoot(), got)
	}

	// Global: one task, on this node, named <service>.<nodeID>.
	h.waitTasks("glob", 1, "reading the secret", readsSecret)
	waitFor(t, taskTimeout, "service ls REPLICAS 1/1 for glob", func() bool { return h.replicas("glob") == "1/1" })
	if got, want := h.MustDocker("service", "ps", "--format", "{{.Name}} {{.DesiredState}}", "glob"), "glob."+h.node+" Running\n"; got != want {
		t.Errorf("service ps glob: %q, want %q", got, want)
	}
	if got := h.MustDocker("service", "ls", "--filter", "name=glob", "--format", "{{.Mode}}"); got != "global\n" {
		t.Errorf("service ls MODE for glob: %q", got)
	}

	// A rolling update first, so that UpdateStatus is "completed".
	h.MustDocker("service", "update", "-d", "--env-add", "STAGE=2", "rep")
	waitFor(t, taskTimeout, "the rolling update of rep completed", func() bool {
		out, _, _ := h.Docker("service", "inspect", "--format", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}", "rep")
		return strings.TrimSpace(out) == "completed"
	})
	h.waitTasks("rep", 3, "updated and reading the secret", func(c string) bool {
		out, _, code := h.Docker("exec", c, "sh", "-c", "echo $STAGE; cat /run/secrets/rs")
		return code == 0 && out == "2\nreplica-secret"
	})

	// Attached scale (the CLI's default): like Swarm, the CLI follows the
	// tasks until converged and then prints "verify: Service rep converged".
	// The CLI stops following as soon as it sees UpdateStatus "completed"
	// before convergence; Swarm resets UpdateStatus to null on every
	// non-rollback update, and a scale starts no rolling update, so it
	// stays null and the CLI waits (checked on Engine 20.10: after an
	// update, then `service scale`, UpdateStatus is null).
	t.Run("scale_attached_to_1", func(t *testing.T) {
		out, errOut, code := h.Docker("service", "scale", "rep=1")
		if code != 0 {
			t.Fatalf("docker service scale rep=1: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
		if !strings.HasPrefix(out, "rep scaled to 1\n") || lastLine(out) != "verify: Service rep converged" {
			us, _, _ := h.Docker("service", "inspect", "--format", "{{json .UpdateStatus}}", "rep")
			t.Errorf("docker service scale rep=1 (attached): want stdout from \"rep scaled to 1\" to \"verify: Service rep converged\" (as on Swarm); got stdout:\n%s\nstderr:\n%s\nUpdateStatus after the scale: %s (Swarm: null)", out, errOut, us)
		}
	})
	// The cause, checked directly (the attached CLI only trips over it when
	// it reads the service after hushd has marked the "update" completed).
	t.Run("scale_leaves_no_update_status", func(t *testing.T) {
		if us := h.MustDocker("service", "inspect", "--format", "{{json .UpdateStatus}}", "rep"); us != "null\n" {
			t.Errorf("UpdateStatus after a scale that followed a completed update: %s want null, as on Swarm (a non-rollback update resets it; a scale starts no rolling update)", us)
		}
	})
	waitFor(t, taskTimeout, "service ls REPLICAS 1/1 for rep", func() bool { return h.replicas("rep") == "1/1" })
	h.waitTasks("rep", 1, "reading the secret", readsSecret)

	h.MustDocker("service", "scale", "-d", "rep=2")
	waitFor(t, taskTimeout, "service ls REPLICAS 2/2 for rep", func() bool { return h.replicas("rep") == "2/2" })
	h.waitTasks("rep", 2, "reading the secret", readsSecret)
	ps := h.MustDocker("service", "ps", "--filter", "desired-state=running", "--format", "{{.Name}} {{.DesiredState}}", "rep")
	psLines := strings.Split(strings.TrimSpace(ps), "\n")
	sort.Strings(psLines)
	if !slices.Equal(psLines, []string{"rep.1 Running", "rep.2 Running"}) {
		t.Errorf("service ps rep (desired running) after scale to 2:\n%s", ps)
	}
	// Only the running tasks keep a tmpfs: 2 for rep, 1 for glob.
	waitFor(t, taskTimeout, "3 tmpfs under "+h.mountRoot(), func() bool { return len(h.mounts()) == 3 })
}

// TestServiceRollback: create with secret A, add B, roll back: the new task
// has only A again, and B (no longer in the current spec) can be removed.
func TestServiceRollback(t *testing.T) {
	h := startSvcHushd(t)
	h.MustDockerStdin("value-a", "secret", "create", "sa", "-")
	h.MustDockerStdin("value-b", "secret", "create", "sb", "-")

	h.MustDocker(svcArgs("service", "create", "-d", "--name", "rb", "--secret", "sa", h.img)...)
	c1 := h.waitTasks("rb", 1, "with sa", h.withSecrets("sa"))[0]
	h.MustDocker("service", "update", "-d", "--secret-add", "sb", "rb")
	c2 := h.waitTasks("rb", 1, "with sa and sb", h.withSecrets("sa", "sb"))[0]
	if c2 == c1 {
		t.Fatalf("the update kept container %s", c1)
	}

	h.MustDocker("service", "rollback", "-d", "rb")
	c3 := h.waitTasks("rb", 1, "with only sa after the rollback", func(c string) bool {
		return c != c2 && h.withSecrets("sa")(c)
	})[0]
	if got := h.MustDocker("exec", c3, "cat", "/run/secrets/sa"); got != "value-a" {
		t.Errorf("after rollback: /run/secrets/sa = %q", got)
	}
	if got := h.MustDocker("service", "inspect", "--format", "{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{end}}", "rb"); got != "sa \n" {
		t.Errorf("after rollback, the spec's secrets are %q, want only sa", got)
	}
	waitFor(t, taskTimeout, "UpdateStatus rollback_completed", func() bool {
		out, _, _ := h.Docker("service", "inspect", "--format", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}", "rb")
		return strings.TrimSpace(out) == "rollback_completed"
	})
	// Only current specs count for "in use" (Swarm): sb is free again.
	if so, se, code := h.Docker("secret", "rm", "sb"); code != 0 {
		t.Errorf("docker secret rm sb after the rollback: exit %d, stdout %q, stderr %q", code, so, se)
	}
	waitFor(t, taskTimeout, "one tmpfs under "+h.mountRoot(), func() bool { return len(h.mounts()) == 1 })
}

// TestServiceRestartPolicy: a task whose container is killed is replaced
// after the restart delay; the failed task stays in the history.
func TestServiceRestartPolicy(t *testing.T) {
	h := startSvcHushd(t)
	h.MustDockerStdin("restart-value", "secret", "create", "rp", "-")
	h.MustDocker(svcArgs("service", "create", "-d", "--name", "rs", "--restart-delay", "1s", "--secret", "rp", h.img)...)
	c1 := h.waitTasks("rs", 1, "", nil)[0]

	h.MustDocker("kill", c1)
	start := time.Now()
	c2 := h.waitTasks("rs", 1, "replacing the killed one", func(c string) bool { return c != c1 })[0]
	t.Logf("replacement running %s after docker kill", time.Since(start).Round(100*time.Millisecond))
	if got := h.MustDocker("exec", c2, "cat", "/run/secrets/rp"); got != "restart-value" {
		t.Errorf("replacement task: /run/secrets/rp = %q", got)
	}
	var ps string
	waitFor(t, 15*time.Second, "service ps: the new task Running, the killed one Failed (exit 137) and desired Shutdown", func() bool {
		ps = h.MustDocker("service", "ps", "--no-trunc", "--format", "{{.Name}}|{{.DesiredState}}|{{.CurrentState}}|{{.Error}}", "rs")
		lines := strings.Split(strings.TrimSpace(ps), "\n")
		if len(lines) != 2 {
			return false
		}
		return strings.HasPrefix(lines[0], "rs.1|Running|Running ") &&
			strings.HasPrefix(lines[1], "rs.1|Shutdown|Failed ") && strings.Contains(lines[1], "task: non-zero exit (137)")
	})
	// The failed task's tmpfs is gone.
	waitFor(t, taskTimeout, "one tmpfs under "+h.mountRoot(), func() bool { return len(h.mounts()) == 1 })
}

// TestServiceHushdKill9: running tasks survive SIGKILL of hushd: after the
// restart the same containers are adopted (no duplicates), still read their
// secret, and show as Running; removing the service then leaves nothing.
func TestServiceHushdKill9(t *testing.T) {
	h := startSvcHushd(t)
	h.MustDockerStdin("survives-kill-9", "secret", "create", "k9", "-")
	h.MustDocker(svcArgs("service", "create", "-d", "--name", "k9svc", "--replicas", "2", "--secret", "k9", h.img)...)
	before := h.waitTasks("k9svc", 2, "", nil)
	waitFor(t, taskTimeout, "both tasks Running in service ps", func() bool {
		out, _, _ := h.Docker("service", "ps", "--format", "{{.CurrentState}}", "k9svc")
		return strings.Count(out, "Running") == 2
	})
	mountsBefore := h.mounts()
	if len(mountsBefore) != 2 {
		t.Fatalf("want 2 tmpfs under %s before the kill, got %v", h.mountRoot(), mountsBefore)
	}

	h.Kill()
	if got := h.containers("k9svc"); !slices.Equal(got, before) {
		t.Errorf("containers changed while hushd was down: before %v, now %v", before, got)
	}
	h.Restart()

	// Once the restarted orchestrator and agent have acted, nothing may
	// have been started, stopped or duplicated.
	agentPassed(t, h.Hushd, h.img)
	if got := h.containers("k9svc"); !slices.Equal(got, before) {
		t.Errorf("running containers after kill -9 and restart: %v, want the same %v", got, before)
	}
	if all := h.allContainers(); len(all) != 2 {
		t.Errorf("want exactly 2 containers (any state) with %s=%s, got %v", hushNodeLabel, h.node, all)
	}
	for _, c := range before {
		if got, se, code := h.Docker("exec", c, "cat", "/run/secrets/k9"); code != 0 || got != "survives-kill-9" {
			t.Errorf("docker exec %s cat /run/secrets/k9 after the restart: exit %d, %q %s", c[:12], code, got, se)
		}
	}
	ps := h.MustDocker("service", "ps", "--format", "{{.Name}} {{.DesiredState}} {{.CurrentState}}", "k9svc")
	lines := strings.Split(strings.TrimSpace(ps), "\n")
	sort.Strings(lines)
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "k9svc.1 Running Running") || !strings.HasPrefix(lines[1], "k9svc.2 Running Running") {
		t.Errorf("service ps after the restart: want k9svc.1 and k9svc.2 Running (and nothing else); got:\n%s", ps)
	}
	if got := h.mounts(); !slices.Equal(got, mountsBefore) {
		t.Errorf("tmpfs mounts after the restart: %v, want the same %v", got, mountsBefore)
	}
	if got := h.replicas("k9svc"); got != "2/2" {
		t.Errorf("service ls REPLICAS after the restart: %q, want 2/2", got)
	}

	h.MustDocker("service", "rm", "k9svc")
	waitFor(t, taskTimeout, "no container and no tmpfs left", func() bool {
		return len(h.allContainers()) == 0 && len(h.mounts()) == 0
	})
}

// ---- differential check vs Swarm ----

// svcDiffSide is one daemon in the differential check.
type svcDiffSide struct {
	t       *testing.T
	cli     *dockerCLI // where the commands go
	suffix  string
	img     string
	n       *normaliser
	running func(service string) []string // running task containers
	out     strings.Builder
}

func (d *svcDiffSide) svc() string { return "svcdiff_" + d.suffix }
func (d *svcDiffSide) sec() string { return "secdiff_" + d.suffix }

// step runs one command and appends its normalised transcript; post, if
// set, rewrites stdout first.
func (d *svcDiffSide) step(stdin string, post func(string) string, args ...string) (stdout string, code int) {
	d.t.Helper()
	stdout, stderr, code := d.cli.DockerStdin(stdin, args...)
	shown := stdout
	if post != nil {
		shown = post(stdout)
	}
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	var b strings.Builder
	if stdin != "" {
		fmt.Fprintf(&b, "$ printf %s | docker %s\n", shellQuote(stdin), strings.Join(quoted, " "))
	} else {
		fmt.Fprintf(&b, "$ docker %s\n", strings.Join(quoted, " "))
	}
	fmt.Fprintf(&b, "exit status: %d\n-- stdout --\n%s-- stderr --\n%s", code, shown, stderr)
	d.out.WriteString(d.n.norm(b.String()))
	return stdout, code
}

func (d *svcDiffSide) recordID(id string) {
	id = strings.TrimSpace(id)
	if len(id) >= 12 {
		d.n.addID(id)
		d.n.prefixes = append(d.n.prefixes, id[:12])
	}
}

// mountSummary keeps, per /proc/mounts line, the mount point, the fstype
// and whether it is ro or rw: hush sizes its tmpfs (size=, nr_inodes=,
// mode=, noswap), Swarm does not, and that is not a difference that matters.
func mountSummary(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 {
			fmt.Fprintf(&b, "%s %s %s %s\n", f[0], f[1], f[2], strings.Split(f[3], ",")[0])
		}
	}
	return b.String()
}

// run drives the short service sequence and returns the transcript.
func (d *svcDiffSide) run() string {
	t := d.t
	out, code := d.step("diff-secret-value", nil, "secret", "create", d.sec(), "-")
	if code != 0 {
		t.Fatalf("secret create failed:\n%s", d.out.String())
	}
	d.recordID(out)
	out, code = d.step("", nil, svcArgs("service", "create", "-d", "--name", d.svc(), "--secret", d.sec(), d.img)...)
	if code != 0 {
		t.Fatalf("service create failed:\n%s", d.out.String())
	}
	d.recordID(out)

	var ctr string
	waitFor(t, 60*time.Second, "the task running", func() bool {
		cs := d.running(d.svc())
		if len(cs) != 1 {
			return false
		}
		ps, _, _ := d.cli.Docker("service", "ps", "--format", "{{.CurrentState}}", d.svc())
		if !strings.HasPrefix(ps, "Running") {
			return false
		}
		ctr = cs[0]
		return true
	})
	waitFor(t, 30*time.Second, "service ls REPLICAS 1/1", func() bool {
		out, _, _ := d.cli.Docker("service", "ls", "--filter", "name="+d.svc(), "--format", "{{.Replicas}}")
		return out == "1/1\n"
	})
	d.n.literals[ctr] = "<CONTAINER>"
	d.step("", nil, "exec", ctr, "cat", "/run/secrets/"+d.sec())
	d.step("", nil, "exec", ctr, "stat", "-c", "%a %u %g %s", "/run/secrets/"+d.sec())
	d.step("", mountSummary, "exec", ctr, "grep", "/run/secrets/", "/proc/mounts")
	d.step("", nil, "service", "ls", "--filter", "name="+d.svc())
	d.step("", nil, "service", "ps", "--format", "{{.Name}} {{.DesiredState}}", d.svc())
	d.step("", nil, "service", "inspect", "--format", "{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}", d.svc())
	d.step("", nil, "service", "inspect", "--format", "{{.Spec.Name}} {{json .Spec.Mode}} {{.Spec.TaskTemplate.ContainerSpec.Image}} {{json .Spec.TaskTemplate.ContainerSpec.Args}}", d.svc())
	d.step("", nil, "secret", "rm", d.sec())
	d.step("", nil, "service", "rm", d.svc())
	d.step("", nil, "secret", "rm", d.sec())
	d.step("", nil, "service", "ls", "--filter", "name="+d.svc())
	waitFor(t, 30*time.Second, "the task container gone", func() bool { return len(d.running(d.svc())) == 0 })
	return d.out.String()
}

// TestServiceVsSwarm runs the same short service sequence against live
// Swarm (recording testdata/swarm/services_diff.golden with -update) and
// against hushd, and compares the normalised transcripts.
func TestServiceVsSwarm(t *testing.T) {
	requireDockerCLI(t)
	const golden = "services_diff"
	var live string

	t.Run("swarm", func(t *testing.T) {
		requireSwarm(t)
		img := enginetest.BusyboxImage(t)
		sw := swarmCLI(t)
		suffix := runSuffix(t)
		d := &svcDiffSide{t: t, cli: sw, suffix: suffix, img: img,
			n: &normaliser{suffix: suffix, literals: map[string]string{}}}
		d.running = func(service string) []string {
			out, _, _ := sw.Docker("ps", "-q", "--no-trunc", "--filter", "label="+svcNameLabel+"="+service)
			return strings.Fields(out)
		}
		t.Cleanup(func() {
			sw.Docker("service", "rm", d.svc())
			sw.Docker("secret", "rm", d.sec())
			awaitSwarmContainersGone(sw, 15*time.Second, func() []string { return swarmServiceContainers(sw, d.svc()) })
		})
		got := d.run()
		live = got
		checkSwarmGolden(t, golden, got)
	})

	t.Run("hushd", func(t *testing.T) {
		h := startSvcHushd(t)
		suffix := runSuffix(t)
		d := &svcDiffSide{t: t, cli: h.dockerCLI, suffix: suffix, img: h.img,
			n: &normaliser{suffix: suffix, literals: map[string]string{}}}
		d.running = h.containers
		got := d.run()
		checkHushdGolden(t, golden, got, live)
		waitFor(t, taskTimeout, "no container and no tmpfs left", func() bool {
			return len(h.allContainers()) == 0 && len(h.mounts()) == 0
		})
	})
}

// TestEngineProxy: calls hush does not own go to the host engine unchanged,
// including attached and hijacked streams and exit codes.
func TestEngineProxy(t *testing.T) {
	requireHushd(t)
	img := enginetest.BusyboxImage(t)
	h := startHushd(t)

	if out := h.MustDocker("ps"); !strings.HasPrefix(out, "CONTAINER ID ") {
		t.Errorf("docker ps through hushd: %q", out)
	}
	if out := h.MustDocker("images", "--format", "{{.Repository}}:{{.Tag}}"); !slices.Contains(strings.Fields(out), img) {
		t.Errorf("docker images through hushd does not list %s:\n%s", img, out)
	}
	if out, se, code := h.Docker("run", "--rm", img, "echo", "hi"); code != 0 || out != "hi\n" {
		t.Errorf("docker run --rm %s echo hi: exit %d, stdout %q, stderr %q", img, code, out, se)
	}
	if out, se, code := h.DockerStdin("x\n", "run", "--rm", "-i", img, "cat"); code != 0 || out != "x\n" {
		t.Errorf("echo x | docker run --rm -i %s cat: exit %d, stdout %q, stderr %q", img, code, out, se)
	}
	if _, se, code := h.Docker("run", "--rm", img, "sh", "-c", "exit 3"); code != 3 {
		t.Errorf("docker run --rm %s sh -c 'exit 3': exit %d (want 3), stderr %q", img, code, se)
	}
}
