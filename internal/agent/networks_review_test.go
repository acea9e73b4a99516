package agent

import (
	"testing"

	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// A task with swarm networks whose attachments name none (a manager that
// answers in the former shape, engine network IDs in a field this agent
// no longer reads, as in a rolling upgrade; or any answer that lost
// them) must not start on the engine's default network as if it had
// none: its container would run cut off from its service's networks,
// reported running. It is rejected, saying why.
func TestNetworkedTaskWithoutAttachmentsRejected(t *testing.T) {
	r := newRig()
	r.sess.nets = map[string][]model.TaskNetwork{}
	t1 := newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateAssigned)
	t1.Spec.Networks = []swarm.NetworkAttachmentConfig{{Target: "front"}}
	r.send(model.Assignments{Full: true, Tasks: assign(t1)})
	r.pass(t)
	if len(r.x.created) != 0 {
		t.Fatalf("a container was created without the task's networks: %+v", r.x.created)
	}
	if got := r.sess.last("t1"); got.State != swarm.TaskStateRejected {
		t.Fatalf("t1's last report: %+v; want rejected", got)
	}
}
