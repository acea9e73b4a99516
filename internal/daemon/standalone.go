package daemon

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/api"
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
		Names: eng.Name, Logger: d.log,
	})
	acfg.Containers = d.standalone
	return nil
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
