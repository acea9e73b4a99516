package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// Pulls: tasks' images are pulled by the node's engine as Swarm's are, from
// a real registry (Debian's docker-registry, the distribution registry)
// that each test runs on 127.0.0.1 with a temporary config and storage. The
// engine talks plain HTTP to loopback registries, so no TLS is needed.
//
// Everything a test makes is named with a "pulls" prefix and a run suffix:
// images carry the label io.hush.test.pulls=<suffix> and are removed by it.

const (
	pullsLabel   = "io.hush.test.pulls"
	pullsTimeout = 60 * time.Second
	pullsRepo    = "hush-pulls"
)

// pullsRegistry is one running docker-registry.
type pullsRegistry struct {
	Addr     string // 127.0.0.1:PORT
	User     string // "" without basic auth
	Password string
}

// freePort returns a loopback TCP port nothing listens on (at the time).
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startRegistry runs docker-registry on a free loopback port until the test
// ends; withAuth puts it behind htpasswd basic auth with a random user.
func startRegistry(t *testing.T, withAuth bool) *pullsRegistry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		skipOrFatal(t, "docker-registry is not installed (apt-get install docker-registry): %v", err)
	}
	dir := t.TempDir()
	reg := &pullsRegistry{}
	authConf := ""
	if withAuth {
		reg.User, reg.Password = "pulls"+randHex(t, 3), "pw-"+randHex(t, 12)
		hash, err := bcrypt.GenerateFromPassword([]byte(reg.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "htpasswd"), fmt.Appendf(nil, "%s:%s\n", reg.User, hash), 0o600); err != nil {
			t.Fatal(err)
		}
		authConf = fmt.Sprintf("auth:\n  htpasswd:\n    realm: hush-pulls\n    path: %s\n", filepath.Join(dir, "htpasswd"))
	}
	for attempt := 0; ; attempt++ {
		reg.Addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		conf := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n%s",
			filepath.Join(dir, "data"), reg.Addr, authConf)
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("registry-%d.log", attempt)))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", cfgPath)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting docker-registry: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
		})
		if reg.ready(exited) {
			return reg
		}
		if attempt == 2 {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("docker-registry did not come up on %s; log:\n%s", reg.Addr, b)
		}
	}
}

// ready waits for GET /v2/ to answer (200 open, 401 with auth).
func (r *pullsRegistry) ready(exited <-chan struct{}) bool {
	c := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false // the port was taken meanwhile
		default:
		}
		if resp, err := c.Get("http://" + r.Addr + "/v2/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// pullsImages makes and removes the test's images on the engine.
type pullsImages struct {
	t      *testing.T
	eng    *dockerCLI // the engine itself, with a config dir of its own
	suffix string
}

func newPullsImages(t *testing.T) *pullsImages {
	p := &pullsImages{t: t, eng: newDockerCLI(t, enginetest.Socket), suffix: runSuffix(t)}
	// Registered first, so it runs last: after the services (whose
	// containers hold the images) are gone.
	t.Cleanup(p.removeAll)
	return p
}

// make commits a new image tagged ref from the busybox test image, unique
// to this test (its own label), whose default command stops on SIGTERM.
func (p *pullsImages) make(ref string) {
	p.t.Helper()
	base := enginetest.BusyboxImage(p.t)
	ctr := "pulls-mk-" + p.suffix + "-" + randHex(p.t, 3)
	p.eng.MustDocker("create", "--name", ctr, base)
	defer p.eng.Docker("rm", "-f", ctr)
	p.eng.MustDocker("commit",
		"--change", "LABEL "+pullsLabel+"="+p.suffix,
		"--change", "LABEL io.hush.test.pulls.ref="+ref,
		"--change", `CMD ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]`,
		ctr, ref)
}

// push makes ref, pushes it to its registry and removes the engine's copy,
// so that only the registry has it.
func (p *pullsImages) push(ref string) {
	p.t.Helper()
	p.make(ref)
	p.eng.MustDocker("push", ref)
	p.eng.MustDocker("rmi", ref)
	p.absent(ref)
}

// absent fails the test if the engine has ref.
func (p *pullsImages) absent(ref string) {
	p.t.Helper()
	if _, _, code := p.eng.Docker("image", "inspect", ref); code == 0 {
		p.t.Fatalf("the engine still has %s", ref)
	}
}

// drop removes every image of this test from the engine (the pulled ones
// are reachable only by digest), e.g. between the Swarm and hushd sides.
func (p *pullsImages) drop() {
	p.t.Helper()
	out := p.eng.MustDocker("images", "-q", "--no-trunc", "--filter", "label="+pullsLabel+"="+p.suffix)
	for _, id := range uniq(strings.Fields(out)) {
		if _, errOut, code := p.eng.Docker("rmi", "-f", id); code != 0 && !strings.Contains(errOut, "No such image") {
			p.t.Fatalf("rmi %s: %s", id, errOut)
		}
	}
}

func (p *pullsImages) removeAll() {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := p.eng.Docker("images", "-q", "--no-trunc", "--filter", "label="+pullsLabel+"="+p.suffix)
		ids := uniq(strings.Fields(out))
		if len(ids) == 0 {
			return
		}
		for _, id := range ids {
			p.eng.Docker("rmi", "-f", id)
		}
		if time.Now().After(deadline) {
			p.t.Errorf("cleanup: images with %s=%s left: %v", pullsLabel, p.suffix, ids)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func uniq(s []string) []string {
	sort.Strings(s)
	return slices.Compact(s)
}

// pullsSide is one system under comparison: Swarm, or a hushd.
type pullsSide struct {
	t    *testing.T
	name string
	cli  *dockerCLI
	// running lists a service's running containers on the engine.
	running func(service string) []string
	made    []string
}

func swarmPullsSide(t *testing.T) *pullsSide {
	sw := swarmCLI(t)
	s := &pullsSide{t: t, name: "swarm", cli: sw}
	s.running = func(service string) []string {
		out, _, _ := sw.Docker("ps", "-q", "--no-trunc", "--filter", "label="+svcNameLabel+"="+service)
		return strings.Fields(out)
	}
	return s
}

func hushPullsSide(t *testing.T, h *svcHushd) *pullsSide {
	return &pullsSide{t: t, name: "hushd", cli: h.dockerCLI, running: h.containers}
}

// create runs `docker service create` and removes the service when the
// test ends (waiting for its containers to go); it returns the CLI's
// stderr (its warnings).
func (s *pullsSide) create(name string, args ...string) string {
	s.t.Helper()
	all := append([]string{"service", "create", "--detach", "--name", name, "--restart-delay", "1s"}, args...)
	_, errOut, code := s.cli.Docker(all...)
	if code != 0 {
		s.t.Fatalf("%s: docker %s: exit %d: %s", s.name, strings.Join(all, " "), code, errOut)
	}
	s.made = append(s.made, name)
	s.t.Cleanup(func() { s.remove(name) })
	return errOut
}

// removeAll removes the services create made, and waits for their
// containers to go.
func (s *pullsSide) removeAll() {
	for _, name := range s.made {
		s.remove(name)
	}
}

func (s *pullsSide) remove(name string) {
	s.cli.Docker("service", "rm", name)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out, _, _ := newDockerCLI(s.t, enginetest.Socket).Docker("ps", "-aq", "--filter", "label="+svcNameLabel+"="+name)
		if strings.TrimSpace(out) == "" {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// taskRow is one line of `docker service ps`, normalised.
type taskRow struct {
	Image, Desired, State, Error string
}

var reStateWord = regexp.MustCompile(`^(\S+)`)

// tasks lists the service's tasks as `docker service ps --no-trunc` shows
// them, the current state cut to its first word ("Rejected 3 seconds ago"
// is "Rejected").
func (s *pullsSide) tasks(service string) []taskRow {
	s.t.Helper()
	out := s.cli.MustDocker("service", "ps", "--no-trunc", "--format", "{{.Image}}|{{.DesiredState}}|{{.CurrentState}}|{{.Error}}", service)
	var rows []taskRow
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.SplitN(l, "|", 4)
		if len(f) != 4 {
			continue
		}
		rows = append(rows, taskRow{Image: f[0], Desired: f[1], State: reStateWord.FindString(f[2]), Error: f[3]})
	}
	return rows
}

// waitRunning waits for one running container of service and returns its
// task row.
func (s *pullsSide) waitRunning(service string) taskRow {
	s.t.Helper()
	var rows []taskRow
	waitFor(s.t, pullsTimeout, s.name+": "+service+" running", func() bool {
		rows = s.tasks(service)
		return len(s.running(service)) == 1 && len(rows) > 0 && rows[0].State == "Running"
	})
	return rows[0]
}

// waitRejected waits until service has at least n rejected tasks (the
// restart policy's retries) and returns its rows.
func (s *pullsSide) waitRejected(service string, n int) []taskRow {
	s.t.Helper()
	var rows []taskRow
	waitFor(s.t, pullsTimeout, fmt.Sprintf("%s: %d rejected tasks of %s", s.name, n, service), func() bool {
		rows = s.tasks(service)
		k := 0
		for _, r := range rows {
			if r.State == "Rejected" {
				k++
			}
		}
		return k >= n
	})
	return rows
}

// rejections are the distinct (state, error) pairs of rejected rows.
func rejections(rows []taskRow) []string {
	var out []string
	for _, r := range rows {
		if r.State == "Rejected" {
			out = append(out, r.State+" "+r.Error)
		}
	}
	return uniq(out)
}

var rePinned = regexp.MustCompile(`^(.+)@sha256:[0-9a-f]{64}$`)

// TestPullsFromRegistry: an image only in a registry runs as a service
// (the CLI pins it by digest through the passed-through distribution call,
// the node pulls it); one the registry does not have is rejected with the
// engine's "No such image" and retried by the restart policy with new
// tasks; an image the engine has runs although its registry is down. The
// same steps on Swarm give the same `docker service ps` states and errors.
func TestPullsFromRegistry(t *testing.T) {
	requireSwarm(t)
	reg := startRegistry(t, false)
	imgs := newPullsImages(t)
	sfx := imgs.suffix
	missing := reg.Addr + "/" + pullsRepo + "/nosuch:" + sfx
	// An image the engine has, in a registry nobody runs.
	local := fmt.Sprintf("127.0.0.1:%d/%s/local:%s", freePort(t), pullsRepo, sfx)
	imgs.make(local)

	type seen struct {
		pub, localRow  taskRow
		pubWarn        string
		missWarn       string
		missRejections []string
		missRows       int
	}
	run := func(s *pullsSide) seen {
		var v seen
		pub := reg.Addr + "/" + pullsRepo + "/box:" + s.name + sfx
		imgs.push(pub)

		v.pubWarn = s.create("pulls_pub_"+s.name+sfx, pub)
		v.pub = s.waitRunning("pulls_pub_" + s.name + sfx)
		m := rePinned.FindStringSubmatch(v.pub.Image)
		if m == nil || m[1] != pub {
			t.Errorf("%s: task image %q, want %s pinned by digest", s.name, v.pub.Image, pub)
		}
		if _, _, code := imgs.eng.Docker("image", "inspect", v.pub.Image); code != 0 {
			t.Errorf("%s: the engine does not have %s after the task ran", s.name, v.pub.Image)
		}

		v.missWarn = s.create("pulls_miss_"+s.name+sfx, missing)
		rows := s.waitRejected("pulls_miss_"+s.name+sfx, 2)
		v.missRejections, v.missRows = rejections(rows), len(rows)

		s.create("pulls_local_"+s.name+sfx, local)
		v.localRow = s.waitRunning("pulls_local_" + s.name + sfx)
		return v
	}

	swSide := swarmPullsSide(t)
	sw := run(swSide)
	// The hushd side must pull again: only the registry may have them.
	swSide.removeAll()
	imgs.drop()
	imgs.make(local)
	h := startSvcHushd(t)
	hu := run(hushPullsSide(t, h))

	t.Logf("swarm: %+v", sw)
	t.Logf("hushd: %+v", hu)
	wantErr := `"No such image: ` + missing + `"`
	for _, v := range []struct {
		side string
		s    seen
	}{{"swarm", sw}, {"hushd", hu}} {
		if len(v.s.missRejections) != 1 || v.s.missRejections[0] != "Rejected "+wantErr {
			t.Errorf("%s: rejected tasks show %q, want only %q", v.side, v.s.missRejections, "Rejected "+wantErr)
		}
		if !strings.Contains(v.s.missWarn, "could not be accessed on a registry to record") {
			t.Errorf("%s: no digest warning from the CLI for a missing image; stderr: %q", v.side, v.s.missWarn)
		}
		if strings.TrimSpace(v.s.pubWarn) != "" {
			t.Errorf("%s: warnings at create of a pullable image: %q", v.side, v.s.pubWarn)
		}
		if v.s.localRow.Image != local || v.s.localRow.State != "Running" {
			t.Errorf("%s: the local image with its registry down: %+v, want %s running", v.side, v.s.localRow, local)
		}
	}
	if sw.missWarn != hu.missWarn {
		t.Errorf("CLI warnings differ for a missing image:\nswarm: %q\nhushd: %q", sw.missWarn, hu.missWarn)
	}
	if sw.pub.State != hu.pub.State || sw.pub.Desired != hu.pub.Desired {
		t.Errorf("a pulled service: swarm %+v, hushd %+v", sw.pub, hu.pub)
	}
}

// TestPullsPrivateRegistry: a registry behind basic auth. With `docker
// login` (into the test's own DOCKER_CONFIG) and `--with-registry-auth`
// the service runs; without the flag the pull has no credentials and the
// task is rejected, as on Swarm. The credentials appear in no answer of
// hushd's, not in its debug log, and not in the clear in its data dir.
func TestPullsPrivateRegistry(t *testing.T) {
	requireSwarm(t)
	reg := startRegistry(t, true)
	imgs := newPullsImages(t)
	sfx := imgs.suffix
	imgs.eng.MustDockerStdin(reg.Password, "login", reg.Addr, "-u", reg.User, "--password-stdin")
	// The password, and its base64 at every alignment (the docker CLI's
	// config and the X-Registry-Auth header both hold it so).
	forms := canaryForms([]byte(reg.Password))

	run := func(s *pullsSide) (withAuth taskRow, without []string) {
		ref := reg.Addr + "/" + pullsRepo + "/private:" + s.name + sfx
		imgs.push(ref)
		s.cli.MustDockerStdin(reg.Password, "login", reg.Addr, "-u", reg.User, "--password-stdin")
		s.create("pulls_noauth_"+s.name+sfx, ref)
		without = rejections(s.waitRejected("pulls_noauth_"+s.name+sfx, 1))
		s.create("pulls_auth_"+s.name+sfx, "--with-registry-auth", ref)
		withAuth = s.waitRunning("pulls_auth_" + s.name + sfx)
		if m := rePinned.FindStringSubmatch(withAuth.Image); m == nil || m[1] != ref {
			t.Errorf("%s: task image %q, want %s pinned by digest", s.name, withAuth.Image, ref)
		}
		for _, svc := range []string{"pulls_auth_" + s.name + sfx, "pulls_noauth_" + s.name + sfx} {
			scanForCanary(t, s.name+": service inspect", svc, []byte(s.cli.MustDocker("service", "inspect", svc)), forms)
		}
		return withAuth, without
	}

	swSide := swarmPullsSide(t)
	swRow, swWithout := run(swSide)
	swSide.removeAll()
	imgs.drop()
	h := startSvcHushd(t)
	huRow, huWithout := run(hushPullsSide(t, h))

	side := func(rows []string, name string) []string {
		out := slices.Clone(rows)
		for i := range out {
			out[i] = strings.ReplaceAll(out[i], ":"+name+sfx, ":<side>"+sfx)
		}
		return out
	}
	if !slices.Equal(side(swWithout, "swarm"), side(huWithout, "hushd")) {
		t.Errorf("without --with-registry-auth: swarm %q, hushd %q", swWithout, huWithout)
	}
	if len(huWithout) != 1 || !strings.HasPrefix(huWithout[0], `Rejected "No such image: `) {
		t.Errorf("without --with-registry-auth: %q, want a rejection for the missing image", huWithout)
	}
	if swRow.State != huRow.State {
		t.Errorf("with --with-registry-auth: swarm %+v, hushd %+v", swRow, huRow)
	}

	// Nowhere in hushd's answers, log or data dir.
	for _, path := range []string{"/v1.41/services", "/v1.41/tasks", "/v1.41/services/pulls_auth_hushd" + sfx + "?insertDefaults=true"} {
		res := h.Raw("GET", path, "", nil)
		if res.Status != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, res.Status, res.Body)
		}
		scanForCanary(t, "hushd's answer to GET", path, res.Body, forms)
	}
	log, err := os.ReadFile(h.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	scanForCanary(t, "hushd's debug log", h.LogPath, log, forms)
	_ = filepath.WalkDir(h.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil {
			scanForCanary(t, "data dir file", path, b, forms)
		}
		return nil
	})
}

// TestPullsForeignNetwork: engine networks of a stack network's name that
// are not hushd's own. A user's bridge makes `stack deploy` fail as it
// fails on Swarm ("already exists"); one an earlier hushd left (its labels,
// another node) does not stop the stack: its tasks run on a network of
// hushd's own, and the foreign network is untouched and outlives `stack rm`.
func TestPullsForeignNetwork(t *testing.T) {
	requireSwarm(t)
	h := startHushd(t)
	requireSwarmNetworks(t, h)
	eng := stackEngine(t)
	sfx := runSuffix(t)
	img := stackImage(t, h, "pulls-stack-img-"+sfx)
	compose := "version: \"3.8\"\nservices:\n  web:\n    image: " + img + "\n"
	dir := stackWrite(t, map[string]string{"stack.yml": compose})
	file := filepath.Join(dir, "stack.yml")

	foreign := func(name string, labels ...string) (id, before string) {
		args := []string{"network", "create"}
		for _, l := range labels {
			args = append(args, "--label", l)
		}
		id = strings.TrimSpace(eng.MustDocker(append(args, name)...))
		t.Cleanup(func() { eng.Docker("network", "rm", id) })
		return id, eng.MustDocker("network", "inspect", id)
	}
	untouched := func(id, before string) {
		t.Helper()
		after, _, code := eng.Docker("network", "inspect", id)
		if code != 0 || after != before {
			t.Errorf("the foreign network %s changed or went:\nbefore %s\nafter %s", id, before, after)
		}
	}

	// A user's bridge of the name: refused on both, with the same text.
	user := "pullsu" + sfx
	uid, ubefore := foreign(user + "_default")
	_, swErr, swCode := swarmCLI(t).Docker("stack", "deploy", "-c", file, user)
	stackCleanupSwarm(t, user)
	_, huErr, huCode := h.Docker("stack", "deploy", "-c", file, user)
	stackCleanup(t, h, user)
	want := "failed to create network " + user + "_default: Error response from daemon: network with name " + user + "_default already exists"
	if swCode == 0 || huCode == 0 || !strings.Contains(swErr, want) || !strings.Contains(huErr, want) {
		t.Errorf("stack deploy beside a user's network %s_default:\nswarm (exit %d): %s\nhushd (exit %d): %s\nwant both to fail with %q", user, swCode, swErr, huCode, huErr, want)
	}
	untouched(uid, ubefore)

	// What an earlier hushd (another node ID, its data dir gone) left.
	stack := "pulls" + sfx
	lid, lbefore := foreign(stack+"_default",
		"io.hush.network.id=pullsleftover"+sfx, "io.hush.node.id=pullsoldnode"+sfx, "com.docker.stack.namespace="+stack)
	stackCleanup(t, h, stack)
	h.MustDocker("stack", "deploy", "-c", file, stack)
	cs := stackRunning(t, h, stack+"_web", 1)
	nets := strings.Fields(eng.MustDocker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.NetworkID}} {{end}}", cs[0]))
	if len(nets) != 1 || nets[0] == lid {
		t.Fatalf("the task's container is on %v; want one network, not the leftover %s", nets, lid)
	}
	if labels := eng.MustDocker("network", "inspect", "--format", "{{index .Labels \"io.hush.node.id\"}}", nets[0]); strings.TrimSpace(labels) != nodeID(t, h) {
		t.Errorf("the task's network %s is not this hushd's (node label %q)", nets[0], labels)
	}
	untouched(lid, lbefore)
	stackRemove(t, h, stack)
	untouched(lid, lbefore)
}

// stackCleanupSwarm removes a Swarm stack when the test ends, in case the
// deploy got further than it should.
func stackCleanupSwarm(t *testing.T, stack string) {
	t.Cleanup(func() {
		sw := swarmCLI(t)
		if out, _, _ := sw.Docker("stack", "ls", "--format", "{{.Name}}"); slices.Contains(strings.Fields(out), stack) {
			sw.Docker("stack", "rm", stack)
		}
	})
}

// TestPullsEngineURL: `--engine unix:///var/run/docker.sock`, the form of
// DOCKER_HOST, serves the swarm API (a service runs) and the pass-through
// (`docker ps`, `docker version` through hushd); other schemes are refused
// at start, by name.
func TestPullsEngineURL(t *testing.T) {
	requireHushd(t)
	img := enginetest.BusyboxImage(t)
	h := startHushd(t, withArgs("--engine", "unix://"+enginetest.Socket))
	node := nodeID(t, h)
	t.Cleanup(func() { purgeNode(t, node) })

	if out := h.MustDocker("version", "--format", "{{.Server.Version}}"); strings.TrimSpace(out) == "" {
		t.Fatal("docker version through hushd shows no engine version")
	}
	svc := "pulls_url_" + runSuffix(t)
	h.MustDocker(append([]string{"service", "create", "--detach", "--name", svc, img}, taskLoop...)...)
	t.Cleanup(func() {
		h.Docker("service", "rm", svc)
		eventually(t, pullsTimeout, svc+"'s container gone", func() bool {
			out, _, _ := h.Docker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+svc)
			return strings.TrimSpace(out) == ""
		})
	})
	var ids []string
	eventually(t, pullsTimeout, svc+" running", func() bool {
		ids = hushContainers(t, h, svc)
		return len(ids) == 1
	})
	ps := h.MustDocker("ps", "--no-trunc", "--filter", "label=com.docker.swarm.service.name="+svc, "--format", "{{.ID}} {{.Names}}")
	if !strings.Contains(ps, ids[0]) || !strings.Contains(ps, svc+".1.") {
		t.Fatalf("docker ps through hushd: %q, want the task container %s", ps, ids[0])
	}

	for _, bad := range []struct{ arg, want string }{
		{"tcp://127.0.0.1:2375", `scheme "tcp" is not supported`},
		{"ssh://pulls@127.0.0.1", `scheme "ssh" is not supported`},
		{"unix://", "names no socket path"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, hushdBin, "--data-dir", t.TempDir(), "--socket", filepath.Join(t.TempDir(), "h.sock"), "--engine", bad.arg)
		out, err := cmd.CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "bad --engine") || !strings.Contains(string(out), bad.want) {
			t.Errorf("hushd --engine %s: %v\n%s\nwant exit 2 naming %q", bad.arg, err, out, bad.want)
		}
	}
}
