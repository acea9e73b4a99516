package agent

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// Logs of the fake engine: the container's ID and the options, as text.
func (x *fakeExec) Logs(_ context.Context, id string, o LogOptions) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("logs of " + id + " tail " + o.Tail)), nil
}

// TaskLogs serves only a task of this node's view, from the container this
// node made for it; never another node's container or an unknown task.
func TestTaskLogs(t *testing.T) {
	r := newRig()
	r.send(model.Assignments{Full: true, Tasks: assign(newTask("t1", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning),
		newTask("t4", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning))})
	r.x.ctrs["c1"] = engine.State{ID: "c1", Labels: map[string]string{labelHush: "n1", "com.docker.swarm.task.id": "t1"}}
	// Another node's containers on a shared engine: of a task not in the
	// view, and (as a forged label would) of one in it.
	r.x.ctrs["c2"] = engine.State{ID: "c2", Labels: map[string]string{labelHush: "n2", "com.docker.swarm.task.id": "t2"}}
	r.x.ctrs["c4"] = engine.State{ID: "c4", Labels: map[string]string{labelHush: "n2", "com.docker.swarm.task.id": "t4"}}
	ctx := context.Background()
	for _, tc := range []struct {
		task string
		tail string
		want string
		cat  error
	}{
		{"t1", "5", "logs of c1 tail 5", nil},
		{"t2", "", "", errdefs.ErrNotFound},
		{"t4", "", "", errdefs.ErrNotFound},
		{"nosuch", "", "", errdefs.ErrNotFound},
		{"t1", strings.Repeat("9", 65), "", errdefs.ErrInvalidArgument},
	} {
		rc, err := r.a.TaskLogs(ctx, tc.task, LogOptions{Tail: tc.tail})
		if tc.cat != nil {
			if !errors.Is(err, tc.cat) {
				t.Errorf("%s: %v, want %v", tc.task, err, tc.cat)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.task, err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if string(b) != tc.want {
			t.Errorf("%s: %q", tc.task, b)
		}
	}
	// A task of the view whose container is gone has no logs here.
	r.send(model.Assignments{Tasks: assign(newTask("t3", "n1", swarm.TaskStateRunning, swarm.TaskStateRunning))})
	if _, err := r.a.TaskLogs(ctx, "t3", LogOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("t3: %v", err)
	}
}
