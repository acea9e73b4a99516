package orchestrator

import (
	"testing"

	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// Placement.Platforms keeps a task off nodes of another platform, with
// Swarm's reason; x86_64 and aarch64 are amd64 and arm64, and an empty
// field matches anything (Swarm's platform filter).
func TestPlacementPlatforms(t *testing.T) {
	for _, tc := range []struct {
		name      string
		platforms []swarm.Platform
		wantNode  string
		wantErr   string
	}{
		{name: "arm64", platforms: []swarm.Platform{{Architecture: "arm64", OS: "linux"}}, wantNode: "n2"},
		{name: "aarch64", platforms: []swarm.Platform{{Architecture: "aarch64", OS: "linux"}}, wantNode: "n2"},
		{name: "x86_64", platforms: []swarm.Platform{{Architecture: "x86_64", OS: "linux"}}, wantNode: "n1"},
		{name: "any of several", platforms: []swarm.Platform{{Architecture: "s390x", OS: "linux"}, {Architecture: "amd64", OS: "linux"}}, wantNode: "n1"},
		{name: "os only", platforms: []swarm.Platform{{OS: "linux"}}, wantNode: "n1"},
		{name: "none", platforms: []swarm.Platform{{Architecture: "s390x", OS: "linux"}}, wantErr: "no suitable node (unsupported platform on 2 nodes)"},
		{name: "windows", platforms: []swarm.Platform{{Architecture: "amd64", OS: "windows"}}, wantErr: "no suitable node (unsupported platform on 2 nodes)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.nodes(testNode{id: "n1", arch: "x86_64"}, testNode{id: "n2", arch: "aarch64"})
			s := replicated("web", 1)
			s.TaskTemplate.Placement = &swarm.Placement{Platforms: tc.platforms}
			f.mustCreate(s)
			f.pass()
			ts := f.tasks()
			if len(ts) != 1 {
				t.Fatalf("%d tasks, want 1", len(ts))
			}
			if ts[0].NodeID != tc.wantNode || ts[0].Status.Err != tc.wantErr {
				t.Fatalf("task on %q (%q), want on %q (%q)", ts[0].NodeID, ts[0].Status.Err, tc.wantNode, tc.wantErr)
			}
		})
	}
}

// A global service's task on a node of another platform waits there with
// the filter's reason, as the scheduler leaves it in Swarm.
func TestPlacementPlatformsGlobal(t *testing.T) {
	f := newFixture(t)
	f.nodes(testNode{id: "n1"}, testNode{id: "n2", arch: "arm64"})
	var s swarm.ServiceSpec
	s.Name = "g"
	s.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: "img:1"}
	s.Mode.Global = &swarm.GlobalService{}
	s.TaskTemplate.Placement = &swarm.Placement{Platforms: []swarm.Platform{{Architecture: "amd64", OS: "linux"}}}
	f.mustCreate(s)
	f.step(0)
	f.step(0)
	for _, tk := range f.tasks() {
		switch tk.NodeID {
		case "n1":
			if tk.Status.State != swarm.TaskStateRunning {
				t.Errorf("task on the amd64 node is %s (%q)", tk.Status.State, tk.Status.Err)
			}
		case "n2":
			if !model.Unscheduled(tk) || tk.Status.Err != "unsupported platform on 1 node" {
				t.Errorf("task on the arm64 node is %s (%q), want pending with Swarm's reason", tk.Status.State, tk.Status.Err)
			}
		}
	}
}
