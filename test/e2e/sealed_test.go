package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// Sealed at rest (issue 8): every user string of every object is sealed in
// the data dir, with autolock off and on, after a kill -9 too; the log
// names objects but never carries a value; a copy of a locked data dir
// opens nothing without the unlock key.

// sealCanaries are the unique strings one run puts into every user field.
type sealCanaries struct {
	// names are allowed in the log (never in the data dir).
	names map[string]string
	// values are allowed nowhere.
	values map[string]string
}

func newSealCanaries(t *testing.T) *sealCanaries {
	c := &sealCanaries{names: map[string]string{}, values: map[string]string{}}
	for _, n := range []string{"secret", "config", "service", "network", "stack"} {
		c.names[n] = "sn" + n[:3] + randHex(t, 8)
	}
	for _, v := range []string{"secretdata", "configdata", "secretlabelkey", "secretlabelval", "configlabelval",
		"envkey", "envval", "command", "svclabelkey", "svclabelval", "ctrlabelkey", "ctrlabelval", "mount",
		"netlabelkey", "netlabelval", "stackenv", "stacklabelval", "stackcommand"} {
		c.values[v] = "sv" + v[:4] + randHex(t, 8)
	}
	return c
}

// scan fails for any canary (values always, names unless namesAllowed) in
// any of its raw, hex or base64 forms in any regular file under dir.
func (c *sealCanaries) scan(t *testing.T, what, dir string, namesAllowed bool) {
	t.Helper()
	forms := map[string][]byte{}
	add := func(kind, s string) {
		for f, b := range canaryForms([]byte(s)) {
			forms[kind+" "+s+" ("+f+")"] = b
		}
	}
	for k, v := range c.values {
		add("value "+k, v)
	}
	if !namesAllowed {
		for k, v := range c.names {
			add("name of "+k, v)
		}
	}
	files := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		for name, pat := range forms {
			if i := indexOf(b, pat); i >= 0 {
				t.Errorf("%s: %s holds %s at offset %d", what, p, name, i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatalf("%s: no files under %s", what, dir)
	}
}

func indexOf(b, pat []byte) int { return strings.Index(string(b), string(pat)) }

// populate creates a secret, a config, a network, a service and a stack
// whose every user string is a canary, and waits for their tasks.
func (c *sealCanaries) populate(t *testing.T, h *Hushd, img string) {
	t.Helper()
	v, n := c.values, c.names
	h.MustDockerStdin(v["secretdata"], "secret", "create", "--label", v["secretlabelkey"]+"="+v["secretlabelval"], n["secret"], "-")
	h.MustDockerStdin(v["configdata"], "config", "create", "--label", "team="+v["configlabelval"], n["config"], "-")
	h.MustDocker("network", "create", "-d", "overlay", "--label", v["netlabelkey"]+"="+v["netlabelval"], n["network"])
	t.Cleanup(func() { h.Docker("network", "rm", n["network"]) })
	svc := n["service"]
	t.Cleanup(func() { h.Docker("service", "rm", svc) })
	h.MustDocker("service", "create", "-d", "--name", svc, "--stop-grace-period", "1s",
		"--secret", n["secret"], "--config", n["config"], "--network", n["network"],
		"--env", v["envkey"]+"="+v["envval"],
		"--label", v["svclabelkey"]+"="+v["svclabelval"],
		"--container-label", v["ctrlabelkey"]+"="+v["ctrlabelval"],
		"--mount", "type=tmpfs,target=/"+v["mount"],
		img, "sh", "-c", `trap "exit 0" TERM; : `+v["command"]+`; while :; do sleep 0.2; done`)

	stack := n["stack"]
	dir := stackWrite(t, map[string]string{"docker-compose.yml": fmt.Sprintf(`version: "3.8"
services:
  web:
    image: %s
    command: ["sh", "-c", "trap 'exit 0' TERM; : %s; while :; do sleep 0.2; done"]
    environment:
      STACK_ENV: %s
    labels:
      team: %s
    stop_grace_period: 1s
`, img, v["stackcommand"], v["stackenv"], v["stacklabelval"])})
	stackCleanup(t, h, stack)
	h.MustDocker("stack", "deploy", "-c", filepath.Join(dir, "docker-compose.yml"), stack)
	eventually(t, 60*time.Second, "the service's task running", func() bool { return len(hushContainers(t, h, svc)) == 1 })
	eventually(t, 60*time.Second, "the stack's task running", func() bool { return len(hushContainers(t, h, stack+"_web")) == 1 })
}

// verify reads every object back through hushd.
func (c *sealCanaries) verify(t *testing.T, h *Hushd) {
	t.Helper()
	v, n := c.values, c.names
	data := strings.TrimSpace(h.MustDocker("config", "inspect", "--format", "{{json .Spec.Data}}", n["config"]))
	if want, _ := json.Marshal(base64.StdEncoding.EncodeToString([]byte(v["configdata"]))); data != string(want) {
		t.Fatalf("config data after restart: %s", data)
	}
	if got := h.MustDocker("secret", "inspect", "--format", "{{index .Spec.Labels \""+v["secretlabelkey"]+"\"}}", n["secret"]); strings.TrimSpace(got) != v["secretlabelval"] {
		t.Fatalf("secret label after restart: %q", got)
	}
	env := h.MustDocker("service", "inspect", "--format", "{{json .Spec.TaskTemplate.ContainerSpec.Env}}", n["service"])
	if !strings.Contains(env, v["envkey"]+"="+v["envval"]) {
		t.Fatalf("service env after restart: %s", env)
	}
	if ls := h.MustDocker("network", "ls", "--filter", "name="+n["network"], "--format", "{{.Name}}"); !strings.Contains(ls, n["network"]) {
		t.Fatalf("network after restart: %q", ls)
	}
	if ls := h.MustDocker("service", "ls", "--format", "{{.Name}}"); !strings.Contains(ls, n["stack"]+"_web") {
		t.Fatalf("stack service after restart: %q", ls)
	}
}

func withDataDir(dir string) hushdOption { return func(h *Hushd) { h.DataDir = dir } }

func TestSealedAtRest(t *testing.T) {
	for _, autolock := range []bool{false, true} {
		t.Run(fmt.Sprintf("autolock=%v", autolock), func(t *testing.T) {
			img := enginetest.BusyboxImage(t)
			h := startHushd(t)
			requireSwarmNetworks(t, h)
			c := newSealCanaries(t)
			var unlock string
			if autolock {
				h.MustDocker("swarm", "update", "--autolock=true")
				unlock = strings.TrimSpace(h.MustDocker("swarm", "unlock-key", "-q"))
			}
			c.populate(t, h, img)
			// Read paths and error paths log too.
			h.MustDocker("secret", "inspect", c.names["secret"])
			h.MustDocker("service", "inspect", c.names["service"])
			h.Docker("service", "create", "--name", c.names["service"], img)
			if !autolock {
				c.rotateThroughAPI(t, h)
			}

			// kill -9: whatever etcd has on disk then.
			h.Kill()
			c.scan(t, "after kill -9", h.DataDir, false)

			h.start()
			if autolock {
				if _, err := os.Stat(filepath.Join(h.DataDir, "keys", "master.key")); err == nil {
					t.Fatal("a plaintext master key is on disk under autolock")
				}
				c.copyWhileLocked(t, h, unlock)
				h.MustDockerStdin(unlock+"\n", "swarm", "unlock")
			}
			c.verify(t, h)
			h.Stop()
			c.scan(t, "after a clean stop", h.DataDir, false)
			c.scan(t, "hushd's log", filepath.Dir(h.LogPath), true)
			// The log does name objects: the scan above looked at real lines.
			if logb, err := os.ReadFile(h.LogPath); err != nil || !strings.Contains(string(logb), c.names["secret"]) {
				t.Fatalf("hushd's log does not name the secret (%v): the log scan proves nothing", err)
			}
			// Running again for the cleanups, which remove through hushd.
			h.start()
			if autolock {
				h.MustDockerStdin(unlock+"\n", "swarm", "unlock")
			}
		})
	}
}

// rotateThroughAPI rotates the master key with hushd's own API, as
// `hush key rotate` does.
func (c *sealCanaries) rotateThroughAPI(t *testing.T, h *Hushd) {
	t.Helper()
	r := h.Raw("GET", "/hush/v1/key", "", nil)
	var before struct {
		KeyID    string
		Autolock bool
	}
	if r.Status != 200 || json.Unmarshal(r.Body, &before) != nil || before.KeyID == "" {
		t.Fatalf("GET /hush/v1/key: %d %s", r.Status, r.Body)
	}
	r = h.Raw("POST", "/hush/v1/key/rotate", "", nil)
	var rot struct {
		KeyID     string
		Rewrapped int
	}
	if r.Status != 200 || json.Unmarshal(r.Body, &rot) != nil || rot.KeyID == before.KeyID || rot.Rewrapped == 0 {
		t.Fatalf("POST /hush/v1/key/rotate: %d %s (key before %s)", r.Status, r.Body, before.KeyID)
	}
	if r = h.Raw("POST", "/hush/v1/key/rotate?force=1", "", nil); r.Status != 400 || !strings.Contains(string(r.Body), "force") {
		t.Fatalf("rotate with an unknown option: %d %s", r.Status, r.Body)
	}
	c.verify(t, h)
}

// copyWhileLocked copies the whole data dir of a locked hushd and shows
// that the copy opens nothing without the unlock key: no canary in it, no
// plaintext key, and a hushd started on it stays locked until given the
// key (then serves the same objects: the copy is complete).
func (c *sealCanaries) copyWhileLocked(t *testing.T, h *Hushd, unlock string) {
	t.Helper()
	if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "locked" {
		t.Fatalf("state after restart: %q, want locked", st)
	}
	cp := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", h.DataDir, cp).CombinedOutput(); err != nil {
		t.Fatalf("copying the data dir: %v %s", err, out)
	}
	c.scan(t, "copy of the locked data dir", cp, false)
	if err := os.Remove(filepath.Join(cp, "hushd.lock")); err != nil {
		t.Fatal(err)
	}
	// No engine: the copy must not run the original's tasks.
	h2 := startHushd(t, withDataDir(cp), withArgs("--engine", ""))
	for _, args := range [][]string{{"secret", "ls"}, {"config", "ls"}, {"service", "ls"}, {"node", "ls"}} {
		if _, errOut, code := h2.Docker(args...); code == 0 || !strings.Contains(errOut, "needs to be unlocked") {
			t.Fatalf("%v on a copy of a locked data dir: exit %d %s", args, code, errOut)
		}
	}
	if r := h2.Raw("POST", "/hush/v1/key/rotate", "", nil); r.Status != 503 {
		t.Fatalf("rotate on a locked copy: %d %s", r.Status, r.Body)
	}
	if _, errOut, code := h2.DockerStdin("SWMKEY-1-"+strings.Repeat("A", 43)+"\n", "swarm", "unlock"); code == 0 || !strings.Contains(errOut, "invalid key") {
		t.Fatalf("a wrong unlock key on the copy: exit %d %s", code, errOut)
	}
	h2.MustDockerStdin(unlock+"\n", "swarm", "unlock")
	if ls := h2.MustDocker("secret", "ls", "--format", "{{.Name}}"); strings.TrimSpace(ls) != c.names["secret"] {
		t.Fatalf("the unlocked copy lists %q", ls)
	}
	h2.Stop()
	c.scan(t, "log of the copy's hushd", filepath.Dir(h2.LogPath), true)
}
