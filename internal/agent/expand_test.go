package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/agent/template"
	"github.com/moby/moby/api/types/mount"
)

func expandContext() template.Context {
	var c template.Context
	c.Service = template.Service{ID: "svc1", Name: "web", Labels: map[string]string{"tier": "front"}}
	c.Node = template.Node{ID: "node1", Hostname: "host1"}
	c.Task = template.Task{ID: "task1", Name: "web.3.task1", Slot: "3"}
	return c
}

// Swarm's executor expands templates in Env values, Hostname and the
// mounts' string fields (`docker service create --hostname
// "{{.Node.Hostname}}"`, the documented "create services using
// templates"); the task's own spec is left as it was.
func TestExpandSpec(t *testing.T) {
	labels := map[string]string{"slot": "{{.Task.Slot}}"}
	opts := map[string]string{"o": "size={{.Task.Slot}}m"}
	s := engine.Spec{
		Hostname: "{{.Node.Hostname}}-{{.Service.Name}}",
		Env:      []string{"SLOT={{.Task.Slot}}", "PLAIN=x", "NOVALUE", "TIER={{index .Service.Labels \"tier\"}}"},
		Mounts: []mount.Mount{
			{Type: mount.TypeVolume, Source: "data-{{.Task.Slot}}", Target: "/data/{{.Service.Name}}",
				VolumeOptions: &mount.VolumeOptions{Labels: labels, DriverConfig: &mount.Driver{Name: "local", Options: opts}}},
			{Type: mount.TypeTmpfs, Target: "/tmp"},
		},
	}
	orig := s.Mounts[0].VolumeOptions
	if err := expandSpec(context.Background(), &s, expandContext()); err != nil {
		t.Fatal(err)
	}
	if s.Hostname != "host1-web" {
		t.Errorf("hostname %q", s.Hostname)
	}
	if got := strings.Join(s.Env, ","); got != "SLOT=3,PLAIN=x,NOVALUE,TIER=front" {
		t.Errorf("env %q", got)
	}
	m := s.Mounts[0]
	if m.Source != "data-3" || m.Target != "/data/web" || m.VolumeOptions.Labels["slot"] != "3" || m.VolumeOptions.DriverConfig.Options["o"] != "size=3m" {
		t.Errorf("mount %+v %+v %+v", m, m.VolumeOptions.Labels, m.VolumeOptions.DriverConfig.Options)
	}
	if s.Mounts[1].Target != "/tmp" {
		t.Errorf("plain mount changed: %+v", s.Mounts[1])
	}
	if labels["slot"] != "{{.Task.Slot}}" || opts["o"] != "size={{.Task.Slot}}m" || orig.Labels["slot"] != "{{.Task.Slot}}" {
		t.Errorf("the task's spec was changed in place")
	}
}

// A template that fails rejects the task with Swarm's prefix; an Env
// value's text (it may hold a credential) is not quoted.
func TestExpandSpecErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		spec   engine.Spec
		prefix string
		secret string
	}{
		{"env", engine.Spec{Env: []string{"TOKEN=s3cr3t{{.Nope}}"}}, "expanding env failed: ", "s3cr3t"},
		{"hostname", engine.Spec{Hostname: "{{.Task.Nope}}"}, "expanding hostname failed: ", ""},
		{"mount", engine.Spec{Mounts: []mount.Mount{{Type: mount.TypeVolume, Source: "{{", Target: "/d"}}}, "expanding mounts failed: ", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := expandSpec(context.Background(), &tc.spec, expandContext())
			if err == nil || !strings.HasPrefix(err.Error(), tc.prefix) {
				t.Fatalf("error %v, want prefix %q", err, tc.prefix)
			}
			if tc.secret != "" && strings.Contains(err.Error(), tc.secret) {
				t.Fatalf("error quotes the env value: %v", err)
			}
		})
	}
}
