package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// Secrets for standalone containers (docker run, compose without swarm):
// containers created through hushd with io.hush.* labels.

type saSide struct {
	t    *testing.T
	h    *Hushd
	eng  *dockerCLI // the engine itself, bypassing hushd
	img  string
	node string
	pfx  string
}

func startSa(t *testing.T, opts ...hushdOption) *saSide {
	t.Helper()
	img := enginetest.BusyboxImage(t)
	h := startHushd(t, opts...)
	s := &saSide{t: t, h: h, eng: newDockerCLI(t, enginetest.Socket), img: img, node: nodeID(t, h), pfx: "sa" + randHex(t, 4)}
	t.Cleanup(s.cleanup)
	return s
}

// root is where the containers' tmpfs mounts are.
func (s *saSide) root() string { return filepath.Join("/run/hush", s.node+".containers") }

func (s *saSide) mounts() []string { return mountsUnder(s.t, s.root()) }

// cleanup removes the test's containers (by name prefix, on the engine)
// and whatever mounts they left.
func (s *saSide) cleanup() {
	out, _, _ := s.eng.Docker("ps", "-aq", "--no-trunc", "--filter", "name=^"+s.pfx)
	if ids := strings.Fields(out); len(ids) > 0 {
		s.eng.Docker(append([]string{"rm", "-f", "-v"}, ids...)...)
	}
	mps := s.mounts()
	for i := len(mps) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mps[i], syscall.MNT_DETACH)
	}
	if len(s.mounts()) == 0 {
		_ = os.RemoveAll(s.root())
	}
}

func (s *saSide) run(name string, labels ...string) string {
	s.t.Helper()
	args := []string{"run", "-d", "--name", name}
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	args = append(args, s.img, "sleep", "600")
	return strings.TrimSpace(s.h.MustDocker(args...))
}

// grantMount is the tmpfs mount point a container's bind mounts point into.
func (s *saSide) grantMount(ctr string) string {
	s.t.Helper()
	out := s.eng.MustDocker("inspect", "--format", "{{range .HostConfig.Mounts}}{{.Source}}\n{{end}}", ctr)
	for _, src := range strings.Fields(out) {
		if strings.HasPrefix(src, s.root()+"/") {
			return filepath.Dir(src)
		}
	}
	s.t.Fatalf("container %s has no mount under %s: %q", ctr, s.root(), out)
	return ""
}

func (s *saSide) noContainer(name string) {
	s.t.Helper()
	if out := strings.TrimSpace(s.eng.MustDocker("ps", "-aq", "--filter", "name=^"+name+"$")); out != "" {
		s.t.Fatalf("container %s exists (%s) after a refused create", name, out)
	}
}

func TestSaRunLabels(t *testing.T) {
	s := startSa(t)
	h := s.h
	canary := "hushsacanary" + randHex(t, 16)
	forms := canaryForms([]byte(canary))
	h.MustDockerStdin(canary, "secret", "create", "sa_db", "-")
	h.MustDockerStdin("api-key-value", "secret", "create", "sa_key", "-")
	h.MustDockerStdin("listen=80\n", "config", "create", "sa_conf", "-")

	app := s.pfx + "-app"
	id := s.run(app, "io.hush.secrets=sa_db", "io.hush.secret.sa_key=target=/etc/app/key,uid=1000,gid=1000,mode=0400", "io.hush.configs=sa_conf")
	check := func(when string) {
		t.Helper()
		if got := h.MustDocker("exec", app, "cat", "/run/secrets/sa_db"); got != canary {
			t.Fatalf("%s: /run/secrets/sa_db = %q", when, got)
		}
		if got := h.MustDocker("exec", app, "cat", "/etc/app/key"); got != "api-key-value" {
			t.Fatalf("%s: /etc/app/key = %q", when, got)
		}
		if got := h.MustDocker("exec", app, "cat", "/sa_conf"); got != "listen=80\n" {
			t.Fatalf("%s: /sa_conf = %q", when, got)
		}
		got := strings.TrimSpace(h.MustDocker("exec", app, "stat", "-c", "%u %g %a %n", "/run/secrets/sa_db", "/etc/app/key", "/sa_conf"))
		want := "0 0 444 /run/secrets/sa_db\n1000 1000 400 /etc/app/key\n0 0 444 /sa_conf"
		if got != want {
			t.Fatalf("%s: owners and modes\n%s\nwant\n%s", when, got, want)
		}
		mounts := h.MustDocker("exec", app, "cat", "/proc/mounts")
		for _, p := range []string{"/run/secrets/sa_db", "/etc/app/key", "/sa_conf"} {
			fstype, opts, ok := containerMount(t, mounts, p)
			if !ok || fstype != "tmpfs" || !slices.Contains(opts, "ro") {
				t.Fatalf("%s: %s mounted as %q %v (found %v), want a read-only tmpfs", when, p, fstype, opts, ok)
			}
		}
		// The host side: a read-only tmpfs with nodev, nosuid, noexec.
		var sfs syscall.Statfs_t
		if err := syscall.Statfs(s.grantMount(app), &sfs); err != nil {
			t.Fatal(err)
		}
		const stRdonly, stNosuid, stNodev, stNoexec = 1, 2, 4, 8
		if sfs.Type != 0x01021994 || sfs.Flags&(stRdonly|stNosuid|stNodev|stNoexec) != stRdonly|stNosuid|stNodev|stNoexec {
			t.Fatalf("%s: host tmpfs type %#x flags %#x", when, sfs.Type, sfs.Flags)
		}
	}
	check("after run")

	inspect := h.MustDocker("inspect", app)
	scanForCanary(t, "docker inspect", app, []byte(inspect), forms)
	if !strings.Contains(inspect, `"io.hush.secrets": "sa_db"`) || !strings.Contains(inspect, `"Target": "/run/secrets/sa_db"`) {
		t.Fatalf("docker inspect lacks the labels or the mount:\n%s", inspect)
	}

	// In use: refused with Swarm's text, container where Swarm says service.
	_, errOut, code := h.Docker("secret", "rm", "sa_db")
	if want := "secret 'sa_db' is in use by the following container: " + app; code == 0 || !strings.Contains(errOut, want) {
		t.Fatalf("secret rm in use: exit %d %q, want %q", code, errOut, want)
	}
	if _, errOut, code := h.Docker("config", "rm", "sa_conf"); code == 0 || !strings.Contains(errOut, "config 'sa_conf' is in use by the following container: "+app) {
		t.Fatalf("config rm in use: exit %d %q", code, errOut)
	}

	// Who holds it: hush's own API.
	res := h.Raw("GET", "/hush/v1/secrets/sa_db/holders", "", nil)
	var holders []struct {
		Kind, ID, Name, Service string
		Version                 int
		Since                   time.Time
	}
	if res.Status != 200 || json.Unmarshal(res.Body, &holders) != nil || len(holders) != 1 ||
		holders[0].Kind != "container" || holders[0].ID != id || holders[0].Name != app || holders[0].Since.IsZero() {
		t.Fatalf("holders: %d %s", res.Status, res.Body)
	}

	// A rename is followed: the in-use text names the container as it is now.
	h.MustDocker("rename", app, app+"-renamed")
	eventually(t, 30*time.Second, "the in-use text naming the renamed container", func() bool {
		_, errOut, _ := h.Docker("secret", "rm", "sa_db")
		return strings.Contains(errOut, "in use by the following container: "+app+"-renamed")
	})
	h.MustDocker("rename", app+"-renamed", app)

	h.MustDocker("restart", "-t", "1", app)
	check("after docker restart")
	h.MustDocker("stop", "-t", "1", app)
	h.MustDocker("start", app)
	check("after stop and start")

	mp := s.grantMount(app)
	// Nothing of the value on disk: the engine's files of this container.
	rootDir := strings.TrimSpace(s.eng.MustDocker("info", "--format", "{{.DockerRootDir}}"))
	scanTree(t, filepath.Join(rootDir, "containers", id), forms)

	h.MustDocker("rm", "-f", app)
	eventually(t, 30*time.Second, "the tmpfs of the removed container gone", func() bool { return !slices.Contains(s.mounts(), mp) })
	h.MustDocker("secret", "rm", "sa_db")

	// --rm: the mount goes when the container exits.
	out := h.MustDocker("run", "--rm", "--name", s.pfx+"-once", "--label", "io.hush.secrets=sa_key", s.img, "cat", "/run/secrets/sa_key")
	if out != "api-key-value" {
		t.Fatalf("--rm container read %q", out)
	}
	eventually(t, 30*time.Second, "no container tmpfs left", func() bool { return len(s.mounts()) == 0 })

	h.Stop()
	scanTree(t, h.DataDir, forms)
	if b, err := os.ReadFile(h.LogPath); err == nil {
		scanForCanary(t, "hushd log", h.LogPath, b, forms)
	}
}

func scanTree(t *testing.T, root string, forms map[string][]byte) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		scanForCanary(t, "file", p, b, forms)
		return nil
	})
	if err != nil {
		t.Fatalf("scanning %s: %v", root, err)
	}
	if n == 0 {
		t.Fatalf("no file under %s: the scan looked at nothing", root)
	}
}

func TestSaRefusals(t *testing.T) {
	s := startSa(t)
	h := s.h
	h.MustDockerStdin("v", "secret", "create", "sa_there", "-")
	tests := []struct {
		label string
		msg   string
	}{
		{"io.hush.secrets=sa_there,sa_missing", "secret not found: sa_missing"},
		{"io.hush.secret.sa_there=target=../../etc/passwd", `must not contain ".."`},
		{"io.hush.secret.sa_there=moed=0400", `unknown option "moed"`},
		{"io.hush.other=1", `unknown label "io.hush.other"`},
		{"io.hush.configs=sa_there", "config not found: sa_there"},
	}
	for i, tt := range tests {
		name := s.pfx + "-bad" + string(rune('a'+i))
		_, errOut, code := h.Docker("run", "-d", "--name", name, "--label", tt.label, s.img, "true")
		if code == 0 || !strings.Contains(errOut, tt.msg) {
			t.Errorf("%s: exit %d %q, want %q", tt.label, code, errOut, tt.msg)
		}
		if strings.Contains(errOut, "Unable to find image") || strings.Contains(errOut, "pull") {
			t.Errorf("%s: the CLI tried to pull: %q", tt.label, errOut)
		}
		s.noContainer(name)
	}
	both := s.pfx + "-both"
	if _, errOut, code := h.Docker("run", "-d", "--name", both, "--label", "io.hush.secrets=sa_there", "--label", "io.hush.secret.sa_there=", s.img, "true"); code == 0 || !strings.Contains(errOut, "named both") {
		t.Errorf("both forms: exit %d %q", code, errOut)
	}
	s.noContainer(both)
	if m := s.mounts(); len(m) != 0 {
		t.Fatalf("refused creates left mounts: %v", m)
	}
	// No grant either: the secret is not in use.
	h.MustDocker("secret", "rm", "sa_there")
}

// TestSaHushdKill9: hushd killed with two such containers running; one is
// removed through the engine while hushd is down. After the restart the
// survivor still reads its secret and the removed one's mount is gone. Then
// a reboot is simulated (the survivor stopped, its tmpfs gone): hushd
// re-provisions it at start, and the container starts with its secret.
func TestSaHushdKill9(t *testing.T) {
	s := startSa(t)
	h := s.h
	h.MustDockerStdin("kept-value", "secret", "create", "sa_k", "-")
	a, b := s.pfx+"-a", s.pfx+"-b"
	s.run(a, "io.hush.secrets=sa_k")
	s.run(b, "io.hush.secrets=sa_k")
	ma, mb := s.grantMount(a), s.grantMount(b)

	h.Kill()
	s.eng.MustDocker("rm", "-f", b)
	h.start()
	eventually(t, 30*time.Second, "the removed container's tmpfs gone", func() bool { return !slices.Contains(s.mounts(), mb) })
	if !slices.Contains(s.mounts(), ma) {
		t.Fatalf("the survivor's tmpfs %s is gone: %v", ma, s.mounts())
	}
	if got := h.MustDocker("exec", a, "cat", "/run/secrets/sa_k"); got != "kept-value" {
		t.Fatalf("survivor reads %q", got)
	}
	if _, errOut, code := h.Docker("secret", "rm", "sa_k"); code == 0 || !strings.Contains(errOut, "in use by the following container: "+a) {
		t.Fatalf("secret rm after restart: exit %d %q", code, errOut)
	}

	// A reboot: the container stopped, /run emptied.
	h.Kill()
	s.eng.MustDocker("stop", "-t", "1", a)
	if err := syscall.Unmount(ma, syscall.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(ma); err != nil {
		t.Fatal(err)
	}
	// Without its tmpfs the container must not start with empty files.
	if _, _, code := s.eng.Docker("start", a); code == 0 {
		t.Fatal("a container whose tmpfs is missing started")
	}
	h.start()
	eventually(t, 30*time.Second, "the survivor's tmpfs re-provisioned", func() bool { return slices.Contains(s.mounts(), ma) })
	h.MustDocker("start", a)
	if got := h.MustDocker("exec", a, "cat", "/run/secrets/sa_k"); got != "kept-value" {
		t.Fatalf("after the reboot the container reads %q", got)
	}
}

// TestSaCompose: Debian's docker-compose (1.29, no swarm) pointed at hushd:
// a service's labels bring it a secret made beforehand with docker secret
// create, through up -d, restart and down.
func TestSaCompose(t *testing.T) {
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		skipOrFatal(t, "docker-compose not installed (apt-get install docker-compose)")
	}
	s := startSa(t)
	h := s.h
	h.MustDockerStdin("compose-value", "secret", "create", "sa_compose", "-")
	dir := t.TempDir()
	file := filepath.Join(dir, "docker-compose.yml")
	yml := `version: "3.7"
services:
  web:
    image: ` + s.img + `
    command: ["sleep", "600"]
    labels:
      io.hush.secrets: sa_compose
      io.hush.secret.sa_compose2: "target=/etc/web/key,uid=33,mode=0400"
`
	h.MustDockerStdin("second", "secret", "create", "sa_compose2", "-")
	if err := os.WriteFile(file, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	project := s.pfx + "proj"
	compose := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"-p", project, "-f", file}, args...)...)
		env := []string{}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "DOCKER_") && !strings.HasPrefix(kv, "COMPOSE_") {
				env = append(env, kv)
			}
		}
		cmd.Env = append(env, "DOCKER_HOST=unix://"+h.Socket, "DOCKER_CONFIG="+h.configDir)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	t.Cleanup(func() {
		out, _, _ := s.eng.Docker("ps", "-aq", "--filter", "label=com.docker.compose.project="+project)
		if ids := strings.Fields(out); len(ids) > 0 {
			s.eng.Docker(append([]string{"rm", "-f", "-v"}, ids...)...)
		}
		s.eng.Docker("network", "rm", project+"_default")
	})
	compose("up", "-d")
	ctr := project + "_web_1"
	read := func(when string) {
		t.Helper()
		if got := h.MustDocker("exec", ctr, "cat", "/run/secrets/sa_compose"); got != "compose-value" {
			t.Fatalf("%s: /run/secrets/sa_compose = %q", when, got)
		}
		if got := strings.TrimSpace(h.MustDocker("exec", ctr, "stat", "-c", "%u %g %a", "/etc/web/key")); got != "33 0 400" {
			t.Fatalf("%s: /etc/web/key owner and mode %q", when, got)
		}
	}
	read("after up -d")
	compose("restart", "-t", "1")
	read("after restart")
	compose("up", "-d") // unchanged: the container is kept
	read("after a second up -d")
	if _, errOut, code := h.Docker("secret", "rm", "sa_compose"); code == 0 || !strings.Contains(errOut, "in use by the following container: "+ctr) {
		t.Fatalf("secret rm while compose runs: exit %d %q", code, errOut)
	}
	compose("down", "-t", "1")
	eventually(t, 30*time.Second, "no container tmpfs left after down", func() bool { return len(s.mounts()) == 0 })
	h.MustDocker("secret", "rm", "sa_compose", "sa_compose2")
}

// TestSaAutolock: while hushd is locked a labelled create answers 503 with
// Swarm's locked text (an unlabelled one still passes through), and a
// container whose tmpfs vanished meanwhile (a reboot) gets it back at
// unlock, before it is started again.
func TestSaAutolock(t *testing.T) {
	s := startSa(t)
	h := s.h
	h.MustDockerStdin("locked-value", "secret", "create", "sa_l", "-")
	app := s.pfx + "-locked"
	s.run(app, "io.hush.secrets=sa_l")
	mp := s.grantMount(app)
	out := h.MustDocker("swarm", "update", "--autolock=true")
	key := strings.TrimSpace(h.MustDocker("swarm", "unlock-key", "-q"))
	if !strings.Contains(out, key) {
		t.Fatalf("unlock key %q not printed at enable", key)
	}

	h.Kill()
	s.eng.MustDocker("stop", "-t", "1", app)
	if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(mp); err != nil {
		t.Fatal(err)
	}
	h.start()
	if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "locked" {
		t.Fatalf("state after restart: %q", st)
	}
	other := s.pfx + "-waits"
	_, errOut, code := h.Docker("run", "-d", "--name", other, "--label", "io.hush.secrets=sa_l", s.img, "true")
	if code == 0 || !strings.Contains(errOut, `Swarm is encrypted and needs to be unlocked before it can be used. Please use "docker swarm unlock" to unlock it.`) {
		t.Fatalf("labelled run while locked: exit %d %q", code, errOut)
	}
	s.noContainer(other)
	if got := h.MustDocker("run", "--rm", "--name", s.pfx+"-plain", "--label", "app=x", s.img, "echo", "plain"); strings.TrimSpace(got) != "plain" {
		t.Fatalf("unlabelled run while locked: %q", got)
	}
	if slices.Contains(s.mounts(), mp) {
		t.Fatal("the tmpfs was made while locked")
	}

	h.MustDockerStdin(key+"\n", "swarm", "unlock")
	eventually(t, 30*time.Second, "the tmpfs re-provisioned at unlock", func() bool { return slices.Contains(s.mounts(), mp) })
	h.MustDocker("start", app)
	if got := h.MustDocker("exec", app, "cat", "/run/secrets/sa_l"); got != "locked-value" {
		t.Fatalf("after unlock the container reads %q", got)
	}
}

// TestSaVolumesFrom: a labelled container that also takes another's
// mounts (--volumes-from, compose's volumes_from), so that its binds reach
// into the other's tmpfs too, must keep its own grant at a reconcile and
// not take the other's over (the engine lists mounts in random order:
// the borrower lost its own tmpfs at one restart of hushd in two).
func TestSaVolumesFrom(t *testing.T) {
	s := startSa(t)
	h := s.h
	h.MustDockerStdin("owner-value", "secret", "create", "sa_vf_a", "-")
	h.MustDockerStdin("borrower-value", "secret", "create", "sa_vf_b", "-")
	a, b := s.pfx+"-owner", s.pfx+"-borrower"
	s.run(a, "io.hush.secrets=sa_vf_a")
	h.MustDocker("run", "-d", "--name", b, "--label", "io.hush.secrets=sa_vf_b", "--volumes-from", a, s.img, "sleep", "600")
	ma := s.grantMount(a)
	var mb string
	for _, m := range s.mounts() {
		if m != ma {
			mb = m
		}
	}

	// A reconcile (hushd restarted), seen through to its end: its last
	// step removes a directory no grant names.
	h.Kill()
	orphan := filepath.Join(s.root(), "zz"+randHex(t, 8))
	if err := os.Mkdir(orphan, 0o700); err != nil {
		t.Fatal(err)
	}
	h.start()
	eventually(t, 30*time.Second, "the reconcile done", func() bool { _, err := os.Stat(orphan); return os.IsNotExist(err) })
	if got := s.mounts(); !slices.Contains(got, ma) || !slices.Contains(got, mb) {
		t.Fatalf("after the reconcile the mounts are %v, want both %s and %s", got, ma, mb)
	}
	h.MustDocker("restart", "-t", "1", b)
	if got := h.MustDocker("exec", b, "cat", "/run/secrets/sa_vf_b"); got != "borrower-value" {
		t.Fatalf("borrower reads %q after the reconcile", got)
	}

	h.MustDocker("rm", "-f", b)
	s.run(s.pfx+"-marker", "io.hush.secrets=sa_vf_b") // a create after the removal was followed
	eventually(t, 30*time.Second, "the borrower's tmpfs gone", func() bool { return len(s.mounts()) == 2 })
	if !slices.Contains(s.mounts(), ma) {
		t.Fatalf("the owner's tmpfs %s went with the borrower: %v", ma, s.mounts())
	}
	h.MustDocker("restart", "-t", "1", a)
	if got := h.MustDocker("exec", a, "cat", "/run/secrets/sa_vf_a"); got != "owner-value" {
		t.Fatalf("owner reads %q after the borrower's removal", got)
	}
	if _, errOut, code := h.Docker("secret", "rm", "sa_vf_a"); code == 0 || !strings.Contains(errOut, "in use by the following container: "+a) {
		t.Fatalf("secret rm: exit %d %q", code, errOut)
	}
}
