package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// workerLogsLeaveRemove continues TestClusterWorkerRunsTasks's cluster
// (manager m, worker w of ID wid, its worker token and the manager's
// address): the manager serves `service logs` of a task running on the
// worker (asked through the worker's dispatcher session, since the
// manager reads only its own node's tasks from its engine) and `service
// ps` names the worker by hostname; `node rm`
// answers Swarm's refusals; `swarm leave` on the worker removes its task
// containers and the manager then shows it Down; after a rejoin,
// `node rm --force` removes it from `node ls` and the worker learns it
// and leaves the swarm by itself; its membership files put back, its
// certificate is refused and it leaves again.
func workerLogsLeaveRemove(t *testing.T, m, w *Hushd, wid, wtok, remote, img string) {
	sfx := randHex(t, 4)
	svc, line := "hush-rm-logs-"+sfx, "hush-remote-line-"+sfx
	t.Cleanup(func() { _, _, _ = m.Docker("service", "rm", svc) })
	m.MustDocker("service", "create", "-d", "--name", svc, "--constraint", "node.role==worker", img,
		"sh", "-c", "echo "+line+"; exec sleep 3600")
	onWorker := func() string {
		return strings.TrimSpace(m.MustDocker("ps", "-aq", "--filter", "label=io.hush.node.id="+wid))
	}
	waitFor(t, 90*time.Second, "the logging task running on the worker", func() bool {
		return strings.TrimSpace(m.MustDocker("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc,
			"--filter", "label=com.docker.swarm.node.id="+wid)) != ""
	})
	waitFor(t, 30*time.Second, "the worker's task line in service logs", func() bool {
		out, _, code := m.Docker("service", "logs", "--tail", "5", svc)
		return code == 0 && strings.Contains(out, line)
	})

	// service ps names the worker by its hostname (the CLI inspects it).
	if ps := strings.TrimSpace(m.MustDocker("service", "ps", "--format", "{{.Node}}", svc)); ps == "" || strings.Contains(ps, wid) {
		t.Fatalf("service ps NODE of the worker's task: %q", ps)
	}

	mid := m.nodeID()
	for _, tc := range []struct{ ref, want string }{
		{mid, fmt.Sprintf("node %s is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal", mid)},
		{wid, fmt.Sprintf("node %s is not down and can't be removed", wid)},
		{"nosuchnode", "node nosuchnode not found"},
	} {
		if _, stderr, code := m.Docker("node", "rm", tc.ref); code == 0 || !strings.Contains(stderr, tc.want) {
			t.Fatalf("node rm %s: exit %d, %q; want %q", tc.ref, code, stderr, tc.want)
		}
	}

	if out := strings.TrimSpace(w.MustDocker("swarm", "leave")); out != "Node left the swarm." {
		t.Fatalf("swarm leave on the worker: %q", out)
	}
	if ids := onWorker(); ids != "" {
		t.Fatalf("the worker's task containers outlived its leave: %q", ids)
	}
	waitFor(t, 60*time.Second, "the worker Down in node ls", func() bool {
		return strings.Contains(m.MustDocker("node", "ls", "--format", "{{.ID}} {{.Status}}|"), wid+" Down|")
	})

	w.MustDocker("swarm", "join", "--token", wtok, remote)
	waitFor(t, 30*time.Second, "the rejoined worker Ready", func() bool {
		return strings.Contains(m.MustDocker("node", "ls", "--format", "{{.ID}} {{.Status}}|"), wid+" Ready|")
	})
	// The membership the worker holds now, to replay after the removal.
	kept := map[string][]byte{}
	for _, f := range []string{"worker.json", filepath.Join("keys", "node.key")} {
		b, err := os.ReadFile(filepath.Join(w.DataDir, f))
		if err != nil {
			t.Fatal(err)
		}
		kept[f] = b
	}
	if _, stderr, code := m.Docker("node", "rm", "--force", wid); code != 0 {
		t.Fatalf("node rm --force of the worker: exit %d, %q", code, stderr)
	}
	if ls := m.MustDocker("node", "ls", "-q"); strings.Contains(ls, wid) {
		t.Fatalf("node ls lists the removed worker: %q", ls)
	}
	waitFor(t, 30*time.Second, "the removed worker out of the swarm", func() bool {
		return strings.TrimSpace(w.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")) == "inactive"
	})
	waitFor(t, 30*time.Second, "the removed worker's containers gone", func() bool { return onWorker() == "" })

	// Its certificate is refused from then on: put back, it opens no session
	// and the node leaves again.
	w.Stop()
	for f, b := range kept {
		if err := os.WriteFile(filepath.Join(w.DataDir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	w.Restart()
	waitFor(t, 60*time.Second, "the replayed membership refused", func() bool {
		return strings.TrimSpace(w.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")) == "inactive"
	})
	if ls := m.MustDocker("node", "ls", "-q"); strings.Contains(ls, wid) {
		t.Fatalf("node ls lists the removed worker after its replay: %q", ls)
	}
}
