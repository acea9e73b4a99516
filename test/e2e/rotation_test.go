package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Rotation end to end: `hush secret rotate/versions/rollback/destroy`
// against hushd running tasks on the host engine, with the real docker CLI
// looking at the result.

// hush runs the hush CLI against s's hushd.
func (s *svcHushd) hush(args ...string) (string, string, int) {
	s.t.Helper()
	return runBin(s.t, []string{"DOCKER_HOST=unix://" + s.Socket, "DOCKER_CONFIG=" + s.configDir}, hushCLI(s.t), args...)
}

func (s *svcHushd) mustHush(args ...string) string {
	s.t.Helper()
	out, errOut, code := s.hush(args...)
	if code != 0 {
		s.t.Fatalf("hush %s: exit %d\n%s\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// valueFile writes v to a fresh file and returns its path.
func valueFile(t *testing.T, v string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "value")
	if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// reads reports whether ctr's file holds exactly want.
func (s *svcHushd) reads(ctr, file, want string) bool {
	out, _, code := s.Docker("exec", ctr, "cat", file)
	return code == 0 && out == want
}

// TestRotationRestart: two services use one secret; `hush secret rotate
// --wait` returns once every replica of both has been restarted once onto
// the new version and reads the new value; the services' specs are
// unchanged; `hush secret versions` lists both versions and their holders
// (also as the docker CLI plugin); rollback and destroy follow.
func TestRotationRestart(t *testing.T) {
	h := startSvcHushd(t)
	h.MustDockerStdin("one", "secret", "create", "rotpw", "-")
	for _, svc := range []string{"rota", "rotb"} {
		h.MustDocker(svcArgs("service", "create", "-d", "--name", svc, "--replicas", "2", "--secret", "rotpw",
			"--update-parallelism", "1", "--update-delay", "0s", "--update-monitor", "1s", h.img)...)
	}
	before := map[string][]string{}
	for _, svc := range []string{"rota", "rotb"} {
		before[svc] = h.waitTasks(svc, 2, "reading one", func(c string) bool { return h.reads(c, "/run/secrets/rotpw", "one") })
	}
	specBefore := h.MustDocker("service", "inspect", "--format", "{{json .Spec}}", "rota")
	secBefore := h.MustDocker("secret", "inspect", "--format", "{{.ID}} {{.Spec.Name}} {{.Version.Index}}", "rotpw")

	out := h.mustHush("secret", "rotate", "--wait", "rotpw", valueFile(t, "two"))
	if !strings.Contains(out, "version 2 is current") || !strings.Contains(out, "rollout of version 2 done") {
		t.Fatalf("hush secret rotate --wait:\n%s", out)
	}
	for _, svc := range []string{"rota", "rotb"} {
		now := h.containers(svc)
		if len(now) != 2 {
			t.Fatalf("%s: %d containers after the rollout", svc, len(now))
		}
		for _, c := range now {
			if slices.Contains(before[svc], c) {
				t.Errorf("%s: container %s was not restarted", svc, c[:12])
			}
			if !h.reads(c, "/run/secrets/rotpw", "two") {
				t.Errorf("%s: container %s does not read the new value", svc, c[:12])
			}
		}
		// Each slot restarted once: one shut-down and one running task per slot.
		ps := h.MustDocker("service", "ps", "--format", "{{.Name}} {{.DesiredState}}", svc)
		for _, slot := range []string{svc + ".1", svc + ".2"} {
			if n := strings.Count(ps, slot+" Running"); n != 1 {
				t.Errorf("%s: %d running tasks\n%s", slot, n, ps)
			}
			if n := strings.Count(ps, slot+" Shutdown"); n != 1 {
				t.Errorf("%s: %d shut-down tasks, want 1 (one restart)\n%s", slot, n, ps)
			}
		}
	}
	if got := h.MustDocker("service", "inspect", "--format", "{{json .Spec}}", "rota"); got != specBefore {
		t.Errorf("rotation changed the service spec:\n%s\n%s", specBefore, got)
	}
	if us := h.MustDocker("service", "inspect", "--format", "{{.UpdateStatus.State}} {{.UpdateStatus.Message}}", "rota"); !strings.HasPrefix(us, "completed") {
		t.Errorf("UpdateStatus after the rollout: %s", us)
	}
	secAfter := h.MustDocker("secret", "inspect", "--format", "{{.ID}} {{.Spec.Name}} {{.Version.Index}}", "rotpw")
	if f0, f1 := strings.Fields(secBefore), strings.Fields(secAfter); f0[0] != f1[0] || f0[1] != f1[1] || f0[2] == f1[2] {
		t.Errorf("secret inspect before/after: %q / %q (ID and name stay, Version.Index moves)", secBefore, secAfter)
	}

	vs := h.mustHush("secret", "versions", "rotpw")
	lines := strings.Split(strings.TrimSpace(vs), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "VERSION") || !strings.Contains(lines[0], "FINGERPRINT") || !strings.Contains(lines[0], "HELD BY") {
		t.Fatalf("hush secret versions:\n%s", vs)
	}
	if !strings.HasPrefix(lines[2], "2 *") || strings.Count(lines[2], "rota.") != 2 || strings.Count(lines[2], "rotb.") != 2 {
		t.Errorf("version 2 row does not list the four holders:\n%s", vs)
	}
	if f := h.mustHush("secret", "versions", "--format", "{{.Version}}:{{.Current}}", "rotpw"); f != "1:false\n2 *:true\n" {
		t.Errorf("--format: %q", f)
	}

	// The docker CLI plugin form.
	pdir := filepath.Join(h.configDir, "cli-plugins")
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(hushCLI(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pdir, "docker-hush"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := h.MustDocker("hush", "secret", "versions", "rotpw"); got != vs {
		t.Errorf("docker hush secret versions:\n%s\nwant\n%s", got, vs)
	}

	// Rollback: the value of version 1 becomes current as version 3.
	out = h.mustHush("secret", "rollback", "--wait", "rotpw")
	if !strings.Contains(out, "version 3 is current") {
		t.Fatalf("hush secret rollback:\n%s", out)
	}
	for _, svc := range []string{"rota", "rotb"} {
		h.waitTasks(svc, 2, "reading one again", func(c string) bool { return h.reads(c, "/run/secrets/rotpw", "one") })
	}

	// Destroy: the current version is refused; an old one is erased for
	// good, and rolling back to it fails.
	if _, errOut, code := h.hush("secret", "destroy", "--version", "3", "rotpw"); code == 0 || !strings.Contains(errOut, "current version") {
		t.Errorf("destroy of the current version: exit %d %s", code, errOut)
	}
	h.mustHush("secret", "destroy", "--version", "2", "rotpw")
	if _, errOut, code := h.hush("secret", "rollback", "--to", "2", "rotpw"); code == 0 || !strings.Contains(errOut, "no version 2") {
		t.Errorf("rollback to a destroyed version: exit %d %s", code, errOut)
	}
	if vs := h.mustHush("secret", "versions", "--format", "{{.Version}} {{.Fingerprint}}", "rotpw"); !strings.Contains(vs, "2 (destroyed)") {
		t.Errorf("versions after destroy:\n%s", vs)
	}
	// Stale revision: out of sequence.
	if r := h.Raw("POST", "/hush/v1/secrets/rotpw/rotate?version=1", "application/json", []byte(`{"Data":"dGhyZWU="}`)); r.Status != 409 || !strings.Contains(string(r.Body), "update out of sequence") {
		t.Errorf("stale rotate: %d %s", r.Status, r.Body)
	}
}

// TestRotationDockerUpdate: a raw POST /secrets/{id}/update carrying new
// Data (what `docker stack deploy` sends for a changed file) makes a new
// version and rolls the service; unchanged data makes none.
func TestRotationDockerUpdate(t *testing.T) {
	h := startSvcHushd(t)
	id := strings.TrimSpace(h.MustDockerStdin("old", "secret", "create", "rotraw", "-"))
	h.MustDocker(svcArgs("service", "create", "-d", "--name", "rotraw", "--secret", "rotraw", "--update-monitor", "1s", h.img)...)
	old := h.waitTasks("rotraw", 1, "reading old", func(c string) bool { return h.reads(c, "/run/secrets/rotraw", "old") })
	ver := func() string {
		return strings.TrimSpace(h.MustDocker("secret", "inspect", "--format", "{{.Version.Index}}", id))
	}
	v := ver()
	if r := h.Raw("POST", "/secrets/"+id+"/update?version="+v, "application/json", []byte(`{"Name":"rotraw","Data":"b2xk"}`)); r.Status != 200 {
		t.Fatalf("update with unchanged data: %d %s", r.Status, r.Body)
	}
	if vs := h.mustHush("secret", "versions", "--format", "{{.Version}}", "rotraw"); vs != "1 *\n" {
		t.Fatalf("unchanged data made a version:\n%s", vs)
	}
	v = ver()
	// (the unchanged-data update above is an event of its own, before this)
	time.Sleep(50 * time.Millisecond)
	t0 := time.Now()
	since := fmt.Sprintf("%d.%09d", t0.Unix(), t0.Nanosecond())
	if r := h.Raw("POST", "/secrets/"+id+"/update?version="+v, "application/json", []byte(`{"Name":"rotraw","Data":"bmV3"}`)); r.Status != 200 {
		t.Fatalf("update with new data: %d %s", r.Status, r.Body)
	}
	if r := h.Raw("POST", "/secrets/"+id+"/update?version="+v, "application/json", []byte(`{"Name":"rotraw","Data":"bmV3ZXI="}`)); r.Status != 409 {
		t.Fatalf("update at a stale version: %d %s", r.Status, r.Body)
	}
	cs := h.waitTasks("rotraw", 1, "reading new", func(c string) bool { return h.reads(c, "/run/secrets/rotraw", "new") })
	if cs[0] == old[0] {
		t.Fatalf("restart mode: the container was not replaced")
	}
	// Retention: the cluster spec's label io.hush.versions.keep (set through
	// the raw swarm update API) keeps 2 versions; a bad value is refused.
	sw := h.Raw("GET", "/swarm", "", nil)
	var swarmObj struct {
		Version struct{ Index uint64 }
		Spec    map[string]any
	}
	if sw.Status != 200 || json.Unmarshal(sw.Body, &swarmObj) != nil {
		t.Fatalf("GET /swarm: %d %s", sw.Status, sw.Body)
	}
	for _, tt := range []struct {
		keep string
		code int
	}{{"zero", 400}, {"2", 200}} {
		swarmObj.Spec["Labels"] = map[string]string{"io.hush.versions.keep": tt.keep}
		body, _ := json.Marshal(swarmObj.Spec)
		r := h.Raw("POST", "/swarm/update?version="+strconv.FormatUint(swarmObj.Version.Index, 10), "application/json", body)
		if r.Status != tt.code || tt.code == 400 && !strings.Contains(string(r.Body), "io.hush.versions.keep") {
			t.Fatalf("swarm update with keep=%s: %d %s", tt.keep, r.Status, r.Body)
		}
	}
	h.MustDockerStdin("k1", "secret", "create", "rotkeep", "-")
	for _, v := range []string{"k2", "k3", "k4"} {
		h.mustHush("secret", "rotate", "rotkeep", valueFile(t, v))
	}
	if vs := h.mustHush("secret", "versions", "--format", "{{.Version}}", "rotkeep"); vs != "3\n4 *\n" {
		t.Errorf("versions kept under the cluster's keep=2:\n%s", vs)
	}

	// Configs too: `hush config rotate`, and `docker config inspect` shows
	// the current version's data.
	h.MustDockerStdin("c1", "config", "create", "rotcfg", "-")
	h.mustHush("config", "rotate", "rotcfg", valueFile(t, "c2"))
	if got := h.MustDocker("config", "inspect", "--format", "{{printf \"%s\" .Spec.Data}}", "rotcfg"); strings.TrimSpace(got) != "c2" {
		t.Errorf("config data after rotate: %q", got)
	}

	// The new version is one `secret update` event.
	until := strconv.FormatInt(time.Now().Add(time.Second).Unix(), 10)
	time.Sleep(1100 * time.Millisecond) // until must have passed for a finite answer
	evs := h.MustDocker("events", "--since", since, "--until", until, "--filter", "type=secret", "--format", "{{.Action}} {{.Actor.ID}}")
	if n := strings.Count(evs, "update "+id); n != 1 {
		t.Errorf("secret update events for the rotation: %d\n%s", n, evs)
	}
}

// TestRotationKillMidRollout: hushd is killed (SIGKILL) while a rotation
// of two secrets rolls out slowly; after the restart the rollout
// completes, and every container reads both new values (no task holds a
// mixed set).
func TestRotationKillMidRollout(t *testing.T) {
	h := startSvcHushd(t)
	h.MustDockerStdin("a1", "secret", "create", "rotka", "-")
	h.MustDockerStdin("b1", "secret", "create", "rotkb", "-")
	h.MustDocker(svcArgs("service", "create", "-d", "--name", "rotkill", "--replicas", "3", "--secret", "rotka", "--secret", "rotkb",
		"--update-parallelism", "1", "--update-delay", "2s", "--update-monitor", "1s", h.img)...)
	h.waitTasks("rotkill", 3, "up", func(c string) bool { return h.reads(c, "/run/secrets/rotkb", "b1") })
	h.mustHush("secret", "rotate", "rotka", valueFile(t, "a2"))
	h.mustHush("secret", "rotate", "rotkb", valueFile(t, "b2"))
	// Version 1 is still held by the tasks not rolled yet (the rollout takes
	// at least two update delays): destroy refuses it.
	if _, errOut, code := h.hush("secret", "destroy", "--version", "1", "rotka"); code == 0 || !strings.Contains(errOut, "held by") {
		t.Errorf("destroy of a version running tasks hold: exit %d %s", code, errOut)
	}
	// Wait until the rollout has started (one container replaced) but not
	// finished, then kill hushd.
	waitFor(t, 60*time.Second, "the rollout to start", func() bool {
		n := 0
		for _, c := range h.containers("rotkill") {
			if h.reads(c, "/run/secrets/rotkb", "b2") {
				n++
			}
		}
		return n >= 1
	})
	h.Kill()
	h.Restart()
	h.waitTasks("rotkill", 3, "on both new values", func(c string) bool {
		return h.reads(c, "/run/secrets/rotka", "a2") && h.reads(c, "/run/secrets/rotkb", "b2")
	})
	waitFor(t, 60*time.Second, "the rollout to complete", func() bool {
		us, _, _ := h.Docker("service", "inspect", "--format", "{{.UpdateStatus.State}}", "rotkill")
		return strings.TrimSpace(us) == "completed"
	})
	for _, c := range h.containers("rotkill") {
		a, b := h.reads(c, "/run/secrets/rotka", "a2"), h.reads(c, "/run/secrets/rotkb", "b2")
		if !a || !b {
			t.Errorf("container %s holds a mixed set: rotka new %v, rotkb new %v", c[:12], a, b)
		}
	}
}

// TestRotationModeLabel: io.hush.rotate takes restart, reload and
// signal:SIGNAME; anything else is refused naming the label.
func TestRotationModeLabel(t *testing.T) {
	h := startSvcHushd(t)
	for _, mode := range []string{"sometimes", "signal:SIGFOO", "signal:"} {
		_, errOut, code := h.Docker(svcArgs("service", "create", "-d", "--name", "rotmode", "--label", "io.hush.rotate="+mode, h.img)...)
		if code == 0 || !strings.Contains(errOut, "io.hush.rotate") {
			t.Errorf("io.hush.rotate=%s: exit %d %s", mode, code, errOut)
		}
	}
	for i, mode := range []string{"restart", "reload", "signal:SIGHUP"} {
		h.MustDocker(svcArgs("service", "create", "-d", "--name", "rotmode"+strconv.Itoa(i), "--label", "io.hush.rotate="+mode, h.img)...)
	}
}

// readerLoop is a task command that reads /run/secrets/<name> in a loop and
// records any value other than the whole old or whole new one in /tmp/bad
// (an empty read is a cat that found no file, not a torn one).
func readerLoop(name, old, new string) []string {
	return []string{"sh", "-c", `trap "exit 0" TERM; while :; do v=$(cat /run/secrets/` + name + ` 2>/dev/null); case "$v" in ` + old + `|` + new + `|"") ;; *) echo "$v" >> /tmp/bad;; esac; done`}
}

// TestRotationReload: a reload-mode service's containers see the new value
// without a restart (same container IDs), and a reader looping inside each
// container during the swap only ever sees the whole old or the whole new
// value. A task with a config (an absolute file target) is restarted
// instead, and its status message says why.
func TestRotationReload(t *testing.T) {
	h := startSvcHushd(t)
	old, new := strings.Repeat("o", 3000), strings.Repeat("n", 5000)
	h.MustDockerStdin(old, "secret", "create", "rotrl", "-")
	args := append([]string{"service", "create", "-d", "--name", "rotrl", "--replicas", "2", "--secret", "rotrl",
		"--label", "io.hush.rotate=reload", "--update-monitor", "1s", h.img}, readerLoop("rotrl", old, new)...)
	h.MustDocker(args...)
	h.MustDockerStdin("c1", "config", "create", "rotrlc", "-")
	h.MustDocker(svcArgs("service", "create", "-d", "--name", "rotrlc", "--secret", "rotrl", "--config", "rotrlc",
		"--label", "io.hush.rotate=reload", "--update-monitor", "1s", h.img)...)
	before := h.waitTasks("rotrl", 2, "reading the old value", func(c string) bool { return h.reads(c, "/run/secrets/rotrl", old) })
	beforeC := h.waitTasks("rotrlc", 1, "reading the old value", func(c string) bool { return h.reads(c, "/run/secrets/rotrl", old) })
	tid := strings.TrimSpace(h.MustDocker("service", "ps", "-q", "rotrlc"))
	if msg := h.MustDocker("inspect", "--format", "{{.Status.Message}}", tid); !strings.Contains(msg, "cannot be swapped atomically") {
		t.Errorf("status message of a reload task with a config: %q", msg)
	}
	out := h.mustHush("secret", "rotate", "--wait", "rotrl", valueFile(t, new))
	if !strings.Contains(out, "rollout of version 2 done") {
		t.Fatalf("rotate --wait:\n%s", out)
	}
	now := h.containers("rotrl")
	if !slices.Equal(now, before) {
		t.Fatalf("reload mode restarted containers: %v → %v", before, now)
	}
	for _, c := range now {
		if !h.reads(c, "/run/secrets/rotrl", new) {
			t.Errorf("container %s does not read the new value", c[:12])
		}
		if bad, _, code := h.Docker("exec", c, "cat", "/tmp/bad"); code == 0 {
			t.Errorf("container %s's reader saw a torn or mixed value: %d bytes", c[:12], len(bad))
		}
		if ro, _, _ := h.Docker("exec", c, "sh", "-c", "touch /run/secrets/x 2>&1 || echo refused"); !strings.Contains(ro, "refused") {
			t.Errorf("/run/secrets writable in container %s: %q", c[:12], ro)
		}
	}
	// The task with a config was restarted onto the new version.
	nowC := h.waitTasks("rotrlc", 1, "reading the new value", func(c string) bool { return h.reads(c, "/run/secrets/rotrl", new) })
	if nowC[0] == beforeC[0] {
		t.Errorf("the reload task with a config was not restarted")
	}
	// Every task holds version 2; none holds version 1.
	vs := h.mustHush("secret", "versions", "--format", "{{.Version}}|{{.HeldBy}}", "rotrl")
	if !strings.HasPrefix(vs, "1|-\n2 *|") || strings.Count(vs, "rotrl.") != 2 {
		t.Errorf("versions after the reload:\n%s", vs)
	}
}

// TestRotationSignal: signal:SIGHUP reloads the files, then signals the
// container's main process, whose trap finds the new value already there.
func TestRotationSignal(t *testing.T) {
	h := startSvcHushd(t)
	h.MustDockerStdin("before", "secret", "create", "rotsg", "-")
	h.MustDocker("service", "create", "-d", "--name", "rotsg", "--secret", "rotsg", "--label", "io.hush.rotate=signal:SIGHUP",
		"--update-monitor", "1s", h.img, "sh", "-c", `trap "cat /run/secrets/rotsg > /tmp/got" HUP; trap "exit 0" TERM; while :; do sleep 0.2; done`)
	before := h.waitTasks("rotsg", 1, "up", func(c string) bool { return h.reads(c, "/run/secrets/rotsg", "before") })
	h.mustHush("secret", "rotate", "--wait", "rotsg", valueFile(t, "after"))
	waitFor(t, 30*time.Second, "the trap to record the value", func() bool { return h.reads(before[0], "/tmp/got", "after") })
	if now := h.containers("rotsg"); !slices.Equal(now, before) {
		t.Fatalf("signal mode restarted the container")
	}
}
