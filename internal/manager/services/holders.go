package services

import (
	"context"
	"strings"

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
		n := t.HeldVersion(kind, id)
		out[n] = append(out[n], t.ID)
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

// RotateLabel is the service label that chooses how a rotation of the
// service's secrets and configs reaches its tasks.
const RotateLabel = "io.hush.rotate"

// checkRotateMode refuses a rotation mode hush does not carry out, naming
// the label.
func checkRotateMode(s *swarm.ServiceSpec) error {
	v, ok := s.Labels[RotateLabel]
	if !ok || v == "restart" {
		return nil
	}
	if v == "reload" || strings.HasPrefix(v, "signal:") {
		return errdefs.InvalidArgument("label %s=%s: only the restart mode is available in this version of hush", RotateLabel, v)
	}
	return errdefs.InvalidArgument("label %s: unknown rotation mode %q (want restart, reload or signal:SIGNAME)", RotateLabel, v)
}
