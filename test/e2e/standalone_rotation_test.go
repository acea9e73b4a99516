package e2e

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Rotation reaching standalone containers: `docker run` with io.hush.*
// labels through hushd, `hush secret rotate`, and the container's files
// swapped under it.

// hush runs the hush CLI against s's hushd.
func (s *saSide) hush(args ...string) (string, string, int) {
	s.t.Helper()
	return runBin(s.t, []string{"DOCKER_HOST=unix://" + s.h.Socket, "DOCKER_CONFIG=" + s.t.TempDir()}, hushCLI(s.t), args...)
}

func (s *saSide) mustHush(args ...string) string {
	s.t.Helper()
	out, errOut, code := s.hush(args...)
	if code != 0 {
		s.t.Fatalf("hush %s: exit %d\n%s\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// runCmd is run with a command of the test's own.
func (s *saSide) runCmd(name string, labels []string, cmd ...string) string {
	s.t.Helper()
	args := []string{"run", "-d", "--name", name}
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	args = append(append(args, s.img), cmd...)
	return strings.TrimSpace(s.h.MustDocker(args...))
}

// state is the container's ID, start time and restart count, from the
// engine itself.
func (s *saSide) state(ctr string) string {
	s.t.Helper()
	return strings.TrimSpace(s.eng.MustDocker("inspect", "--format", "{{.Id}} {{.State.StartedAt}} {{.RestartCount}} {{.State.Running}}", ctr))
}

// heldVersion is the version of the secret the holders API says ctr has.
func (s *saSide) heldVersion(secret, ctr string) int {
	s.t.Helper()
	var hs []struct {
		Kind, Name string
		Version    int
	}
	res := s.h.Raw("GET", "/hush/v1/secrets/"+secret+"/holders", "", nil)
	if res.Status != 200 {
		s.t.Fatalf("holders of %s: %d %s", secret, res.Status, res.Body)
	}
	if err := json.Unmarshal(res.Body, &hs); err != nil {
		s.t.Fatalf("holders of %s: %v: %s", secret, err, res.Body)
	}
	for _, h := range hs {
		if h.Kind == "container" && h.Name == ctr {
			return h.Version
		}
	}
	s.t.Fatalf("%s is not among the holders of %s: %s", ctr, secret, res.Body)
	return 0
}

func (s *saSide) reads(ctr, file, want string) bool {
	out, _, code := s.h.Docker("exec", ctr, "cat", file)
	return code == 0 && out == want
}

// TestSaRotationReload: a `docker run` container with a labelled secret
// (the default mode, reload) gets a rotated value in place: same
// container, not restarted, and a reader looping over the file all along
// never sees anything but one whole value or the other. `hush secret
// versions` names the container against the version it holds.
func TestSaRotationReload(t *testing.T) {
	s := startSa(t)
	one, two := strings.Repeat("1", 4096), strings.Repeat("2", 4096)
	s.h.MustDockerStdin(one, "secret", "create", "sa_rot", "-")
	app := s.pfx + "-rot"
	s.run(app, "io.hush.secrets=sa_rot")
	before := s.state(app)
	id := strings.Fields(before)[0]

	// The reader: every read must be one value or the other, whole.
	reader := `n=0; while [ ! -e /tmp/stop ]; do v=$(cat /run/secrets/sa_rot); n=$((n+1)); ` +
		`if [ "$v" != "$A" ] && [ "$v" != "$B" ]; then echo "torn read of ${#v} bytes" >> /tmp/bad; fi; ` +
		`if [ "$v" = "$B" ]; then echo $n > /tmp/sawnew; fi; done; echo $n > /tmp/reads`
	s.h.MustDocker("exec", "-d", "-e", "A="+one, "-e", "B="+two, app, "sh", "-c", reader)
	time.Sleep(300 * time.Millisecond)

	vs := s.mustHush("secret", "versions", "--format", "{{.Version}}|{{.HeldBy}}", "sa_rot")
	if want := "1 *|container " + app + " (" + id[:12] + ")\n"; vs != want {
		t.Fatalf("versions before the rotation:\n%s\nwant\n%s", vs, want)
	}
	s.mustHush("secret", "rotate", "sa_rot", valueFile(t, two))
	eventually(t, 30*time.Second, "the container reading the new value", func() bool { return s.reads(app, "/run/secrets/sa_rot", two) })
	eventually(t, 30*time.Second, "the grant recording version 2", func() bool { return s.heldVersion("sa_rot", app) == 2 })
	eventually(t, 10*time.Second, "the reader seeing the new value", func() bool {
		_, _, code := s.h.Docker("exec", app, "test", "-e", "/tmp/sawnew")
		return code == 0
	})
	s.h.MustDocker("exec", app, "touch", "/tmp/stop")
	eventually(t, 10*time.Second, "the reader done", func() bool {
		_, _, code := s.h.Docker("exec", app, "test", "-e", "/tmp/reads")
		return code == 0
	})
	if bad, _, _ := s.h.Docker("exec", app, "cat", "/tmp/bad"); bad != "" {
		t.Fatalf("the reader saw torn values:\n%s", bad)
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(s.h.MustDocker("exec", app, "cat", "/tmp/reads"))); n < 10 {
		t.Fatalf("the reader read only %d times", n)
	}
	if after := s.state(app); after != before {
		t.Fatalf("the container changed: %q, was %q (want the same ID, start time, no restart)", after, before)
	}
	vs = s.mustHush("secret", "versions", "--format", "{{.Version}}|{{.HeldBy}}", "sa_rot")
	if want := "1|-\n2 *|container " + app + " (" + id[:12] + ")\n"; vs != want {
		t.Fatalf("versions after the rotation:\n%s\nwant\n%s", vs, want)
	}
	js := s.mustHush("secret", "versions", "--format", "json", "sa_rot")
	if !strings.Contains(js, `"Kind":"container","ContainerName":"`+app+`"`) {
		t.Fatalf("json versions name no container: %s", js)
	}
	// Not held any more: version 1 may go.
	s.mustHush("secret", "destroy", "--version", "1", "sa_rot")
}

// TestSaRotationSignal: io.hush.rotate=signal:SIGHUP sends the container
// SIGHUP after its file changed: the trap reads the new value.
func TestSaRotationSignal(t *testing.T) {
	s := startSa(t)
	s.h.MustDockerStdin("sig-one", "secret", "create", "sa_sig", "-")
	app := s.pfx + "-sig"
	s.runCmd(app, []string{"io.hush.secrets=sa_sig", "io.hush.rotate=signal:SIGHUP"},
		"sh", "-c", `trap 'cat /run/secrets/sa_sig >> /tmp/onhup; echo >> /tmp/onhup' HUP; touch /tmp/ready; while true; do sleep 0.2; done`)
	// A signal before the trap is set would be lost (PID 1 ignores it).
	eventually(t, 30*time.Second, "the trap set", func() bool { _, _, code := s.h.Docker("exec", app, "test", "-e", "/tmp/ready"); return code == 0 })
	before := s.state(app)
	s.mustHush("secret", "rotate", "sa_sig", valueFile(t, "sig-two"))
	eventually(t, 30*time.Second, "the trap having run", func() bool { _, _, code := s.h.Docker("exec", app, "test", "-s", "/tmp/onhup"); return code == 0 })
	// One signal, sent once the file held the new value.
	time.Sleep(time.Second)
	if got := s.h.MustDocker("exec", app, "cat", "/tmp/onhup"); got != "sig-two\n" {
		t.Fatalf("the trap read %q, want the new value once", got)
	}
	eventually(t, 30*time.Second, "the grant recording version 2", func() bool { return s.heldVersion("sa_sig", app) == 2 })
	if after := s.state(app); after != before {
		t.Fatalf("the container changed: %q, was %q", after, before)
	}
}

// TestSaRotationRestartMode: a secret at an absolute target cannot be
// swapped; by default a rotation restarts the container (through the
// engine), which then reads the new value. reload asked of such a target
// is refused at create, naming the label.
func TestSaRotationRestartMode(t *testing.T) {
	s := startSa(t)
	s.h.MustDockerStdin("abs-one", "secret", "create", "sa_abs", "-")
	bad := s.pfx + "-bad"
	_, errOut, code := s.h.Docker("run", "-d", "--name", bad, "--label", "io.hush.secret.sa_abs=target=/etc/abs", "--label", "io.hush.rotate=reload", s.img, "true")
	if code == 0 || !strings.Contains(errOut, "label io.hush.rotate=reload: secret sa_abs has the target /etc/abs") {
		t.Fatalf("reload of an absolute target: exit %d %q", code, errOut)
	}
	s.noContainer(bad)
	_, errOut, code = s.h.Docker("run", "-d", "--name", bad, "--label", "io.hush.secrets=sa_abs", "--label", "io.hush.rotate=sometimes", s.img, "true")
	if code == 0 || !strings.Contains(errOut, "label io.hush.rotate") {
		t.Fatalf("a bad mode: exit %d %q", code, errOut)
	}
	s.noContainer(bad)

	app := s.pfx + "-abs"
	s.run(app, "io.hush.secret.sa_abs=target=/etc/abs")
	before := strings.Fields(s.state(app))
	s.mustHush("secret", "rotate", "sa_abs", valueFile(t, "abs-two"))
	eventually(t, 60*time.Second, "the restarted container reading the new value", func() bool { return s.reads(app, "/etc/abs", "abs-two") })
	eventually(t, 30*time.Second, "the grant recording version 2", func() bool { return s.heldVersion("sa_abs", app) == 2 })
	after := strings.Fields(s.state(app))
	if after[0] != before[0] || after[1] == before[1] || after[3] != "true" {
		t.Fatalf("want the same container restarted: %v, was %v", after, before)
	}
}

// TestSaRotationKill9: hushd killed between swapping a container's files
// and recording the version it delivered (a failpoint hangs it there).
// While it hangs the grant still records version 1, so destroying it is
// refused, naming the container; after the restart the delivery is done
// again and recorded, and version 1 may then be destroyed.
func TestSaRotationKill9(t *testing.T) {
	s := startSa(t, withEnv("HUSH_TEST_FAILPOINTS=standalone-record=hang"))
	if b, _ := os.ReadFile(s.h.LogPath); strings.Contains(string(b), "HUSH_TEST_FAILPOINTS ignored") {
		t.Fatal("this hushd has no failpoints: build it with -tags hushfailpoints (HUSH_E2E_HUSHD)")
	}
	s.h.MustDockerStdin("crash-one", "secret", "create", "sa_crash", "-")
	app := s.pfx + "-crash"
	s.run(app, "io.hush.secrets=sa_crash")
	before := s.state(app)
	s.mustHush("secret", "rotate", "sa_crash", valueFile(t, "crash-two"))
	eventually(t, 30*time.Second, "hushd hanging at the failpoint", func() bool {
		b, _ := os.ReadFile(s.h.LogPath)
		return strings.Contains(string(b), "failpoint reached") && strings.Contains(string(b), "standalone-record")
	})
	if !s.reads(app, "/run/secrets/sa_crash", "crash-two") {
		t.Fatal("the files were not swapped before the failpoint")
	}
	if v := s.heldVersion("sa_crash", app); v != 1 {
		t.Fatalf("the grant records version %d before the record step", v)
	}
	_, errOut, code := s.hush("secret", "destroy", "--version", "1", "sa_crash")
	if code == 0 || !strings.Contains(errOut, "held by 1 container(s): "+app) {
		t.Fatalf("destroy of a version a container holds: exit %d %q", code, errOut)
	}

	s.h.Kill()
	s.h.env = nil
	s.h.start()
	eventually(t, 30*time.Second, "the grant recording version 2 after the restart", func() bool { return s.heldVersion("sa_crash", app) == 2 })
	if !s.reads(app, "/run/secrets/sa_crash", "crash-two") {
		t.Fatal("after the restart the container does not read the new value")
	}
	if after := s.state(app); after != before {
		t.Fatalf("the container changed: %q, was %q", after, before)
	}
	s.mustHush("secret", "destroy", "--version", "1", "sa_crash")
}
