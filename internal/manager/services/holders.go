package services

import (
	"context"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// Holders reports which live tasks hold which version of object id of kind
// ("secret", "config"): version → task IDs. A task holds its versions from
// creation until its container is gone (a terminal state), so neither
// retention nor destroy can take a value from under a container.
func (m *Manager) Holders(ctx context.Context, kind, id string) (map[int][]string, error) {
	_, tasks, err := m.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	out := map[int][]string{}
	for _, t := range tasks {
		if model.Terminal(t.Status.State) || !references(t, kind, id) {
			continue
		}
		// During a reload the container still has the loaded version
		// while the task already holds the new one: both are held.
		n := t.HeldVersion(kind, id)
		out[n] = append(out[n], t.ID)
		if t.LoadedVersions != nil {
			if l := t.LoadedVersions[model.DataKey(kind, id)]; l > 0 && l != n {
				out[l] = append(out[l], t.ID)
			}
		}
	}
	return out, nil
}

func references(t *model.Task, kind, id string) bool {
	cs := t.Spec.ContainerSpec
	if cs == nil {
		return false
	}
	if kind == "secret" {
		for _, r := range cs.Secrets {
			if r != nil && r.SecretID == id {
				return true
			}
		}
		return false
	}
	for _, r := range cs.Configs {
		if r != nil && r.ConfigID == id {
			return true
		}
	}
	return false
}

// checkRotateMode refuses a rotation mode hush does not know, naming the
// label.
func checkRotateMode(s *swarm.ServiceSpec) error {
	v, ok := s.Labels[model.RotateLabel]
	if !ok {
		return nil
	}
	if err := model.CheckRotateMode(v); err != nil {
		return errdefs.InvalidArgument("label %s: %v", model.RotateLabel, err)
	}
	return nil
}
