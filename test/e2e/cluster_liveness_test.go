package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// Liveness and placement across every node (issue 9): two managers and a
// worker, heartbeat period 2 s. A service of three replicas spreads one
// task per node (the one on the manager that does not lead the
// orchestrator runs there too); the worker stopped (SIGSTOP) is Down on
// every manager within a bounded wait and its task runs on another node;
// continued (SIGCONT), it is Ready again and its stale task is stopped.
func TestClusterLiveness(t *testing.T) {
	eng := withArgs("--engine", "unix://"+enginetest.Socket)
	img := enginetest.BusyboxImage(t)
	ips := []string{"127.0.0.2", "127.0.0.3"}
	m1 := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(ips[0], freePortPair(t, ips[0])))
	remote := strings.TrimPrefix(m1.extraArg("--listen-addr"), "tcp://")
	// The spec's period is what every node then uses (a manager that
	// joins reads it from the cluster record; workers from their manager).
	m1.MustDocker("swarm", "init", "--dispatcher-heartbeat", "2s")
	mtok := strings.TrimSpace(m1.MustDocker("swarm", "join-token", "-q", "manager"))
	wtok := strings.TrimSpace(m1.MustDocker("swarm", "join-token", "-q", "worker"))
	m2 := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(ips[1], freePortPair(t, ips[1])))
	m2.MustDocker("swarm", "join", "--token", mtok, remote)
	w := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init", "--advertise-addr", "127.0.0.5"))
	w.MustDocker("swarm", "join", "--token", wtok, remote)
	mid1, mid2, wid := m1.nodeID(), m2.nodeID(), w.nodeID()
	managers := []*Hushd{m1, m2}

	status := func(h *Hushd) map[string]string {
		out, _, code := h.Docker("node", "ls", "--format", "{{.ID}} {{.Status}}")
		m := map[string]string{}
		if code != 0 {
			return m
		}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 {
				m[f[0]] = f[1]
			}
		}
		return m
	}
	waitAll := func(what string, want map[string]string) {
		t.Helper()
		for _, h := range managers {
			waitFor(t, 60*time.Second, what+" in node ls on "+h.Socket, func() bool {
				got := status(h)
				for id, st := range want {
					if got[id] != st {
						return false
					}
				}
				return true
			})
		}
	}
	waitAll("every node Ready", map[string]string{mid1: "Ready", mid2: "Ready", wid: "Ready"})
	// Every node described itself (the worker through its dispatcher
	// session): the engine version shows for each, and placement reads
	// their platform (node.platform.os holds on the worker too).
	engineV := strings.TrimSpace(newDockerCLI(t, enginetest.Socket).MustDocker("version", "--format", "{{.Server.Version}}"))
	ls := m1.MustDocker("node", "ls", "--format", "{{.ID}} {{.EngineVersion}}|")
	for _, id := range []string{mid1, mid2, wid} {
		if !strings.Contains(ls, id+" "+engineV+"|") {
			t.Errorf("node ls: node %s without engine version %s: %q", id, engineV, ls)
		}
	}

	svc := "hush-live-" + randHex(t, 4)
	t.Cleanup(func() {
		_, _, _ = m1.Docker("service", "rm", svc)
		waitFor(t, 60*time.Second, "the service's containers gone", func() bool {
			return strings.TrimSpace(m1.MustDocker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+svc)) == ""
		})
	})
	m2.MustDocker("service", "create", "-d", "--name", svc, "--replicas", "3", "--stop-grace-period", "1s",
		"--constraint", "node.platform.os==linux", img, "sleep", "3600")
	running := func(node string) int {
		out := m1.MustDocker("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc,
			"--filter", "label=com.docker.swarm.node.id="+node)
		return len(strings.Fields(out))
	}
	waitFor(t, 90*time.Second, "one task running on each node", func() bool {
		return running(mid1) == 1 && running(mid2) == 1 && running(wid) == 1
	})

	// The worker stops answering: no heartbeats, no reports.
	pid := w.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	stopped := true
	cont := func() {
		if stopped {
			_ = syscall.Kill(pid, syscall.SIGCONT)
			stopped = false
		}
	}
	t.Cleanup(cont)
	waitAll("the stopped worker Down", map[string]string{mid1: "Ready", mid2: "Ready", wid: "Down"})
	downAfter := time.Since(stoppedAt)
	waitFor(t, 60*time.Second, "the worker's task replaced on a manager", func() bool {
		return running(mid1)+running(mid2) == 3
	})
	// Measured, not asserted (heartbeat 2 s, restart delay 5 s).
	t.Logf("SIGSTOP -> Down on both managers: %s; -> replacement running: %s", downAfter.Round(100*time.Millisecond), time.Since(stoppedAt).Round(100*time.Millisecond))
	// Swarm keeps the down node's task as shut down, last seen running.
	ps := m1.MustDocker("service", "ps", "--format", "{{.DesiredState}} {{.CurrentState}}", svc)
	if n := strings.Count(ps, "Shutdown Running"); n != 1 {
		t.Errorf("service ps while the worker is down: %d tasks shut down but last running, want 1:\n%s", n, ps)
	}

	cont()
	waitAll("the worker Ready again", map[string]string{wid: "Ready"})
	waitFor(t, 60*time.Second, "the worker's stale task stopped", func() bool { return running(wid) == 0 })
	if got := running(mid1) + running(mid2); got != 3 {
		t.Errorf("after the worker came back: %d tasks on the managers, want 3", got)
	}
}

// extraArg returns the value that followed flag in hushd's arguments.
func (h *Hushd) extraArg(flag string) string {
	for i, a := range h.extra {
		if a == flag && i+1 < len(h.extra) {
			return h.extra[i+1]
		}
	}
	h.t.Fatalf("hushd started without %s", flag)
	return ""
}
