package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// Swarm's text for a write without quorum.
const noLeaderText = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online."

// The leader cut off from the other managers (a minority of one) refuses
// writes with Swarm's no-leader text and applies none of them, while the
// other two elect a leader and go on; after the cut heals, the cut-off
// manager catches up.
func testLabMinorityCutOff(t *testing.T, c *labCluster) {
	sfx := randHex(t, 3)
	cut := c.leader(t)
	var majority []*Hushd
	for _, n := range []string{"m1", "m2", "m3"} {
		if n != cut {
			majority = append(majority, c.byName[n])
		}
	}
	minority := c.byName[cut]
	c.lab.cut(cut)
	healed := false
	heal := func() {
		if !healed {
			healed = true
			c.lab.heal(cut)
		}
	}
	t.Cleanup(heal)

	// The majority goes on.
	maj := "part-" + sfx + "-maj"
	waitFor(t, 60*time.Second, "a write through the majority", func() bool {
		_, errOut, code, err := tryDocker(majority[0], 20*time.Second, "v", "secret", "create", maj, "-")
		// "already exists": an earlier attempt whose answer was lost applied.
		return err == nil && (code == 0 || strings.Contains(errOut, "already exists"))
	})
	majority[1].MustDocker("secret", "inspect", maj)

	// The minority refuses, with Swarm's text, and acknowledges nothing.
	var refused []string
	for i := 0; ; i++ {
		name := fmt.Sprintf("part-%s-min-%d", sfx, i)
		_, errOut, code, err := tryDocker(minority, 20*time.Second, "v", "secret", "create", name, "-")
		if err == nil && code == 0 {
			t.Fatalf("the cut-off manager %s acknowledged the write of %s", cut, name)
		}
		if err == nil && strings.Contains(errOut, noLeaderText) {
			refused = append(refused, name)
			break
		}
		if i >= 10 {
			t.Fatalf("the cut-off manager %s gave no no-leader refusal in %d writes; last: %v %q", cut, i+1, err, errOut)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// More writes on the majority while the minority is away.
	for i := range 3 {
		majority[i%2].MustDockerStdin("v", "secret", "create", fmt.Sprintf("part-%s-maj-%d", sfx, i), "-")
	}

	heal()
	waitFor(t, 90*time.Second, "the healed manager serving the majority's writes", func() bool {
		_, _, code, err := tryDocker(minority, 20*time.Second, "", "secret", "inspect", fmt.Sprintf("part-%s-maj-2", sfx))
		return err == nil && code == 0
	})
	c.waitHealthy(t)
	for _, h := range append(majority, minority) {
		for _, name := range refused {
			if _, _, code, err := tryDocker(h, 20*time.Second, "", "secret", "inspect", name); err != nil || code == 0 {
				t.Errorf("the refused write of %s is visible on %s (or the read failed: %v)", name, h.Socket, err)
			}
		}
	}
}

// labObjects lists the cluster's secrets, configs, services and nodes on
// h, sorted.
func labObjects(h *Hushd) []string {
	var all []string
	for _, args := range [][]string{
		{"secret", "ls", "--format", "secret {{.ID}} {{.Name}}"},
		{"config", "ls", "--format", "config {{.ID}} {{.Name}}"},
		{"service", "ls", "--format", "service {{.ID}} {{.Name}} {{.Mode}}"},
		{"node", "ls", "--format", "node {{.ID}}"},
	} {
		all = append(all, strings.Split(strings.TrimSpace(h.MustDocker(args...)), "\n")...)
	}
	slices.Sort(all)
	return all
}

// kill -9 of every node, then all started again: every object is there on
// every manager, with one leader, and the worker runs its task again.
func testLabRestartAll(t *testing.T, c *labCluster) {
	img := enginetest.BusyboxImage(t)
	sfx := randHex(t, 3)
	m1 := c.managers[0]
	sec, cfg, svc := "all-s-"+sfx, "all-c-"+sfx, "all-svc-"+sfx
	m1.MustDockerStdin("secret-"+sfx, "secret", "create", sec, "-")
	c.managers[1].MustDockerStdin("config-"+sfx, "config", "create", cfg, "-")
	t.Cleanup(func() {
		_, _, _ = c.managers[0].Docker("service", "rm", svc)
		waitFor(t, 60*time.Second, "the service's containers gone", func() bool {
			return strings.TrimSpace(c.managers[0].MustDocker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+svc)) == ""
		})
	})
	c.managers[2].MustDocker("service", "create", "-d", "--name", svc, "--secret", sec, "--config", cfg,
		"--constraint", "node.role==worker", "--stop-grace-period", "1s", img, "sleep", "3600")
	want := labObjects(m1)
	for _, n := range []string{sec, cfg, svc} {
		if !strings.Contains(strings.Join(want, "\n"), " "+n) {
			t.Fatalf("objects before the restart lack %s: %v", n, want)
		}
	}

	c.killAll()
	// All started before any is waited for: on main a manager serves
	// nothing until it has a quorum (see testLabNoQuorumPing).
	for _, n := range []string{"m1", "m2", "m3", "w1"} {
		c.byName[n].launch()
	}
	for _, n := range []string{"m1", "m2", "m3", "w1"} {
		c.byName[n].waitReady()
	}
	c.waitHealthy(t)
	c.checkRaftTiming(t)
	for i, m := range c.managers {
		if got := labObjects(m); !slices.Equal(got, want) {
			t.Errorf("objects on m%d after the restart:\n%s\nbefore:\n%s", i+1, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	waitFor(t, 90*time.Second, "the service's task running on the worker", func() bool {
		out := m1.MustDocker("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc,
			"--filter", "label=com.docker.swarm.node.id="+c.ids["w1"])
		return strings.TrimSpace(out) != ""
	})
	// The values survived too: hush, as Swarm, never returns a secret's
	// data over the API, so a task started after the restart reads them
	// (one already running could still read its tmpfs from before).
	svc2 := "all-svc2-" + sfx
	t.Cleanup(func() {
		_, _, _ = c.managers[0].Docker("service", "rm", svc2)
		waitFor(t, 60*time.Second, "the second service's containers gone", func() bool {
			return strings.TrimSpace(c.managers[0].MustDocker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+svc2)) == ""
		})
	})
	c.managers[1].MustDocker("service", "create", "-d", "--name", svc2, "--secret", sec, "--config", cfg,
		"--constraint", "node.role==worker", "--stop-grace-period", "1s", img, "sleep", "3600")
	var ctr string
	waitFor(t, 90*time.Second, "the second service's task running on the worker", func() bool {
		ctr = strings.TrimSpace(m1.MustDocker("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc2,
			"--filter", "label=com.docker.swarm.node.id="+c.ids["w1"]))
		return ctr != "" && !strings.Contains(ctr, "\n")
	})
	if got := m1.MustDocker("exec", ctr, "cat", "/run/secrets/"+sec); got != "secret-"+sfx {
		t.Errorf("a task started after the restart reads %d byte(s) from its secret, not the value it was created with", len(got))
	}
	if got := m1.MustDocker("exec", ctr, "cat", "/"+cfg); got != "config-"+sfx {
		t.Errorf("a task started after the restart reads %q from its config, want %q", got, "config-"+sfx)
	}
}

// A worker cut off from every manager is marked Down on every manager,
// its task is started on another node, and it is Ready again once the cut
// heals (its superseded task then stopped).
func testLabWorkerCutOff(t *testing.T, c *labCluster) {
	img := enginetest.BusyboxImage(t)
	sfx := randHex(t, 3)
	svc := "cut-w-" + sfx
	m1 := c.managers[0]
	t.Cleanup(func() {
		_, _, _ = c.managers[0].Docker("service", "rm", svc)
		waitFor(t, 60*time.Second, "the service's containers gone", func() bool {
			return strings.TrimSpace(c.managers[0].MustDocker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+svc)) == ""
		})
	})
	// Four replicas spread over four nodes: one on the worker.
	m1.MustDocker("service", "create", "-d", "--name", svc, "--replicas", "4", "--stop-grace-period", "1s", img, "sleep", "3600")
	running := func(node string) int {
		out := m1.MustDocker("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc, "--filter", "label=com.docker.swarm.node.id="+c.ids[node])
		return len(strings.Fields(out))
	}
	onManagers := func() int { return running("m1") + running("m2") + running("m3") }
	waitFor(t, 90*time.Second, "one replica on each node (the worker's among them)", func() bool {
		return running("w1") == 1 && onManagers() == 3
	})

	c.lab.cut("w1")
	healed := false
	heal := func() {
		if !healed {
			healed = true
			c.lab.heal("w1")
		}
	}
	t.Cleanup(heal)
	for _, m := range c.managers {
		waitNodes(t, m, 90*time.Second, "the cut-off worker Down", func(st map[string]string) bool {
			return st[c.ids["w1"]] == "|Down"
		})
	}
	waitFor(t, 90*time.Second, "the worker's replica started on a manager", func() bool { return onManagers() == 4 })

	heal()
	for _, m := range c.managers {
		waitNodes(t, m, 90*time.Second, "the worker Ready again", func(st map[string]string) bool {
			return st[c.ids["w1"]] == "|Ready"
		})
	}
	waitFor(t, 90*time.Second, "the worker's superseded replica stopped", func() bool { return running("w1") == 0 })
	if n := onManagers(); n != 4 {
		t.Errorf("%d replicas on the managers after the heal, want 4", n)
	}
}

func (c *labCluster) killAll() {
	for _, h := range c.byName {
		h.Kill()
	}
}

// After kill -9 of every node, one manager started alone answers /_ping at
// once and refuses swarm calls with Swarm's no-leader text; once the
// others are back, the cluster is whole again.
func testLabNoQuorumPing(t *testing.T, c *labCluster) {
	c.killAll()
	t.Cleanup(func() {
		for _, n := range []string{"m1", "m2", "m3", "w1"} {
			if !c.byName[n].running() {
				c.byName[n].launch()
			}
		}
		for _, n := range []string{"m1", "m2", "m3", "w1"} {
			c.byName[n].waitReady()
		}
		c.waitHealthy(t)
	})
	m1 := c.byName["m1"]
	m1.start() // waits for /_ping 200 (bounded)
	_, errOut, code, err := tryDocker(m1, 30*time.Second, "v", "secret", "create", "noquorum-"+randHex(t, 3), "-")
	if err != nil || code == 0 || !strings.Contains(errOut, noLeaderText) {
		t.Errorf("secret create on a manager without quorum: exit %d, %v, %q; want Swarm's no-leader text", code, err, errOut)
	}
}

// stopWithoutQuorumFixed: a manager not leading the orchestrator, stopped
// last, used to outlast the helper's 20 s (its cancelled campaign closed
// the etcd session, whose lease revoke waited out the TTL without quorum;
// fixed on main by a6f1d95).
const stopWithoutQuorumFixed = true

// The nodes stopped one by one with SIGTERM, a manager that does not lead
// last: each exits 0 within the helper's bound (Hushd.Stop fails the test
// otherwise). It leaves the cluster stopped, so it runs last.
func testLabStopWithoutQuorum(t *testing.T, c *labCluster) {
	if !stopWithoutQuorumFixed {
		t.Skip("KNOWN BUG (reported to the lead): the last manager, not the orchestrator's leader, takes over 20 s to exit on SIGTERM without quorum (store.Campaign's sess.Close waits out the lease TTL); set stopWithoutQuorumFixed when fixed")
	}
	leader := c.leader(t)
	var last string
	order := []string{"w1"}
	for _, n := range []string{"m1", "m2", "m3"} {
		if n == leader {
			order = append(order, n)
		} else if last == "" {
			last = n
		} else {
			order = append(order, n)
		}
	}
	for _, n := range append(order, last) {
		c.byName[n].Stop()
	}
}
