package agent

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

func renderTask(slot int) *model.Task {
	t := &model.Task{ServiceName: "web"}
	t.ID, t.ServiceID, t.NodeID, t.Slot = "task1", "svc1", "node1", slot
	t.Spec.ContainerSpec = &swarm.ContainerSpec{
		Env: []string{"FOO=bar"},
		Secrets: []*swarm.SecretReference{
			{SecretID: "s-plain", SecretName: "plain", File: &swarm.SecretReferenceFileTarget{Name: "plain"}},
			{SecretID: "s-tmpl", SecretName: "tmpl", File: &swarm.SecretReferenceFileTarget{Name: "/run/t"}},
			{SecretID: "s-other", SecretName: "other", File: &swarm.SecretReferenceFileTarget{Name: "plain"}},
		},
		Configs: []*swarm.ConfigReference{
			{ConfigID: "c-tmpl", ConfigName: "ctmpl", File: &swarm.ConfigReferenceFileTarget{Name: "app.conf"}},
			{ConfigID: "c-cred", ConfigName: "cred", Runtime: &swarm.ConfigReferenceRuntimeTarget{}},
		},
	}
	return t
}

func renderAgent() *Agent {
	a := &Agent{view: newView("node1")}
	a.view.apply(model.Assignments{Full: true, Tasks: []model.AssignedTask{{Task: renderTask(1), ServiceLabels: map[string]string{"k": "v"}}}})
	return a
}

func payloads(tmplSecret, tmplConfig string) []payload {
	return []payload{
		{Kind: "secret", ID: "s-plain", Target: "plain", Data: []byte("plain-value")},
		{Kind: "secret", ID: "s-tmpl", Target: "/run/t", Data: []byte(tmplSecret), Templating: "golang"},
		{Kind: "secret", ID: "s-other", Target: "plain", Data: []byte("other-value")},
		{Kind: "config", ID: "c-tmpl", Target: "/app.conf", Data: []byte(tmplConfig), Templating: "golang"},
	}
}

func TestTemplateContext(t *testing.T) {
	c := templateContext(renderTask(2), map[string]string{"k": "v"}, "h")
	if c.Service.ID != "svc1" || c.Service.Name != "web" || c.Service.Labels["k"] != "v" ||
		c.Task.ID != "task1" || c.Task.Name != "web.2.task1" || c.Task.Slot != "2" ||
		c.Node.ID != "node1" || c.Node.Hostname != "h" || c.Node.Platform.OS != runtime.GOOS || c.Node.Platform.Architecture != runtime.GOARCH {
		t.Fatalf("replicated: %+v", c)
	}
	g := templateContext(renderTask(0), nil, "h")
	if g.Task.Slot != "node1" || g.Task.Name != "web.node1.task1" {
		t.Fatalf("global: slot %q name %q", g.Task.Slot, g.Task.Name)
	}
}

func TestTaskRefs(t *testing.T) {
	ps := payloads("x", "y")
	r := taskRefs{spec: renderTask(1).Spec.ContainerSpec, payloads: ps}
	tests := []struct {
		kind, target, want string
		ok                 bool
	}{
		{"secret", "plain", "plain-value", true}, // the first reference with the target
		{"secret", "/run/t", "x", true},
		{"secret", "app.conf", "", false}, // a config's target
		{"config", "app.conf", "y", true}, // as written in the spec, not the mount path
		{"config", "/app.conf", "", false},
		{"config", "plain", "", false},
		{"secret", "nosuch", "", false},
	}
	for _, tt := range tests {
		get := r.Secret
		if tt.kind == "config" {
			get = r.Config
		}
		b, ok := get(tt.target)
		if ok != tt.ok || string(b) != tt.want {
			t.Errorf("%s %q = %q, %v", tt.kind, tt.target, b, ok)
		}
	}
	if _, ok := (taskRefs{}).Secret("plain"); ok {
		t.Error("a task without a container spec has references")
	}
}

func TestRenderPayloads(t *testing.T) {
	ps := payloads(`{{.Service.Name}}.{{.Task.Slot}} {{index .Service.Labels "k"}} {{env "FOO"}} {{secret "plain"}} {{config "app.conf"}}`,
		`{{secret "/run/t"}}|{{.Task.ID}}`)
	rawSecret, rawConfig := ps[1].Data, ps[3].Data
	if err := renderAgent().renderPayloads(context.Background(), renderTask(1), ps); err != nil {
		t.Fatal(err)
	}
	// Each template read the raw data of the others.
	want := []string{"plain-value", `web.1 v bar plain-value {{secret "/run/t"}}|{{.Task.ID}}`, "other-value", `{{.Service.Name}}.{{.Task.Slot}} {{index .Service.Labels "k"}} {{env "FOO"}} {{secret "plain"}} {{config "app.conf"}}|task1`}
	for i, w := range want {
		if string(ps[i].Data) != w {
			t.Errorf("payload %d: %q, want %q", i, ps[i].Data, w)
		}
	}
	if strings.Trim(string(rawSecret), "\x00") != "" || strings.Trim(string(rawConfig), "\x00") != "" {
		t.Errorf("raw templates not wiped: %q %q", rawSecret, rawConfig)
	}
}

func TestRenderPayloadsFailure(t *testing.T) {
	big := strings.Repeat("x", 600*1024)
	tests := []struct {
		name             string
		secret, config   string
		templating       string
		want, notContain string
	}{
		{"secret names a missing target", `pw=hunter2 {{secret "nosuch"}}`, "ok", "golang",
			"failed to expand templated secret s-tmpl: template: expansion:1:13: the template reads a secret or config target the task does not reference", "hunter2"},
		{"secret syntax error", `{{hunter2}}`, "ok", "golang",
			"failed to expand templated secret s-tmpl: template: expansion:1: syntax error (details withheld: they would quote the secret)", "hunter2"},
		{"config error is shown as Swarm shows it", "ok", `{{config "nosuch"}}`, "golang",
			`failed to expand templated config c-tmpl: template: expansion:1:2: executing "expansion" at <config "nosuch">: error calling config: config target nosuch not found`, "\x00"},
		{"secret over its size limit", `{{printf "%s%s" (config "app.conf") (config "app.conf")}}`, big[:300*1024], "golang",
			"failed to expand templated secret s-tmpl: template: expansion:1:2: the rendered output would exceed 511999 bytes", "xxx"},
		{"unknown driver", "ok", "ok", "jinja", "failed to expand templated secret s-tmpl: unrecognized template type", "\x00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := payloads(tt.secret, tt.config)
			ps[1].Templating = tt.templating
			before := make([][]byte, len(ps))
			for i := range ps {
				before[i] = bytes.Clone(ps[i].Data)
			}
			err := renderAgent().renderPayloads(context.Background(), renderTask(1), ps)
			if err == nil || err.Error() != tt.want || strings.Contains(err.Error(), tt.notContain) {
				t.Fatalf("error\n got %v\nwant %s", err, tt.want)
			}
			for i := range ps {
				if !bytes.Equal(ps[i].Data, before[i]) {
					t.Fatalf("payload %d changed on failure", i)
				}
			}
		})
	}
}

func TestRenderPayloadsNothingTemplated(t *testing.T) {
	ps := []payload{{Kind: "secret", ID: "s", Data: []byte("{{.Task.ID}}")}}
	// No service lookup, no change: a nil task lister would panic if used.
	if err := (&Agent{}).renderPayloads(context.Background(), renderTask(1), ps); err != nil || string(ps[0].Data) != "{{.Task.ID}}" {
		t.Fatalf("%q, %v", ps[0].Data, err)
	}
}
