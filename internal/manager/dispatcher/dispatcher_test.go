package dispatcher

import (
	"context"
	"fmt"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

type tasks map[string]*model.Task

func (ts tasks) GetTask(_ context.Context, id string) (*model.Task, error) {
	if t, ok := ts[id]; ok {
		return t, nil
	}
	return nil, errdefs.NotFound("task %s not found", id)
}

// data records which IDs were opened; IDs in templated are templated.
type data struct {
	opened    []string
	templated map[string]bool
}

func (d *data) ContentVersion(_ context.Context, id string, n int) ([]byte, string, error) {
	d.opened = append(d.opened, id)
	drv := ""
	if d.templated[id] {
		drv = "golang"
	}
	if n != 1 {
		return fmt.Appendf(nil, "value-of-%s-v%d", id, n), drv, nil
	}
	return []byte("value-of-" + id), drv, nil
}

func task(id, node string, desired swarm.TaskState, secretIDs ...string) *model.Task {
	t := &model.Task{}
	t.ID, t.NodeID, t.DesiredState = id, node, desired
	cs := &swarm.ContainerSpec{Image: "x"}
	for _, s := range secretIDs {
		cs.Secrets = append(cs.Secrets, &swarm.SecretReference{SecretID: s, SecretName: s, File: &swarm.SecretReferenceFileTarget{Name: s, UID: "0", GID: "0", Mode: 0o444}})
	}
	t.Spec.ContainerSpec = cs
	return t
}

func TestTaskDataAuthorization(t *testing.T) {
	ts := tasks{
		"t1": task("t1", "n1", swarm.TaskStateRunning, "s1", "s2"),
		"t2": task("t2", "n2", swarm.TaskStateRunning, "s3"),
		"t3": task("t3", "n1", swarm.TaskStateShutdown, "s1"),
	}
	tests := []struct {
		name, node, task string
		wantErr          error
		wantOpened       []string
	}{
		{"own running task", "n1", "t1", nil, []string{"s1", "s2"}},
		{"another node's task", "n1", "t2", errdefs.ErrUnauthorized, nil},
		{"task not meant to run", "n1", "t3", errdefs.ErrUnauthorized, nil},
		{"unknown task", "n1", "nope", errdefs.ErrNotFound, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &data{}
			disp := New(ts, d, d, nil)
			out, err := disp.TaskData(context.Background(), tt.node, tt.task)
			if tt.wantErr != nil {
				if !errdefs.Is(err, tt.wantErr) || len(d.opened) != 0 {
					t.Fatalf("got %v, opened %v", err, d.opened)
				}
				return
			}
			if err != nil || len(out) != len(tt.wantOpened) || len(d.opened) != len(tt.wantOpened) {
				t.Fatalf("got %d payloads, opened %v, err %v; want %v", len(out), d.opened, err, tt.wantOpened)
			}
			for i, id := range tt.wantOpened {
				if d.opened[i] != id || out[i].ID != id || string(out[i].Data) != "value-of-"+id {
					t.Fatalf("payload %d: %+v", i, out[i].ID)
				}
			}
		})
	}
}

// TestTaskDataCarriesTemplating: the agent is told which payloads to render
// (the raw template travels), for secrets and configs alike.
func TestTaskDataCarriesTemplating(t *testing.T) {
	tk := task("t1", "n1", swarm.TaskStateRunning, "s1", "s2")
	tk.Spec.ContainerSpec.Configs = []*swarm.ConfigReference{
		{ConfigID: "c1", ConfigName: "c1", File: &swarm.ConfigReferenceFileTarget{Name: "app.conf", UID: "0", GID: "0", Mode: 0o444}},
	}
	d := &data{templated: map[string]bool{"s2": true, "c1": true}}
	out, err := New(tasks{"t1": tk}, d, d, nil).TaskData(context.Background(), "n1", "t1")
	if err != nil || len(out) != 3 {
		t.Fatalf("got %d payloads, %v", len(out), err)
	}
	want := []struct{ kind, id, target, templating string }{
		{"secret", "s1", "s1", ""}, {"secret", "s2", "s2", "golang"}, {"config", "c1", "/app.conf", "golang"},
	}
	for i, w := range want {
		p := out[i]
		if p.Kind != w.kind || p.ID != w.id || p.Target != w.target || p.Templating != w.templating || string(p.Data) != "value-of-"+w.id {
			t.Errorf("payload %d: %s %s %s templating %q", i, p.Kind, p.ID, p.Target, p.Templating)
		}
	}
}

// TestTaskDataHeldVersion: a task is given the version it holds (tasks
// made before versions hold version 1), whatever is current.
func TestTaskDataHeldVersion(t *testing.T) {
	tk := task("t1", "n1", swarm.TaskStateRunning, "s1", "s2")
	tk.Spec.ContainerSpec.Configs = []*swarm.ConfigReference{
		{ConfigID: "c1", ConfigName: "c1", File: &swarm.ConfigReferenceFileTarget{Name: "c", UID: "0", GID: "0", Mode: 0o444}},
	}
	tk.DataVersions = map[string]int{model.DataKey("secret", "s1"): 3, model.DataKey("config", "c1"): 7, model.DataKey("secret", "c1"): 9}
	d := &data{}
	out, err := New(tasks{"t1": tk}, d, d, nil).TaskData(context.Background(), "n1", "t1")
	if err != nil || len(out) != 3 {
		t.Fatalf("got %d payloads, %v", len(out), err)
	}
	for i, want := range []string{"value-of-s1-v3", "value-of-s2", "value-of-c1-v7"} {
		if string(out[i].Data) != want {
			t.Errorf("payload %d: got %q want %q", i, out[i].Data, want)
		}
	}
}
