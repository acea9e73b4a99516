package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// Templated secrets and configs (docker secret/config create
// --template-driver golang), rendered per task: the same objects and
// service on live Swarm and on hushd, the files read from inside each task
// container, compared after the IDs are replaced by placeholders.

// tmplSecretText uses every context field and function; its last line is
// the node description, which Swarm 20.10 leaves empty and hush fills in
// (docs/COMPATIBILITY.md, "Templated secrets and configs").
const tmplSecretText = `svc={{.Service.Name}} sid={{.Service.ID}}
label={{index .Service.Labels "tmpl.k"}} labels={{.Service.Labels}}
{{range $k, $v := .Service.Labels}}{{$k}}={{$v}};{{end}}
task={{.Task.ID}} name={{.Task.Name}} slot={{.Task.Slot}}
node={{.Node.ID}}
env={{env "TMPL_FOO"}} eq={{env "TMPL_EQ"}} missing=[{{env "TMPL_NOPE"}}]
other={{secret "other"}} plain={{config "/plain.conf"}}
join={{join "-" .Service.Name .Task.Slot}} {{if eq .Task.Slot "2"}}second{{else}}not-second{{end}}
{{printf "%05d" 42}} {{len (secret "other")}}
host=[{{.Node.Hostname}}] os=[{{.Node.Platform.OS}}] arch=[{{.Node.Platform.Architecture}}]`

const tmplConfigText = `[{{.Service.Name}}.{{.Task.Slot}}]
owner={{index .Service.Labels "tmpl.k"}}
password={{secret "other"}}
task={{.Task.Name}}
raw={{secret "rendered"}}
`

// tmplSide runs the scenario against one system.
type tmplSide struct {
	t      *testing.T
	cli    *dockerCLI
	img    string
	suffix string
	// running lists the running task containers of a service.
	running func(service string) []string
}

func (s *tmplSide) name(what string) string { return "tmpl_" + what + "_" + s.suffix }

// run creates the objects and the service, reads the rendered files of
// both tasks, and returns them with IDs replaced and the node line as
// given (the caller checks and replaces it).
func (s *tmplSide) run() string {
	t := s.t
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	s.cli.MustDockerStdin("other-value", "secret", "create", s.name("other"), "-")
	s.cli.MustDocker("secret", "create", "--template-driver", "golang", s.name("sec"), write("sec.tmpl", tmplSecretText))
	s.cli.MustDockerStdin("port=80", "config", "create", s.name("plain"), "-")
	s.cli.MustDocker("config", "create", "--template-driver", "golang", s.name("cfg"), write("cfg.tmpl", tmplConfigText))
	if got := strings.TrimSpace(s.cli.MustDocker("secret", "inspect", "--format", "{{json .Spec.Templating}}", s.name("sec"))); got != `{"Name":"golang"}` {
		t.Fatalf("secret inspect: templating %s", got)
	}
	svc := s.name("svc")
	s.cli.MustDocker(append([]string{"service", "create", "-d", "--name", svc, "--replicas", "2", "--stop-grace-period", "1s",
		"--label", "tmpl.k=labv", "--label", "tmpl.z=zz", "--env", "TMPL_FOO=bar", "--env", "TMPL_EQ=a=b",
		// Swarm also expands templates in Hostname, Env values and mounts.
		"--hostname", "h{{.Task.Slot}}", "--env", "TMPL_SLOT=s{{.Task.Slot}}",
		"--secret", "source=" + s.name("other") + ",target=other",
		"--secret", "source=" + s.name("sec") + ",target=rendered",
		"--config", "source=" + s.name("plain") + ",target=/plain.conf",
		"--config", "source=" + s.name("cfg") + ",target=/rendered.conf",
		s.img}, taskLoop...)...)
	waitFor(t, 2*taskTimeout, "two running tasks", func() bool { return len(s.running(svc)) == 2 })

	repl := []string{strings.TrimSpace(s.cli.MustDocker("service", "inspect", "--format", "{{.ID}}", svc)), "<SERVICE-ID>",
		strings.TrimSpace(s.cli.MustDocker("info", "--format", "{{.Swarm.NodeID}}")), "<NODE-ID>",
		s.suffix, "<RUN>"}
	type task struct{ slot, out string }
	var tasks []task
	for _, c := range s.running(svc) {
		labels := s.cli.MustDocker("inspect", "--format", `{{index .Config.Labels "com.docker.swarm.task.id"}} {{index .Config.Labels "com.docker.swarm.task.name"}}`, c)
		f := strings.Fields(labels)
		if len(f) != 2 {
			t.Fatalf("container %s labels: %q", c, labels)
		}
		parts := strings.Split(f[1], ".")
		if len(parts) != 3 {
			t.Fatalf("task name %q", f[1])
		}
		slot := parts[1]
		sec := s.cli.MustDocker("exec", c, "cat", "/run/secrets/rendered")
		cfg := s.cli.MustDocker("exec", c, "cat", "/rendered.conf")
		perm := s.cli.MustDocker("exec", c, "stat", "-c", "%a %u %g %n", "/run/secrets/rendered", "/rendered.conf")
		expanded := s.cli.MustDocker("exec", c, "sh", "-c", `echo "hostname=$(hostname) TMPL_SLOT=$TMPL_SLOT"`)
		repl = append(repl, f[0], "<TASK-ID-"+slot+">")
		tasks = append(tasks, task{slot: slot, out: fmt.Sprintf("== task %s\n-- /run/secrets/rendered\n%s\n-- /rendered.conf\n%s-- stat\n%s-- expanded spec\n%s", slot, sec, cfg, perm, expanded)})
	}
	sort.Slice(tasks, func(i, j int) bool { return tasks[i].slot < tasks[j].slot })
	var b strings.Builder
	for _, tk := range tasks {
		b.WriteString(tk.out)
	}
	return strings.NewReplacer(repl...).Replace(b.String())
}

// swarmNodeLine is what Swarm 20.10 renders for the node description.
const swarmNodeLine = "host=[] os=[] arch=[]"

func TestTemplatedSecretsVsSwarm(t *testing.T) {
	requireDockerCLI(t)
	const golden = "templates_diff"
	var live string

	t.Run("swarm", func(t *testing.T) {
		requireSwarm(t)
		sw := swarmCLI(t)
		s := &tmplSide{t: t, cli: sw, img: enginetest.BusyboxImage(t), suffix: runSuffix(t)}
		s.running = func(service string) []string {
			out, _, _ := sw.Docker("ps", "-q", "--no-trunc", "--filter", "label="+svcNameLabel+"="+service)
			return strings.Fields(out)
		}
		t.Cleanup(func() {
			sw.Docker("service", "rm", s.name("svc"))
			awaitSwarmContainersGone(sw, 20*time.Second, func() []string { return swarmServiceContainers(sw, s.name("svc")) })
			sw.Docker("secret", "rm", s.name("sec"), s.name("other"))
			sw.Docker("config", "rm", s.name("cfg"), s.name("plain"))
		})
		got := s.run()
		if n := strings.Count(got, swarmNodeLine); n != 2 {
			t.Errorf("Swarm no longer renders the node description empty (%d of 2 tasks): update docs/COMPATIBILITY.md\n%s", n, got)
		}
		live = got
		checkSwarmGolden(t, golden, got)
	})

	t.Run("hushd", func(t *testing.T) {
		h := startSvcHushd(t)
		s := &tmplSide{t: t, cli: h.dockerCLI, img: h.img, suffix: runSuffix(t), running: h.containers}
		got := s.run()
		// hush renders the node description (Swarm 20.10 leaves it empty).
		host, err := os.Hostname()
		if err != nil {
			t.Fatal(err)
		}
		hushLine := fmt.Sprintf("host=[%s] os=[%s] arch=[%s]", host, runtime.GOOS, runtime.GOARCH)
		if n := strings.Count(got, hushLine); n != 2 {
			t.Errorf("hushd's node description: want %q in both tasks:\n%s", hushLine, got)
		}
		got = strings.ReplaceAll(got, hushLine, swarmNodeLine)
		checkHushdGolden(t, golden, got, live)

		// Swarm stores any driver name and fails every task that mounts
		// the object; hush refuses it at create.
		file := filepath.Join(t.TempDir(), "t")
		if err := os.WriteFile(file, []byte("{{.Task.ID}}"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errOut, code := h.Docker("secret", "create", "--template-driver", "tmplfoo", s.name("bad"), file)
		if code == 0 || !strings.Contains(errOut, `templating driver "tmplfoo" is not supported: hush renders only the "golang" driver (Templating.Name)`) {
			t.Errorf("unknown templating driver: exit %d, %s", code, errOut)
		}
		if out := h.MustDocker("secret", "ls", "-q", "--filter", "name="+s.name("bad")); strings.TrimSpace(out) != "" {
			t.Errorf("a refused secret was stored: %q", out)
		}

		// A task whose template fails is rejected with a message that
		// names the secret and withholds its text.
		if err := os.WriteFile(file, []byte(`pw=tmplhunter2 {{secret "nosuch"}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		badID := strings.TrimSpace(h.MustDocker("secret", "create", "--template-driver", "golang", s.name("broken"), file))
		bad := s.name("badsvc")
		h.MustDocker(append([]string{"service", "create", "-d", "--name", bad, "--restart-condition", "none",
			"--secret", s.name("broken"), h.img}, taskLoop...)...)
		var taskErr string
		waitFor(t, taskTimeout, "the task rejected", func() bool {
			out, _, _ := h.Docker("service", "ps", "--no-trunc", "--format", "{{.CurrentState}}|{{.Error}}", bad)
			taskErr = strings.TrimSpace(out)
			return strings.HasPrefix(taskErr, "Rejected")
		})
		wantErr := "failed to expand templated secret " + badID + ": template: expansion:1:17: the template reads a secret or config target the task does not reference"
		if !strings.Contains(taskErr, wantErr) || strings.Contains(taskErr, "tmplhunter2") {
			t.Errorf("rejected task error %q, want %q", taskErr, wantErr)
		}

		// The renderings exist only on the tasks' tmpfs: never in hushd's
		// data dir or log.
		scanDir(t, h.DataDir, map[string][]byte{"a rendered secret": []byte("label=labv labels="), "a rendered config": []byte("owner=labv")})
		if log, err := os.ReadFile(h.LogPath); err != nil || strings.Contains(string(log), "label=labv") || strings.Contains(string(log), "owner=labv") || strings.Contains(string(log), "tmplhunter2") {
			t.Errorf("hushd's log holds rendered or template data (read error %v)", err)
		}
		waitFor(t, taskTimeout, "no rendered file left on the host", func() bool {
			h.Docker("service", "rm", s.name("svc"), bad)
			return len(h.allContainers()) == 0 && len(h.mounts()) == 0
		})
	})
}
