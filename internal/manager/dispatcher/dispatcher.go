// Package dispatcher hands a node the secret and config data of the tasks
// assigned to it, and nothing else: a request names a task, and the data is
// released only if that task is assigned to the asking node, is meant to
// run, and references the object.
//
// It returns plaintext to its caller (the agent) in memory only. It must
// never log data, and never answer for a task of another node.
package dispatcher

import (
	"context"
	"log/slog"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
)

// DataSource opens version n of an object's data by exact ID, with the
// name of its templating driver ("" when it is not templated).
type DataSource interface {
	ContentVersion(ctx context.Context, id string, n int) (data []byte, templating string, err error)
}

// TaskSource reads a task by exact ID (consistently).
type TaskSource interface {
	GetTask(ctx context.Context, id string) (*model.Task, error)
}

// Dispatcher releases task data to nodes.
type Dispatcher struct {
	tasks   TaskSource
	secrets DataSource
	configs DataSource
	log     *slog.Logger
}

// New returns a dispatcher.
func New(tasks TaskSource, secrets, configs DataSource, log *slog.Logger) *Dispatcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Dispatcher{tasks: tasks, secrets: secrets, configs: configs, log: log}
}

// Payload is one file's worth of data for a task.
type Payload struct {
	Kind string // "secret" or "config"
	ID   string
	Name string
	// Target, UID, GID and Mode are the reference's file settings.
	Target   string
	UID, GID string
	Mode     uint32
	Data     []byte
	// Templating is the object's templating driver ("" for none): the
	// agent renders Data for the task before it mounts it, as Swarm's
	// executor does, so the raw template is what travels here.
	Templating string
}

// TaskData returns the data of every secret and config that task taskID
// references, if the task is assigned to nodeID and should run.
func (d *Dispatcher) TaskData(ctx context.Context, nodeID, taskID string) ([]Payload, error) {
	t, err := d.tasks.GetTask(ctx, taskID)
	if err != nil {
		return nil, err
	}
	if t.NodeID != nodeID {
		d.log.Warn("refused task data to a node the task is not assigned to", "task", taskID, "node", nodeID)
		return nil, errdefs.Unauthorized("task %s is not assigned to node %s", taskID, nodeID)
	}
	if !model.Runs(t.DesiredState) {
		return nil, errdefs.Unauthorized("task %s is not meant to run", taskID)
	}
	cs := t.Spec.ContainerSpec
	if cs == nil {
		return nil, nil
	}
	var out []Payload
	fail := func(err error) ([]Payload, error) {
		for i := range out {
			clear(out[i].Data)
		}
		return nil, err
	}
	for _, r := range cs.Secrets {
		if r == nil || r.File == nil {
			continue
		}
		// The version the task holds, not the current one: a task made
		// before a rotation keeps its value until it is rolled.
		b, tmpl, err := d.secrets.ContentVersion(ctx, r.SecretID, t.HeldVersion("secret", r.SecretID))
		if err != nil {
			return fail(err)
		}
		out = append(out, Payload{Kind: "secret", ID: r.SecretID, Name: r.SecretName, Target: r.File.Name, UID: r.File.UID, GID: r.File.GID, Mode: uint32(r.File.Mode), Data: b, Templating: tmpl})
	}
	for _, r := range cs.Configs {
		if r == nil || r.File == nil {
			continue
		}
		b, tmpl, err := d.configs.ContentVersion(ctx, r.ConfigID, t.HeldVersion("config", r.ConfigID))
		if err != nil {
			return fail(err)
		}
		// Swarm mounts a relative config target under "/" (secrets go
		// under /run/secrets); the CLI sends the short syntax's target
		// relative ("app_conf" → /app_conf).
		target := r.File.Name
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		out = append(out, Payload{Kind: "config", ID: r.ConfigID, Name: r.ConfigName, Target: target, UID: r.File.UID, GID: r.File.GID, Mode: uint32(r.File.Mode), Data: b, Templating: tmpl})
	}
	d.log.Info("task data released", "task", taskID, "node", nodeID, "files", len(out))
	return out, nil
}
