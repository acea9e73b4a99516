package agent

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"

	"github.com/hush-secrets/hush/internal/agent/template"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// renderPayloads replaces the data of every templated payload with its
// rendering for task t, as Swarm's executor expands templated secrets and
// configs on the node before it mounts them. Every template sees the raw
// data of the others (Swarm's secret and config functions read the
// unrendered objects). On failure nothing is replaced and everything
// rendered so far is wiped; the error names the object, never its data.
func (a *Agent) renderPayloads(ctx context.Context, t *model.Task, payloads []payload) error {
	templated := false
	for _, p := range payloads {
		templated = templated || p.Templating != ""
	}
	if !templated {
		return nil
	}
	host, _ := os.Hostname()
	tc := templateContext(t, a.serviceLabels(t.ID), host)
	refs := taskRefs{spec: t.Spec.ContainerSpec, payloads: payloads}
	rendered := make([][]byte, len(payloads))
	wipe := func() {
		for _, b := range rendered {
			clear(b)
		}
	}
	for i, p := range payloads {
		if p.Templating == "" {
			continue
		}
		if p.Templating != template.Driver {
			// Stored before hush refused other drivers at create.
			wipe()
			return fmt.Errorf("failed to expand templated %s %s: unrecognized template type", p.Kind, p.ID)
		}
		out, err := template.Render(ctx, template.Request{
			Text: p.Data, Context: tc, Env: envOf(t), Refs: refs,
			Limit: renderLimit(p.Kind), Sensitive: p.Kind != "config",
		})
		if err != nil {
			wipe()
			return fmt.Errorf("failed to expand templated %s %s: %w", p.Kind, p.ID, err)
		}
		rendered[i] = out
	}
	for i := range payloads {
		if payloads[i].Templating != "" {
			clear(payloads[i].Data)
			payloads[i].Data = rendered[i]
		}
	}
	return nil
}

// renderLimit is the largest rendering of a kind: what the kind may store.
func renderLimit(kind string) int {
	if kind == "config" {
		return model.MaxConfigData - 1
	}
	return model.MaxSecretData - 1
}

func envOf(t *model.Task) []string {
	if t.Spec.ContainerSpec == nil {
		return nil
	}
	return t.Spec.ContainerSpec.Env
}

// serviceLabels are the labels of task id's service, as the dispatcher
// sent them with the task.
func (a *Agent) serviceLabels(taskID string) map[string]string {
	at, _ := a.view.task(taskID)
	return at.ServiceLabels
}

// templateContext is Swarm's template context for task t on this node.
// Swarm 20.10 leaves the node's hostname and platform empty; hush gives
// them as `docker node inspect` through hushd shows them.
func templateContext(t *model.Task, serviceLabels map[string]string, hostname string) template.Context {
	var c template.Context
	c.Service = template.Service{ID: t.ServiceID, Name: t.ServiceName, Labels: serviceLabels}
	c.Node = template.Node{ID: t.NodeID, Hostname: hostname, Platform: template.Platform{Architecture: runtime.GOARCH, OS: runtime.GOOS}}
	c.Task = template.Task{ID: t.ID, Name: t.ContainerName(), Slot: t.NodeID}
	if t.Slot != 0 {
		c.Task.Slot = strconv.Itoa(t.Slot)
	}
	return c
}

// taskRefs serves the template functions secret and config: the raw data
// of what the task references, looked up as Swarm does, by the target the
// reference gives (the first reference with that target wins).
type taskRefs struct {
	spec     *swarm.ContainerSpec
	payloads []payload
}

func (r taskRefs) Secret(target string) ([]byte, bool) {
	if r.spec == nil {
		return nil, false
	}
	for _, ref := range r.spec.Secrets {
		if ref != nil && ref.File != nil && ref.File.Name == target {
			return r.data("secret", ref.SecretID)
		}
	}
	return nil, false
}

func (r taskRefs) Config(target string) ([]byte, bool) {
	if r.spec == nil {
		return nil, false
	}
	for _, ref := range r.spec.Configs {
		if ref != nil && ref.File != nil && ref.File.Name == target {
			return r.data("config", ref.ConfigID)
		}
	}
	return nil, false
}

func (r taskRefs) data(kind, id string) ([]byte, bool) {
	for _, p := range r.payloads {
		if p.Kind == kind && p.ID == id {
			return p.Data, true
		}
	}
	return nil, false
}
