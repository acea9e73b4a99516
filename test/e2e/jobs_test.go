package e2e

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// Jobs and placement, compared with Swarm through the real docker CLI:
// replicated and global jobs run to completion and show as Swarm shows
// them, `service update --force` runs a job again, and tasks that cannot
// be placed (replicas per node, memory reservations) wait with Swarm's
// reason.

const jobTimeout = 60 * time.Second

// jobSide is one daemon in the jobs comparison.
type jobSide struct {
	t      *testing.T
	cli    *dockerCLI
	img    string
	prefix string // "sched<run>": every service name starts with it
	n      *normaliser
	out    strings.Builder
}

func (d *jobSide) name(s string) string { return d.prefix + "_" + s }

// record runs one command and appends its normalised output; post, if
// set, rewrites stdout first.
func (d *jobSide) record(post func(string) string, args ...string) string {
	d.t.Helper()
	stdout, stderr, code := d.cli.Docker(args...)
	shown := stdout
	if post != nil {
		shown = post(stdout)
	}
	fmt.Fprintf(&d.out, "$ docker %s\nexit status: %d\n-- stdout --\n%s-- stderr --\n%s", strings.Join(args, " "), code, shown, stderr)
	return stdout
}

// replicas is the MODE and REPLICAS columns of `docker service ls`.
func (d *jobSide) replicas(svc string) string {
	out, _, _ := d.cli.Docker("service", "ls", "--filter", "name="+svc, "--format", "{{.Name}} {{.Mode}} {{.Replicas}}")
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, svc+" "); ok {
			return rest
		}
	}
	return ""
}

func (d *jobSide) waitReplicas(svc, want string) {
	d.t.Helper()
	var got string
	waitFor(d.t, jobTimeout, fmt.Sprintf("service ls of %s to show %q (last %q)", svc, want, got), func() bool {
		got = d.replicas(svc)
		return got == want
	})
}

// waitStates waits until `docker service ps` shows exactly these current
// states (first word, sorted), and every pending task says why (Swarm's
// scheduler adds the reason a moment after the task appears).
func (d *jobSide) waitStates(svc string, want ...string) {
	d.t.Helper()
	sort.Strings(want)
	w := strings.Join(want, " ")
	waitFor(d.t, jobTimeout, fmt.Sprintf("service ps of %s to show %q", svc, w), func() bool {
		out, _, _ := d.cli.Docker("service", "ps", "--no-trunc", "--format", "{{.CurrentState}}|{{.Error}}", svc)
		var st []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			state, errText, _ := strings.Cut(l, "|")
			f := strings.Fields(state)
			if len(f) == 0 {
				continue
			}
			if f[0] == "Pending" && errText == "" {
				return false
			}
			st = append(st, f[0])
		}
		sort.Strings(st)
		return strings.Join(st, " ") == w
	})
}

var reStateAge = regexp.MustCompile(`\|(\w+) [^|]*\|`)

// reNodeTask is a task name the CLI made from the node ID (a task with no
// slot: a global one, or a replicated job's slot 0).
var reNodeTask = regexp.MustCompile(`^([^|]*)\.[a-z0-9]{25}\|`)

// psRows keeps what must match of `docker service ps`: name (with the
// CLI's history marker), desired state, current state without its age,
// and the error. Rows keep the CLI's order except where that order comes
// from a random node ID: the CLI sorts names naturally, so a node ID that
// starts with a digit lands among the slot numbers and one that starts
// with a letter after them. Those rows are named <node> and sorted after
// the numbered ones (stably, so one name's rows keep their newest-first
// order).
func psRows(s string) string {
	s = reStateAge.ReplaceAllString(s, "|$1|")
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return s
	}
	for i, l := range lines {
		lines[i] = reNodeTask.ReplaceAllString(l, "$1.<node>|")
	}
	node := func(l string) bool { return strings.Contains(l, ".<node>|") }
	sort.SliceStable(lines, func(i, j int) bool { return !node(lines[i]) && node(lines[j]) })
	return strings.Join(lines, "\n") + "\n"
}

// run drives the scenario and returns the normalised transcript.
func (d *jobSide) run() string {
	t := d.t
	rj, gj, mx, mem, blk := d.name("rj"), d.name("gj"), d.name("max"), d.name("mem"), d.name("blk")
	ps := func(svc string) {
		d.record(psRows, "service", "ps", "--no-trunc", "--format", "{{.Name}}|{{.DesiredState}}|{{.CurrentState}}|{{.Error}}", svc)
	}
	ls := func(svc string) {
		d.record(nil, "service", "ls", "--filter", "name="+svc, "--format", "{{.Name}} {{.Mode}} {{.Replicas}}")
	}

	// A replicated job: 3 completions, 2 at a time.
	if _, _, code := d.cli.Docker("service", "create", "-d", "--name", rj, "--mode", "replicated-job", "--replicas", "3", "--max-concurrent", "2", d.img, "true"); code != 0 {
		t.Fatalf("service create %s failed", rj)
	}
	d.waitReplicas(rj, "replicated job 0/2 (3/3 completed)")
	ls(rj)
	ps(rj)
	d.record(nil, "service", "inspect", "--format", "{{json .Spec.Mode}} {{.JobStatus.JobIteration.Index}}", rj)
	// Jobs take no update config; the CLI passes the refusal on.
	d.record(nil, "service", "update", "-d", "--update-parallelism", "2", rj)
	// A forced update runs the job again; the old tasks stay as history.
	d.record(nil, "service", "update", "-d", "--force", rj)
	d.waitStates(rj, "Complete", "Complete", "Complete", "Complete", "Complete", "Complete")
	d.waitReplicas(rj, "replicated job 0/2 (3/3 completed)")
	ls(rj)
	ps(rj)
	d.record(nil, "service", "inspect", "--format", "{{.JobStatus.JobIteration.Index}} {{json .UpdateStatus}}", rj)

	// A global job: once on the one node; a forced update replaces its task.
	if _, _, code := d.cli.Docker("service", "create", "-d", "--name", gj, "--mode", "global-job", d.img, "true"); code != 0 {
		t.Fatalf("service create %s failed", gj)
	}
	d.waitReplicas(gj, "global job 0/0 (1/1 completed)")
	ls(gj)
	ps(gj)
	d.record(nil, "service", "update", "-d", "--force", gj)
	d.waitStates(gj, "Complete")
	d.waitReplicas(gj, "global job 0/0 (1/1 completed)")
	ls(gj)
	ps(gj)
	d.record(nil, "service", "ls", "--filter", "mode=global-job", "--filter", "name="+d.prefix, "--format", "{{.Name}}")

	// Without -d the CLI waits for the job and returns once it is done.
	out, _, code := d.cli.Docker("service", "create", "--name", blk, "--mode", "replicated-job", "--replicas", "2", d.img, "true")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	fmt.Fprintf(&d.out, "$ docker service create --name %s --mode replicated-job --replicas 2 IMAGE true\nexit status: %d\nlast line: %s\n", blk, code, lines[len(lines)-1])
	fmt.Fprintf(&d.out, "right after: %s\n", d.replicas(blk))

	// Replicas beyond the per-node maximum wait with Swarm's reason.
	if _, _, code := d.cli.Docker(append([]string{"service", "create", "-d", "--name", mx, "--replicas", "3", "--replicas-max-per-node", "1", d.img}, taskLoop...)...); code != 0 {
		t.Fatalf("service create %s failed", mx)
	}
	d.waitStates(mx, "Pending", "Pending", "Running")
	d.waitReplicas(mx, "replicated 1/3 (max 1 per node)")
	ls(mx)
	d.record(func(s string) string {
		l := strings.Split(strings.TrimSpace(psRows(s)), "\n")
		sort.Strings(l)
		return strings.Join(l, "\n") + "\n"
	}, "service", "ps", "--no-trunc", "--format", "{{.DesiredState}}|{{.CurrentState}}|{{.Error}}", mx)

	// A memory reservation no node has.
	if _, _, code := d.cli.Docker(append([]string{"service", "create", "-d", "--name", mem, "--reserve-memory", "100g", d.img}, taskLoop...)...); code != 0 {
		t.Fatalf("service create %s failed", mem)
	}
	d.waitStates(mem, "Pending")
	ls(mem)
	ps(mem)
	// A global task short of memory waits on its node, with the bare reason.
	gmem := d.name("gmem")
	if _, _, code := d.cli.Docker(append([]string{"service", "create", "-d", "--name", gmem, "--mode", "global", "--reserve-memory", "100g", d.img}, taskLoop...)...); code != 0 {
		t.Fatalf("service create %s failed", gmem)
	}
	d.waitStates(gmem, "Pending")
	ls(gmem)
	ps(gmem)
	d.record(nil, "service", "rm", rj, gj, blk, mx, mem, gmem)
	return d.n.norm(d.out.String())
}

// TestJobsVsSwarm runs the jobs and placement scenario against live Swarm
// (recording testdata/swarm/jobs_diff.golden with -update) and against
// hushd, and compares the normalised transcripts.
func TestJobsVsSwarm(t *testing.T) {
	requireDockerCLI(t)
	const golden = "jobs_diff"
	var live string

	t.Run("swarm", func(t *testing.T) {
		requireSwarm(t)
		sw := swarmCLI(t)
		suffix := runSuffix(t)
		d := &jobSide{t: t, cli: sw, img: enginetest.BusyboxImage(t), prefix: "sched" + suffix,
			n: &normaliser{suffix: suffix, literals: map[string]string{}}}
		t.Cleanup(func() {
			for _, s := range []string{"rj", "gj", "max", "mem", "blk", "gmem"} {
				sw.Docker("service", "rm", d.name(s))
			}
			awaitSwarmContainersGone(sw, 20*time.Second, func() []string {
				out, _, _ := sw.Docker("ps", "-aq", "--filter", "label="+svcNameLabel)
				var mine []string
				for _, id := range strings.Fields(out) {
					name, _, _ := sw.Docker("inspect", "--format", `{{index .Config.Labels "`+svcNameLabel+`"}}`, id)
					if strings.HasPrefix(strings.TrimSpace(name), d.prefix+"_") {
						mine = append(mine, id)
					}
				}
				return mine
			})
		})
		got := d.run()
		live = got
		checkSwarmGolden(t, golden, got)
	})

	t.Run("hushd", func(t *testing.T) {
		h := startSvcHushd(t)
		suffix := runSuffix(t)
		d := &jobSide{t: t, cli: h.dockerCLI, img: h.img, prefix: "sched" + suffix,
			n: &normaliser{suffix: suffix, literals: map[string]string{}}}
		got := d.run()
		checkHushdGolden(t, golden, got, live)
		waitFor(t, taskTimeout, "no container and no tmpfs left", func() bool {
			return len(h.allContainers()) == 0 && len(h.mounts()) == 0
		})
	})
}
