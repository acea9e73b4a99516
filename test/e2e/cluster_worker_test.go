package e2e

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// A hushd joining with the worker token becomes a worker: the CLI says so,
// the manager lists it without manager status, the worker answers swarm
// calls with Swarm's not-a-manager text while passing engine calls
// through, and a restart resumes worker mode.
func TestClusterJoinWorker(t *testing.T) {
	eng := withArgs("--engine", "unix://"+enginetest.Socket)
	mip, wip := "127.0.0.2", "127.0.0.5"
	port := freePortPair(t, mip)
	m := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(mip, port))
	remote := net.JoinHostPort(mip, fmt.Sprint(port))
	m.MustDocker("swarm", "init")
	// As in Swarm, the init answers once the node is Ready.
	if ls := m.MustDocker("node", "ls", "--format", "{{.ID}} {{.ManagerStatus}} {{.Status}}|"); ls != m.nodeID()+" Leader Ready|\n" {
		t.Fatalf("node ls right after swarm init: %q, want this node Leader and Ready", ls)
	}
	wtok := strings.TrimSpace(m.MustDocker("swarm", "join-token", "-q", "worker"))
	// The command the CLI prints names the manager's listen address (from
	// node inspect self), not Swarm's default port.
	if cmd := m.MustDocker("swarm", "join-token", "worker"); !strings.Contains(cmd, "docker swarm join --token "+wtok+" "+remote+"\n") {
		t.Fatalf("swarm join-token worker does not print the join command for %s:\n%s", remote, cmd)
	}

	w := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init", "--advertise-addr", wip))
	out := w.MustDocker("swarm", "join", "--token", wtok, remote)
	if strings.TrimSpace(out) != "This node joined a swarm as a worker." {
		t.Fatalf("swarm join: %q", out)
	}
	wid := w.nodeID()
	// As in Swarm, the join answers once the node is Ready: a script may
	// create a service for it at once.
	ls := m.MustDocker("node", "ls", "--format", "{{.ID}} {{.ManagerStatus}} {{.Status}}|")
	if !strings.Contains(ls, wid+"  Ready|") {
		t.Fatalf("node ls on the manager, right after the join: want worker %s Ready without manager status: %q", wid, ls)
	}

	check := func() {
		t.Helper()
		// dockerd's text for a worker (daemon/cluster's errNoManager), not
		// the one for a node in no swarm.
		const want = `This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.`
		_, stderr, code := w.Docker("service", "ls")
		if code == 0 || !strings.Contains(stderr, want) {
			t.Fatalf("service ls on the worker: exit %d, %q", code, stderr)
		}
		if st := strings.TrimSpace(w.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}")); st != "active false" {
			t.Fatalf("worker info: %q", st)
		}
		// The engine pass-through still serves.
		w.MustDocker("image", "ls", "-q")
		// A worker runs only the agent (issue 9): no etcd data.
		if _, err := os.Stat(filepath.Join(w.DataDir, "etcd")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the worker's data dir holds etcd data (%v)", err)
		}
	}
	check()
	w.Restart()
	check()
}

// A worker runs the tasks placed on it: a service constrained to workers
// runs there (its container labelled with the worker's node ID) and reads
// its secret, the worker's secrets dir holds only that task's secret (not
// the secret of a service constrained to the manager), and node ls shows
// the worker Ready while it heartbeats; then workerLogsLeaveRemove.
func TestClusterWorkerRunsTasks(t *testing.T) {
	eng := withArgs("--engine", "unix://"+enginetest.Socket)
	img := enginetest.BusyboxImage(t)
	mip, wip := "127.0.0.2", "127.0.0.5"
	port := freePortPair(t, mip)
	m := startHushd(t, eng, withSecretsDir(t), withArgs("--no-init"), withListen(mip, port))
	m.MustDocker("swarm", "init")
	wtok := strings.TrimSpace(m.MustDocker("swarm", "join-token", "-q", "worker"))
	wdirOpt, wdir := secretsDirAt(t)
	w := startHushd(t, eng, wdirOpt, withArgs("--no-init", "--advertise-addr", wip))
	remote := net.JoinHostPort(mip, fmt.Sprint(port))
	w.MustDocker("swarm", "join", "--token", wtok, remote)
	wid := w.nodeID()
	waitFor(t, 30*time.Second, "the worker Ready in node ls", func() bool {
		return strings.Contains(m.MustDocker("node", "ls", "--format", "{{.ID}} {{.Status}}|"), wid+" Ready|")
	})

	sfx := randHex(t, 4)
	wsvc, msvc := "hush-wk-w-"+sfx, "hush-wk-m-"+sfx
	wsec, msec := "hush-wk-ws-"+sfx, "hush-wk-ms-"+sfx
	wval, mval := "worker-value-"+sfx, "manager-value-"+sfx
	m.MustDockerStdin(wval, "secret", "create", wsec, "-")
	m.MustDockerStdin(mval, "secret", "create", msec, "-")
	t.Cleanup(func() {
		_, _, _ = m.Docker("service", "rm", wsvc, msvc)
		waitFor(t, 60*time.Second, "the services' containers gone", func() bool {
			return strings.TrimSpace(m.MustDocker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+wsvc)) == "" &&
				strings.TrimSpace(m.MustDocker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+msvc)) == ""
		})
		_, _, _ = m.Docker("secret", "rm", wsec, msec)
	})
	m.MustDocker("service", "create", "-d", "--name", wsvc, "--secret", wsec, "--constraint", "node.role==worker", img, "sleep", "3600")
	m.MustDocker("service", "create", "-d", "--name", msvc, "--secret", msec, "--constraint", "node.role==manager", img, "sleep", "3600")

	running := func(svc, node string) string {
		out := m.MustDocker("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc,
			"--filter", "label=com.docker.swarm.node.id="+node)
		return strings.TrimSpace(out)
	}
	var wctr string
	waitFor(t, 90*time.Second, "the worker's task running on the worker", func() bool {
		wctr = running(wsvc, wid)
		return wctr != "" && !strings.Contains(wctr, "\n")
	})
	if got := m.MustDocker("exec", wctr, "cat", "/run/secrets/"+wsec); got != wval {
		t.Fatalf("the worker's task reads %q from its secret", got)
	}
	mid := m.nodeID()
	waitFor(t, 90*time.Second, "the manager's task running on the manager", func() bool { return running(msvc, mid) != "" })
	if ps := m.MustDocker("service", "ps", "--format", "{{.Node}} {{.CurrentState}}", wsvc); !strings.Contains(ps, "Running") {
		t.Errorf("service ps %s: %q", wsvc, ps)
	}

	// The worker's tmpfs root holds its task's secret and nothing else.
	var found, names []string
	err := filepath.WalkDir(wdir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() || de.Name() == ".manifest" {
			// The manifest lists the task's mounts (names, no data).
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		found = append(found, string(b))
		rel, _ := filepath.Rel(wdir, p)
		names = append(names, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(found, wval) || slices.Contains(found, mval) || len(found) != 1 {
		t.Fatalf("the worker's secrets dir holds %v; want exactly its task's secret", names)
	}
	if ls := m.MustDocker("node", "ls", "--format", "{{.ID}} {{.Status}}|"); !strings.Contains(ls, wid+" Ready|") {
		t.Fatalf("node ls: %q", ls)
	}
	workerLogsLeaveRemove(t, m, w, wid, wtok, remote, img)
}
