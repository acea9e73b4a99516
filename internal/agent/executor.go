package agent

import (
	"context"
	"io"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
)

// Executor is what the agent runs tasks with: this node's containers on
// the engine and the tasks' secret filesystems.
type Executor interface {
	// Containers lists the task containers this node made.
	Containers(ctx context.Context) ([]engine.State, error)
	// Exits streams container exits until ctx ends or the stream breaks.
	Exits(ctx context.Context) (<-chan engine.Exit, <-chan error)
	Features(ctx context.Context) (engine.Features, error)
	HasImage(ctx context.Context, ref string) (bool, error)
	Pull(ctx context.Context, ref, auth string) error
	Create(ctx context.Context, s engine.Spec) (string, error)
	Start(ctx context.Context, id string) error
	// Stop stops a container with its grace period (nil: the engine's).
	Stop(ctx context.Context, id string, grace *time.Duration) error
	Kill(ctx context.Context, id, signal string) error
	Remove(ctx context.Context, id string) error
	Inspect(ctx context.Context, id string) (engine.State, error)
	// Logs opens a container's log stream as the engine sends it.
	Logs(ctx context.Context, id string, o LogOptions) (io.ReadCloser, error)

	// MountSecrets puts files on a fresh tmpfs for a task, as one
	// swappable tree (tree) or per-file binds, and returns the binds.
	MountSecrets(ctx context.Context, taskID string, files []secretfs.File, tree bool) ([]engine.Bind, error)
	// SwapSecrets replaces a tree mount's files atomically.
	SwapSecrets(ctx context.Context, taskID string, files []secretfs.File) error
	UnmountSecrets(taskID string) error
	// SecretMounts lists the tasks with a secret mount.
	SecretMounts() ([]string, error)

	// Network returns the engine network realising a task's swarm network
	// on this node's engine, creating it if need be.
	Network(ctx context.Context, n model.TaskNetwork) (string, error)
	// PruneNetworks removes the engine networks this node realised for
	// swarm networks not in keep (one still in use stays).
	PruneNetworks(ctx context.Context, keep map[string]bool) error
}

// Networks realises swarm networks on an engine for a node
// (networks.Realiser, shared with a manager's networks manager).
type Networks interface {
	Realise(ctx context.Context, nodeID string, n model.TaskNetwork) (string, error)
	Prune(ctx context.Context, nodeID string, keep map[string]bool) error
}

// engineExecutor runs tasks on the local Docker Engine with per-task
// tmpfs mounts.
type engineExecutor struct {
	eng    *engine.Engine
	fs     *secretfs.Manager
	nets   Networks
	nodeID string
}

// NewExecutor returns the executor of node nodeID over eng, fs and nets.
func NewExecutor(nodeID string, eng *engine.Engine, fs *secretfs.Manager, nets Networks) Executor {
	return &engineExecutor{eng: eng, fs: fs, nets: nets, nodeID: nodeID}
}

func (x *engineExecutor) Network(ctx context.Context, n model.TaskNetwork) (string, error) {
	if x.nets == nil {
		return "", errdefs.Unavailable("networks: no Docker Engine to realise networks on")
	}
	return x.nets.Realise(ctx, x.nodeID, n)
}

func (x *engineExecutor) PruneNetworks(ctx context.Context, keep map[string]bool) error {
	if x.nets == nil {
		return nil
	}
	return x.nets.Prune(ctx, x.nodeID, keep)
}

func (x *engineExecutor) Containers(ctx context.Context) ([]engine.State, error) {
	all, err := x.eng.ListTasks(ctx)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, c := range all {
		// Never a Swarm's or another hushd's container on the same engine.
		if c.Labels[labelHush] == x.nodeID {
			out = append(out, c)
		}
	}
	return out, nil
}

func (x *engineExecutor) Exits(ctx context.Context) (<-chan engine.Exit, <-chan error) {
	return x.eng.Exits(ctx)
}

func (x *engineExecutor) Features(ctx context.Context) (engine.Features, error) {
	return x.eng.Features(ctx)
}

func (x *engineExecutor) HasImage(ctx context.Context, ref string) (bool, error) {
	return x.eng.HasImage(ctx, ref)
}

func (x *engineExecutor) Pull(ctx context.Context, ref, auth string) error {
	return x.eng.Pull(ctx, ref, auth)
}

func (x *engineExecutor) Create(ctx context.Context, s engine.Spec) (string, error) {
	return x.eng.Create(ctx, s)
}

func (x *engineExecutor) Start(ctx context.Context, id string) error { return x.eng.Start(ctx, id) }

func (x *engineExecutor) Stop(ctx context.Context, id string, grace *time.Duration) error {
	return x.eng.Stop(ctx, id, grace)
}

func (x *engineExecutor) Kill(ctx context.Context, id, signal string) error {
	return x.eng.Kill(ctx, id, signal)
}

func (x *engineExecutor) Remove(ctx context.Context, id string) error { return x.eng.Remove(ctx, id) }

func (x *engineExecutor) Inspect(ctx context.Context, id string) (engine.State, error) {
	return x.eng.Inspect(ctx, id)
}

func (x *engineExecutor) MountSecrets(ctx context.Context, taskID string, files []secretfs.File, tree bool) ([]engine.Bind, error) {
	var mt *secretfs.Mount
	var err error
	if tree {
		mt, err = x.fs.MountTree(ctx, taskID, files)
	} else {
		mt, err = x.fs.Mount(ctx, taskID, files)
	}
	if err != nil {
		return nil, err
	}
	var binds []engine.Bind
	for _, b := range mt.Bindings() {
		binds = append(binds, engine.Bind{HostPath: b.HostPath, ContainerPath: b.ContainerPath})
	}
	return binds, nil
}

func (x *engineExecutor) SwapSecrets(ctx context.Context, taskID string, files []secretfs.File) error {
	return x.fs.Swap(ctx, taskID, files)
}

func (x *engineExecutor) UnmountSecrets(taskID string) error { return x.fs.Unmount(taskID) }

func (x *engineExecutor) SecretMounts() ([]string, error) { return x.fs.Tasks() }

func (x *engineExecutor) Logs(ctx context.Context, id string, o LogOptions) (io.ReadCloser, error) {
	return x.eng.Logs(ctx, id, o.Follow, o.Tail, o.Timestamps, o.Since)
}
