package agent

import (
	"context"
	"fmt"
	"maps"

	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// reload brings a running task of a reload or signal: service onto the
// versions it now holds, without a restart: the new files are swapped into
// its /run/secrets in one atomic step (secretfs.Swap), then, for signal:,
// the container's main process is signalled through the engine. A task
// that cannot take the new version is stopped and failed, so the restart
// policy and the update's failure action apply to it.
func (a *Agent) reload(ctx context.Context, t *model.Task, c engine.State) {
	log := a.log.With("task", t.ID, "service", t.ServiceName)
	want := maps.Clone(t.DataVersions)
	err := a.swap(ctx, t)
	if err == nil {
		if sig := t.ReloadSignal(); sig != "" {
			if kerr := a.x.Kill(ctx, c.ID, sig); kerr != nil {
				err = fmt.Errorf("signalling the container: %w", kerr)
			}
		}
	}
	if err != nil {
		log.Warn("reload failed; stopping the task", "err", err)
		if serr := a.x.Stop(ctx, c.ID, t.Spec.ContainerSpec.StopGracePeriod); serr != nil {
			log.Warn("stopping task container", "err", serr)
		}
		a.finish(ctx, t, swarm.TaskStateFailed, "reload failed", "task: reload failed: "+err.Error(), t.Status.ContainerStatus)
		return
	}
	msg := "reloaded"
	if sig := t.ReloadSignal(); sig != "" {
		msg = "reloaded, " + sig + " sent"
	}
	if _, err := a.report(ctx, t, swarm.TaskStatus{State: swarm.TaskStateRunning, Message: msg, ContainerStatus: t.Status.ContainerStatus}, want); err != nil {
		log.Warn("task status", "err", err)
		return
	}
	log.Info("task reloaded", "container", c.ID)
}

func (a *Agent) swap(ctx context.Context, t *model.Task) error {
	files, wipe, err := a.taskFiles(ctx, t)
	defer wipe()
	if err != nil {
		return err
	}
	return a.x.SwapSecrets(ctx, t.ID, files)
}
