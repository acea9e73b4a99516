package e2e

import (
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// rmLabService removes a service (if there) and waits (bounded) until its
// containers are gone from the engine.
func rmLabService(t *testing.T, c *labCluster, via func() *Hushd, svc string) {
	t.Helper()
	_, _, _ = via().Docker("service", "rm", svc)
	waitFor(t, 60*time.Second, "the containers of "+svc+" gone", func() bool {
		return strings.TrimSpace(via().MustDocker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+svc)) == ""
	})
}

// runningByNode counts the engine's running containers of svc by the
// node label hush gives them (node ID -> count).
func runningByNode(h *Hushd, svc string) map[string]int {
	out := h.MustDocker("ps", "--filter", "label=com.docker.swarm.service.name="+svc,
		"--format", `{{.Label "com.docker.swarm.node.id"}}`)
	m := map[string]int{}
	for _, id := range strings.Fields(out) {
		m[id]++
	}
	return m
}

// servicePsRunning is `docker service ps svc` on h, tasks desired running,
// as node ID -> task IDs, found node by node through the CLI's own node
// filter (which resolves the node through the API); also the NODE column of
// each task, checked against the node's hostname.
func servicePsRunning(t *testing.T, c *labCluster, h *Hushd, svc string) map[string][]string {
	t.Helper()
	all := strings.Fields(h.MustDocker("service", "ps", "-q", "--no-trunc", "--filter", "desired-state=running", svc))
	got := map[string][]string{}
	seen := 0
	for _, name := range []string{"m1", "m2", "m3", "w1"} {
		id := c.ids[name]
		out := h.MustDocker("service", "ps", "--no-trunc", "--filter", "desired-state=running", "--filter", "node="+id,
			"--format", "{{.ID}}|{{.Node}}|{{.CurrentState}}", svc)
		host := strings.TrimSpace(h.MustDocker("node", "inspect", "--format", "{{.Description.Hostname}}", id))
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if l == "" {
				continue
			}
			f := strings.SplitN(l, "|", 3)
			if len(f) != 3 || f[1] != host || !strings.HasPrefix(f[2], "Running") {
				return nil // not there yet (or the NODE column wrong: reported by the caller's wait)
			}
			got[id] = append(got[id], f[0])
			seen++
		}
	}
	if seen != len(all) {
		t.Fatalf("service ps %s: %d tasks desired running, %d found node by node: %v", svc, len(all), seen, got)
	}
	return got
}

// A global service runs one task on every node (the three managers and
// the worker): `docker service ps` lists one running task per node, with
// the node's name, and the engine runs one container per node. With
// --constraint node.role==worker it runs on the worker alone.
func testLabGlobalService(t *testing.T, c *labCluster) {
	img := enginetest.BusyboxImage(t)
	sfx := randHex(t, 3)
	m2 := c.managers[1]
	allIDs := append(c.managerIDs(), c.ids["w1"])
	slices.Sort(allIDs)
	cases := []struct {
		svc   string
		extra []string
		want  []string // node IDs
	}{
		{"glob-" + sfx, nil, allIDs},
		{"glob-w-" + sfx, []string{"--constraint", "node.role==worker"}, []string{c.ids["w1"]}},
	}
	t.Cleanup(func() {
		for _, tc := range cases {
			_, _, _ = c.managers[0].Docker("service", "rm", tc.svc)
		}
		for _, tc := range cases {
			rmLabService(t, c, func() *Hushd { return c.managers[0] }, tc.svc)
		}
	})
	// Both created before either is waited for.
	for _, tc := range cases {
		args := append([]string{"service", "create", "-d", "--name", tc.svc, "--mode", "global", "--stop-grace-period", "1s"}, tc.extra...)
		m2.MustDocker(append(args, img, "sh", "-c", "echo "+logLine+"; exec sleep 3600")...)
	}
	for _, tc := range cases {
		var last map[string][]string
		waitFor(t, 90*time.Second, fmt.Sprintf("service ps %s: one running task on each of %v", tc.svc, tc.want), func() bool {
			last = servicePsRunning(t, c, m2, tc.svc)
			got := slices.Sorted(maps.Keys(last))
			if !slices.Equal(got, tc.want) {
				return false
			}
			for _, ids := range last {
				if len(ids) != 1 {
					return false
				}
			}
			return true
		})
		// Each manager lists the same tasks.
		for i, m := range []*Hushd{c.managers[0], c.managers[2]} {
			if got := servicePsRunning(t, c, m, tc.svc); !maps.EqualFunc(got, last, slices.Equal) {
				t.Errorf("service ps %s on m%d: %v, on m2: %v", tc.svc, 2*i+1, got, last)
			}
		}
		// And the engine runs exactly those containers.
		want := map[string]int{}
		for _, id := range tc.want {
			want[id] = 1
		}
		waitFor(t, 60*time.Second, "one container of "+tc.svc+" per node, on its nodes only", func() bool {
			return maps.Equal(runningByNode(m2, tc.svc), want)
		})
		// Every manager's `service logs` has every task's line, those of
		// tasks on the other managers (relayed from their own agents) and
		// on the worker (through its dispatcher session) included.
		for i, m := range c.managers {
			waitFor(t, 30*time.Second, fmt.Sprintf("service logs %s on m%d: one line of each of its %d tasks", tc.svc, i+1, len(tc.want)), func() bool {
				out, _, _ := m.Docker("service", "logs", "--raw", tc.svc)
				return strings.Count(out, logLine+"\n") == len(tc.want)
			})
		}
	}
}

// logLine is what each task of the lab's global services prints.
const logLine = "hush-lab-global-task-started"

// workerSessionPeer is the manager (lab host name) the worker's dispatcher
// session was last opened with, from the worker's log ("" when none yet).
func workerSessionPeer(t *testing.T, c *labCluster) string {
	t.Helper()
	b, err := os.ReadFile(c.worker.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	var last string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, `msg="dispatcher session opened"`) {
			continue
		}
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "manager="); ok {
				last = v
			}
		}
	}
	host, _, _ := net.SplitHostPort(last)
	for _, n := range []string{"m1", "m2", "m3"} {
		if host != "" && c.lab.host(n).ip == host {
			return n
		}
	}
	return ""
}

// The manager holding the worker's dispatcher session cut off alone (the
// worker stays connected to the others): it refuses writes with Swarm's
// no-leader text while the other two take them; the worker's session moves
// to one of the two, shown by a task the majority assigns it during the
// cut running there; healed, the cut-off manager serves what was written
// meanwhile.
func testLabWorkerManagerCutOff(t *testing.T, c *labCluster) {
	img := enginetest.BusyboxImage(t)
	sfx := randHex(t, 3)
	t0 := time.Now()
	phase := func(what string) { t.Logf("%s after %s", what, time.Since(t0).Round(100*time.Millisecond)) }
	var cut string
	waitFor(t, 30*time.Second, "the worker's dispatcher session opened with a manager", func() bool {
		cut = workerSessionPeer(t, c)
		return cut != ""
	})
	minority := c.byName[cut]
	var majority []*Hushd
	var majNames []string
	for _, n := range []string{"m1", "m2", "m3"} {
		if n != cut {
			majority = append(majority, c.byName[n])
			majNames = append(majNames, n)
		}
	}
	t.Logf("cutting %s (the worker's manager); majority %v", cut, majNames)
	svc, sec := "cut-m-"+sfx, "cut-m-s-"+sfx
	t.Cleanup(func() { rmLabService(t, c, func() *Hushd { return majority[0] }, svc) })
	c.lab.cut(cut)
	healed := false
	heal := func() {
		if !healed {
			healed = true
			c.lab.heal(cut)
		}
	}
	t.Cleanup(heal)

	// The majority takes writes (a secret and a service for the worker).
	waitFor(t, 60*time.Second, "a write through the majority", func() bool {
		_, errOut, code, err := tryDocker(majority[0], 20*time.Second, "v", "secret", "create", sec, "-")
		return err == nil && (code == 0 || strings.Contains(errOut, "already exists"))
	})
	majority[1].MustDocker("service", "create", "-d", "--name", svc, "--secret", sec,
		"--constraint", "node.role==worker", "--stop-grace-period", "1s", img, "sleep", "3600")

	phase("the majority took the writes")
	// The cut-off manager refuses, with Swarm's text.
	for i := 0; ; i++ {
		name := fmt.Sprintf("cut-m-%s-min-%d", sfx, i)
		_, errOut, code, err := tryDocker(minority, 20*time.Second, "v", "secret", "create", name, "-")
		if err == nil && code == 0 {
			t.Fatalf("the cut-off manager %s acknowledged the write of %s", cut, name)
		}
		if err == nil && strings.Contains(errOut, noLeaderText) {
			break
		}
		if i >= 10 {
			t.Fatalf("the cut-off manager %s gave no no-leader refusal in %d writes; last: %v %q", cut, i+1, err, errOut)
		}
		time.Sleep(500 * time.Millisecond)
	}

	phase("the cut-off manager refused")
	// The worker's session moves to the majority: the task assigned during
	// the cut runs on the worker, and the majority sees it Ready.
	// Whether the majority marks the worker Down meanwhile is logged, not
	// asserted (it depends on how fast the worker gives up its session).
	sawDown := false
	waitFor(t, 90*time.Second, "the worker's session on a majority manager", func() bool {
		if st, ok := nodeStates(majority[0]); ok && st[c.ids["w1"]] == "|Down" {
			sawDown = true
		}
		p := workerSessionPeer(t, c)
		return p != "" && p != cut
	})
	phase(fmt.Sprintf("the worker's session moved (seen Down on the majority meanwhile: %v)", sawDown))
	waitFor(t, 90*time.Second, "the service's task running on the worker", func() bool {
		return maps.Equal(runningByNode(majority[0], svc), map[string]int{c.ids["w1"]: 1})
	})
	phase("the task runs on the worker")
	for _, m := range majority {
		waitNodes(t, m, 60*time.Second, "the worker Ready on the majority", func(st map[string]string) bool {
			return st[c.ids["w1"]] == "|Ready"
		})
	}
	if out := majority[0].MustDocker("service", "ps", "-q", "--filter", "desired-state=running", "--filter", "node="+c.ids["w1"], svc); len(strings.Fields(out)) != 1 {
		t.Errorf("service ps %s --filter node=w1 on the majority: %q, want one task", svc, out)
	}

	heal()
	phase("healed")
	waitFor(t, 90*time.Second, "the healed manager serving the majority's writes", func() bool {
		_, _, code, err := tryDocker(minority, 20*time.Second, "", "service", "inspect", svc)
		return err == nil && code == 0
	})
	minority.MustDocker("secret", "inspect", sec)
	phase("the healed manager caught up")
	c.waitHealthy(t)
	phase("the cluster healthy")
}
