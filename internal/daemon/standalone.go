package daemon

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/manager/standalone"
)

// startStandalone sets up secrets for standalone containers. Their tmpfs
// live in a sibling of the tasks' root (<dir>.containers), never inside
// it: the agent removes every directory of its root that is not a task.
func (d *Daemon) startStandalone(acfg *api.Config, tasksDir string) error {
	var err error
	if d.cfs, err = secretfs.NewManager(filepath.Clean(tasksDir)+".containers", d.log); err != nil {
		return fmt.Errorf("containers' secrets tmpfs: %w", err)
	}
	eng := standalone.EngineClient{Cli: d.engineCli}
	d.standalone = standalone.New(standalone.Config{
		Store: d.store, Secrets: d.secrets, Configs: d.configs, FS: standalone.SecretFS{Manager: d.cfs},
		Names: eng.Name, Control: eng, Logger: d.log, Failpoint: d.injected,
		Changed: func() <-chan struct{} { return d.mirror.TableChanged(objects.Secret.Table, objects.Config.Table) },
	})
	acfg.Containers = d.standalone
	return nil
}

// holders are the versions tasks and standalone containers hold, which
// retention and destroy never take.
func (d *Daemon) holders(ctx context.Context, kind, id string) (map[int][]string, error) {
	out, err := d.svcs.Holders(ctx, kind, id)
	if err != nil || d.standalone == nil {
		return out, err
	}
	cs, err := d.standalone.HeldVersions(ctx, kind, id)
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = map[int][]string{}
	}
	for n, hs := range cs {
		out[n] = append(out[n], hs...)
	}
	return out, nil
}

// runStandalone starts the containers' reconciler with the cluster's
// runtime: at start, and at unlock under autolock, it re-provisions the
// tmpfs of existing containers (they need the keyring) and then follows
// the engine's removals.
func (d *Daemon) runStandalone(run func(func(context.Context))) {
	if d.standalone == nil {
		return
	}
	eng := standalone.EngineClient{Cli: d.engineCli}
	run(func(ctx context.Context) { d.standalone.Run(ctx, eng) })
}
