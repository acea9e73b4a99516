package orchestrator

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// DataVersions returns the current version of each of the secrets and
// configs named (by object ID); an ID missing from the answer no longer
// exists.
type DataVersions func(ctx context.Context, secretIDs, configIDs []string) (secrets, configs map[string]int, err error)

// SetDataVersions makes the orchestrator record in each new task the
// versions of its secrets and configs, and roll the tasks of a service
// whose secrets or configs were rotated (restart mode): such tasks are
// outdated though the service's spec did not change. Call before Run.
func (o *Orchestrator) SetDataVersions(fn DataVersions) { o.dataVersions = fn }

// loadDataVersions reads the current versions of what svcs mount, and only
// that: every version the orchestrator consults is one of a service's refs.
func (o *Orchestrator) loadDataVersions(ctx context.Context, svcs []*model.Service) error {
	o.curData = nil
	if o.dataVersions == nil {
		return nil
	}
	var sids, cids []string
	seen := map[string]bool{}
	for _, svc := range svcs {
		for _, r := range refsOf(svc) {
			k := model.DataKey(r.kind, r.id)
			if seen[k] {
				continue
			}
			seen[k] = true
			if r.kind == "secret" {
				sids = append(sids, r.id)
			} else {
				cids = append(cids, r.id)
			}
		}
	}
	o.lastMounts = len(sids)+len(cids) > 0
	secrets, configs, err := o.dataVersions(ctx, sids, cids)
	if err != nil {
		return fmt.Errorf("data versions: %w", err)
	}
	o.curData = make(map[string]int, len(secrets)+len(configs))
	for id, n := range secrets {
		o.curData[model.DataKey("secret", id)] = n
	}
	for id, n := range configs {
		o.curData[model.DataKey("config", id)] = n
	}
	return nil
}

// dataRef is one secret or config a service's tasks mount.
type dataRef struct{ kind, id, name string }

func refsOf(svc *model.Service) []dataRef {
	cs := svc.Spec.TaskTemplate.ContainerSpec
	if cs == nil {
		return nil
	}
	var out []dataRef
	for _, r := range cs.Secrets {
		if r != nil && r.SecretID != "" {
			out = append(out, dataRef{"secret", r.SecretID, r.SecretName})
		}
	}
	for _, r := range cs.Configs {
		if r != nil && r.ConfigID != "" {
			out = append(out, dataRef{"config", r.ConfigID, r.ConfigName})
		}
	}
	return out
}

// wantVersions are the versions a new task of svc is given: the current
// ones, all read in the same pass, so a task never holds a mixed set.
func (o *Orchestrator) wantVersions(svc *model.Service) map[string]int {
	var out map[string]int
	for _, r := range refsOf(svc) {
		if n, ok := o.wantVersion(svc, model.DataKey(r.kind, r.id)); ok {
			if out == nil {
				out = map[string]int{}
			}
			out[model.DataKey(r.kind, r.id)] = n
		}
	}
	return out
}

// wantVersion is the version of object key the tasks of svc should hold:
// the current one, unless a rolled-back rotation pinned the service to an
// earlier one and the object has not been rotated since.
func (o *Orchestrator) wantVersion(svc *model.Service, key string) (int, bool) {
	n, ok := o.curData[key]
	if !ok {
		return 0, false
	}
	if p, pinned := svc.RotationPins[key]; pinned && p.Against == n && p.Version > 0 {
		return p.Version, true
	}
	return n, true
}

// dataOutdated reports whether t holds an older version of one of its
// service's secrets or configs than the current one, and which.
func (o *Orchestrator) dataOutdated(svc *model.Service, t *model.Task) (string, bool) {
	for _, r := range refsOf(svc) {
		n, ok := o.wantVersion(svc, model.DataKey(r.kind, r.id))
		if ok && t.HeldVersion(r.kind, r.id) != n {
			return fmt.Sprintf("%s %s version %d", r.kind, r.name, n), true
		}
	}
	return "", false
}

// rotationStatusDelay is how long startRotation holds back its status write.
const rotationStatusDelay = 2 * time.Second

// rotationMessage starts the UpdateStatus message of a rollout that a
// rotation (not a spec change) started.
const rotationMessage = "rotation in progress: "

func isRotation(st *swarm.UpdateStatus) bool {
	return st != nil && strings.HasPrefix(st.Message, rotationMessage)
}

// startRotation shows a rotation's rollout in the service's UpdateStatus,
// unless an update is already under way (it then carries the rotation) or
// paused (it stays paused, as a paused update does in Swarm). It reports
// whether the restart rollout may proceed in this pass: once the status
// written says so.
func (o *Orchestrator) startRotation(ctx context.Context, svc *model.Service, what string) (bool, error) {
	if st := svc.UpdateStatus; st != nil {
		switch st.State {
		case swarm.UpdateStateUpdating, swarm.UpdateStateRollbackStarted:
			return true, nil
		case swarm.UpdateStatePaused, swarm.UpdateStateRollbackPaused:
			// Stays paused, as a paused update does in Swarm.
			return false, nil
		}
	}
	// The first write to the service is held back a moment: `docker stack
	// deploy` updates a secret, lists the services, then updates each at
	// the version it listed, and a status write in between would make that
	// update "out of sequence". The rollout itself does not wait.
	now := o.now()
	if o.rotationSeen == nil {
		o.rotationSeen = map[string]time.Time{}
	}
	first, ok := o.rotationSeen[svc.ID]
	if !ok {
		o.rotationSeen[svc.ID] = now
		return false, nil
	}
	if now.Sub(first) < rotationStatusDelay {
		return false, nil
	}
	delete(o.rotationSeen, svc.ID)
	o.log.Info("rolling out a rotation", "service", svc.Spec.Name, "what", what)
	err := o.setUpdateStatus(ctx, svc, &swarm.UpdateStatus{
		State: swarm.UpdateStateUpdating, StartedAt: &now, Message: rotationMessage + what,
	})
	// The rollout starts on the next pass, from the service as written.
	return false, ignoreRace(err)
}

// requestReload gives a running task of a reload-mode service the current
// versions; the agent sees them differ from what the container has, swaps
// them in and records them as loaded.
func (o *Orchestrator) requestReload(ctx context.Context, svc *model.Service, t *model.Task) error {
	want := o.wantVersions(svc)
	return o.writeTask(ctx, t, func(n *model.Task) { n.DataVersions = want })
}

// rollBackRotation is a rotation's failure action rollback: the service is
// pinned to the versions its tasks held before the rollout (the spec did
// not change, so there is no previous spec to go back to), and its tasks
// are rolled back onto them by the rollback config. It reports false when
// there is nothing to go back to (the caller pauses instead).
func (o *Orchestrator) rollBackRotation(ctx context.Context, svc *model.Service, dead *model.Task) (bool, error) {
	_, tasks, err := o.svcs.Snapshot(ctx)
	if err != nil {
		return false, err
	}
	pins := map[string]model.Pin{}
	for k, p := range svc.RotationPins {
		pins[k] = p
	}
	for _, r := range refsOf(svc) {
		key := model.DataKey(r.kind, r.id)
		cur, ok := o.curData[key]
		if !ok || dead.HeldVersion(r.kind, r.id) != cur {
			continue
		}
		prev := 0
		for _, t := range tasks {
			if t.ServiceID == svc.ID && t.ID != dead.ID {
				if v := t.HeldVersion(r.kind, r.id); v < cur && v > prev {
					prev = v
				}
			}
		}
		if prev > 0 {
			pins[key] = model.Pin{Version: prev, Against: cur}
		}
	}
	if len(pins) == len(svc.RotationPins) {
		return false, nil
	}
	now := o.now()
	next := *svc
	next.RotationPins = pins
	o.log.Warn("rotation rollout failed, rolling back to the previous versions", "service", svc.Spec.Name, "task", dead.ID)
	err = o.setUpdateStatus(ctx, &next, &swarm.UpdateStatus{
		State: swarm.UpdateStateRollbackStarted, StartedAt: &now,
		Message: fmt.Sprintf("rotation rolled back: task %s failed on the new version", dead.ID),
	})
	if err != nil {
		return false, err
	}
	// The replacement made in this pass already gets the pinned versions;
	// the service is not written again in this pass (it is stale now).
	svc.RotationPins = pins
	svc.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateRollbackStarted, StartedAt: &now}
	o.rolledBack = svc.ID
	return true, nil
}
