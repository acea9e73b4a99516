package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// Events end-to-end tests: `docker events` through hushd carries hush's own
// swarm events (merged into the engine's stream) with Swarm's shapes, and
// the engine's events still arrive.
//
// The reference Swarm is shared, so every `docker events` query here is
// narrowed to the run's objects by a name filter: dockerd applies a name
// key (secret=, service=, ...) to every event's ID and name by prefix,
// whatever the event's type, so `--filter service=evt<RUN>` keeps exactly
// the events of objects named evt<RUN>...

const evtWait = 30 * time.Second

// evtSide is one daemon in the events comparison.
type evtSide struct {
	t      *testing.T
	cli    *dockerCLI
	suffix string
	img    string
	n      *normaliser
	out    strings.Builder
}

func (d *evtSide) prefix() string { return "evt" + d.suffix }

func unixArg(t time.Time) string { return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond()) }

// events runs `docker events --since --until` with filters and returns
// its lines, sorted by time as printed.
func (d *evtSide) events(since, until time.Time, filters ...string) string {
	d.t.Helper()
	args := []string{"events", "--since", unixArg(since), "--until", unixArg(until)}
	for _, f := range filters {
		args = append(args, "--filter", f)
	}
	return d.cli.MustDocker(args...)
}

// record appends a query's normalised answer to the transcript.
func (d *evtSide) record(title, out string, drop func(string) bool) {
	var kept []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" && (drop == nil || !drop(l)) {
			kept = append(kept, l)
		}
	}
	fmt.Fprintf(&d.out, "== %s\n%s\n", title, d.n.norm(strings.Join(kept, "\n")))
}

// liveEvents is a background `docker events` process.
type liveEvents struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
	got   chan struct{}
	done  chan struct{}
	stop  func()
}

// watch starts a background `docker events` with filters.
func (d *evtSide) watch(filters ...string) *liveEvents {
	d.t.Helper()
	args := []string{"events"}
	for _, f := range filters {
		args = append(args, "--filter", f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, dockerBinary(), args...)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "DOCKER_HOST=unix://"+d.cli.host, "DOCKER_CONFIG="+d.cli.configDir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		d.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	le := &liveEvents{t: d.t, got: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(le.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			le.mu.Lock()
			le.lines = append(le.lines, sc.Text())
			le.mu.Unlock()
			select {
			case le.got <- struct{}{}:
			default:
			}
		}
	}()
	var once sync.Once
	le.stop = func() {
		once.Do(func() {
			cancel()
			<-le.done
			_ = cmd.Wait()
		})
	}
	d.t.Cleanup(le.stop)
	return le
}

// waitLine waits (bounded) for a printed line containing s.
func (le *liveEvents) waitLine(s string) {
	le.t.Helper()
	deadline := time.After(evtWait)
	for {
		le.mu.Lock()
		for _, l := range le.lines {
			if strings.Contains(l, s) {
				le.mu.Unlock()
				return
			}
		}
		n := len(le.lines)
		le.mu.Unlock()
		select {
		case <-le.got:
		case <-le.done:
			le.t.Fatalf("docker events ended after %d lines without %q", n, s)
		case <-deadline:
			le.t.Fatalf("docker events: no line with %q after %s (%d lines)", s, evtWait, n)
		}
	}
}

// subscribed makes sure the background stream is live before the test's
// own events: `docker events` prints nothing until an event comes, so
// probe secrets are made and removed until one's removal is seen.
func (d *evtSide) subscribed(le *liveEvents, probe string) {
	d.t.Helper()
	deadline := time.Now().Add(evtWait)
	for {
		d.cli.MustDockerStdin("probe", "secret", "create", probe, "-")
		d.cli.MustDocker("secret", "rm", probe)
		le.mu.Lock()
		ok := false
		for _, l := range le.lines {
			ok = ok || strings.Contains(l, " secret create ") && strings.Contains(l, "name="+probe+")")
		}
		le.mu.Unlock()
		if ok {
			le.waitLine("secret remove")
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("the background docker events never printed a probe event")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// after returns the lines printed after the last one containing s.
func (le *liveEvents) after(s string) []string {
	le.mu.Lock()
	defer le.mu.Unlock()
	for i := len(le.lines) - 1; i >= 0; i-- {
		if strings.Contains(le.lines[i], s) {
			return append([]string(nil), le.lines[i+1:]...)
		}
	}
	return append([]string(nil), le.lines...)
}

// run drives the sequence and returns the normalised transcript of the
// event queries.
func (d *evtSide) run() string {
	t := d.t
	p := d.prefix()
	sec, cfg, net, svc := p+"_sec", p+"_cfg", p+"_net", p+"_svc"
	t.Cleanup(func() {
		d.cli.Docker("service", "rm", svc)
		d.cli.Docker("secret", "rm", sec)
		d.cli.Docker("config", "rm", cfg)
		d.cli.Docker("network", "rm", net)
	})
	live := d.watch("type=secret", "secret="+p)
	probe := p + "_probe"
	d.subscribed(live, probe)
	since := time.Now()

	d.n.addID(strings.TrimSpace(d.cli.MustDockerStdin("evt-secret-value", "secret", "create", sec, "-")))
	d.cli.MustDocker("secret", "rm", sec)
	d.n.addID(strings.TrimSpace(d.cli.MustDockerStdin("evt-config-value", "config", "create", cfg, "-")))
	d.cli.MustDocker("config", "rm", cfg)
	d.n.addID(strings.TrimSpace(d.cli.MustDocker("network", "create", "-d", "overlay", net)))
	d.cli.MustDocker("network", "rm", net)
	// A long monitor keeps the rollout "updating" until the service is
	// removed, on both systems alike.
	d.n.addID(strings.TrimSpace(d.cli.MustDocker(svcArgs("service", "create", "-d", "--name", svc, "--update-monitor", "5m", d.img)...)))
	d.cli.MustDocker("service", "update", "-d", "--replicas", "2", svc)
	d.cli.MustDocker("service", "update", "-d", "--env-add", "EVT=1", svc)
	d.cli.MustDocker("service", "rm", svc)

	// The daemons publish events as they see their store's changes, a
	// moment after the calls return: wait (bounded) for the last one.
	var until time.Time
	waitFor(t, evtWait, "the service remove event", func() bool {
		until = time.Now()
		return strings.Contains(d.events(since, until, "type=service", "service="+p), " service remove ")
	})

	// The live stream saw the secret's create and remove as they happened.
	var secLines []string
	waitFor(t, evtWait, "the live secret remove", func() bool {
		secLines = nil
		for _, l := range live.after("name=" + probe + ")") {
			if strings.Contains(l, "name="+sec+")") {
				secLines = append(secLines, l)
			}
		}
		return len(secLines) == 2
	})
	live.stop()
	d.record("live: docker events --filter type=secret --filter secret=<RUN>", strings.Join(live.after("name="+probe+")"), "\n"), nil)
	d.record("docker events --since --until --filter type=secret --filter secret=<RUN>", d.events(since, until, "type=secret", "secret="+p), nil)
	d.record("docker events --since --until --filter type=config", d.events(since, until, "type=config", "config="+p), nil)
	// Swarm's network allocator rewrites a new overlay network once, which
	// it reports as an update; hush allocates in the create itself. That
	// update is dropped from the comparison (docs/COMPATIBILITY.md, Events).
	d.record("docker events --since --until --filter type=network --filter scope=swarm", d.events(since, until, "type=network", "scope=swarm", "network="+p),
		func(l string) bool { return strings.Contains(l, " network update ") })
	d.record("docker events --since --until --filter type=service", d.events(since, until, "type=service", "service="+p), nil)
	d.record("docker events --since --until --filter event=create --filter scope=swarm", d.events(since, until, "event=create", "scope=swarm", "service="+p), nil)
	// scope=local leaves only the engine's: no swarm object's events.
	d.record("docker events --since --until --filter scope=local --filter type=secret", d.events(since, until, "scope=local", "type=secret", "secret="+p), nil)
	return d.out.String()
}

// TestEventsVsSwarm runs the same object sequence against live Swarm
// (recording testdata/swarm/events.golden with -update) and against hushd,
// and compares the normalised `docker events` answers.
func TestEventsVsSwarm(t *testing.T) {
	requireDockerCLI(t)
	const golden = "events"
	var live string

	t.Run("swarm", func(t *testing.T) {
		requireSwarm(t)
		suffix := runSuffix(t)
		d := &evtSide{t: t, cli: swarmCLI(t), suffix: suffix, img: enginetest.BusyboxImage(t),
			n: &normaliser{suffix: suffix, literals: map[string]string{}}}
		got := d.run()
		live = got
		checkSwarmGolden(t, golden, got)
	})

	t.Run("hushd", func(t *testing.T) {
		h := startSvcHushd(t)
		suffix := runSuffix(t)
		d := &evtSide{t: t, cli: h.dockerCLI, suffix: suffix, img: h.img,
			n: &normaliser{suffix: suffix, literals: map[string]string{}}}
		got := d.run()
		checkHushdGolden(t, golden, got, live)
		waitFor(t, taskTimeout, "no container and no tmpfs left", func() bool {
			return len(h.allContainers()) == 0 && len(h.mounts()) == 0
		})
	})
}

// TestEventsNodeAndEngine: through hushd, a node update is Swarm's node
// event, the engine's own events (a container's start and die) still
// arrive, and scope=local keeps them while dropping hush's.
func TestEventsNodeAndEngine(t *testing.T) {
	h := startSvcHushd(t)
	suffix := runSuffix(t)
	name := "evt" + suffix + "_run"
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now().Add(-time.Millisecond)
	h.MustDocker("node", "update", "--label-add", "evt"+suffix+"=1", h.node)
	h.MustDocker("node", "update", "--label-rm", "evt"+suffix, h.node)
	h.MustDocker("run", "--rm", "--name", name, h.img, "true")
	until := time.Now()

	q := func(filters ...string) []string {
		args := []string{"events", "--since", unixArg(since), "--until", unixArg(until), "--format", "{{.Scope}} {{.Type}} {{.Action}} {{.Actor.ID}} {{.Actor.Attributes.name}}"}
		for _, f := range filters {
			args = append(args, "--filter", f)
		}
		return strings.Split(strings.TrimSpace(h.MustDocker(args...)), "\n")
	}
	// Swarm reports a label change as an update naming the node by its
	// hostname, with no further attributes (seen on the reference: the
	// node's labels are not shared state to change in a test there).
	want := []string{"swarm node update " + h.node + " " + host, "swarm node update " + h.node + " " + host}
	if got := q("type=node", "node="+h.node); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("node events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The engine's events for the container, through hushd and straight
	// from the engine, are the same lines.
	ctr := q("type=container", "container="+name)
	actions := map[string]bool{}
	for _, l := range ctr {
		f := strings.Fields(l)
		if len(f) >= 3 {
			actions[f[2]] = true
		}
	}
	if !actions["start"] || !actions["die"] {
		t.Errorf("container events through hushd lack start or die:\n%s", strings.Join(ctr, "\n"))
	}
	engine := newDockerCLI(t, enginetest.Socket)
	direct := strings.Split(strings.TrimSpace(engine.MustDocker("events", "--since", unixArg(since), "--until", unixArg(until),
		"--format", "{{.Scope}} {{.Type}} {{.Action}} {{.Actor.ID}} {{.Actor.Attributes.name}}", "--filter", "type=container", "--filter", "container="+name)), "\n")
	if strings.Join(ctr, "\n") != strings.Join(direct, "\n") {
		t.Errorf("container events through hushd:\n%s\nstraight from the engine:\n%s", strings.Join(ctr, "\n"), strings.Join(direct, "\n"))
	}

	// scope=local: the engine's events stay, hush's node events go.
	local := q("scope=local")
	var sawLocal bool
	for _, l := range local {
		if strings.HasPrefix(l, "swarm ") {
			t.Errorf("scope=local returned a swarm event: %s", l)
		}
		if strings.HasPrefix(l, "local container ") && strings.HasSuffix(l, " "+name) {
			sawLocal = true
		}
	}
	if !sawLocal {
		t.Errorf("scope=local lacks the container's events:\n%s", strings.Join(local, "\n"))
	}
	// And with no filter, both.
	all := q()
	var nodes, ctrs int
	for _, l := range all {
		switch {
		case strings.HasPrefix(l, "swarm node update "+h.node):
			nodes++
		case strings.HasPrefix(l, "local container ") && strings.HasSuffix(l, " "+name):
			ctrs++
		}
	}
	if nodes != 2 || ctrs == 0 {
		t.Errorf("unfiltered stream: %d node events (want 2), %d container events of %s:\n%s", nodes, ctrs, name, strings.Join(all, "\n"))
	}
}
