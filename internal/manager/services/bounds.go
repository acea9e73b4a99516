package services

import (
	"encoding/json"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// Bounds on what a client puts in a service spec. Swarm has none of these;
// hush has them because each sizes memory or host resources that a single
// request could otherwise exhaust (a billion-slot replica map, thousands of
// secrets read into memory per task, a spec copied into every task), and
// because a stored spec that crashes hushd would crash it again on every
// restart. They are far above what a real service needs.
const (
	// MaxReplicas bounds replicas (and a job's completions and
	// concurrency): the orchestrator keeps one slot per replica.
	MaxReplicas = 10000
	// MaxSpecBytes bounds a spec's JSON encoding. A service record holds
	// the spec and the previous one, and must stay under etcd's request
	// limit (1.5 MiB).
	MaxSpecBytes = 512 << 10
	// MaxTaskBytes bounds replicas × the task template's encoding: every
	// task stores a copy of the template.
	MaxTaskBytes = 64 << 20
	// MaxSecretRefs and MaxConfigRefs bound references per service: every
	// task holds the data of each in memory while it starts.
	MaxSecretRefs = 256
	MaxConfigRefs = 256
	// MaxMounts, MaxPorts and MaxNetworks bound what each task asks of the
	// engine (mounts, host port bindings, network connections).
	MaxMounts   = 256
	MaxPorts    = 1024
	MaxNetworks = 256
	// MaxEnv and MaxLabels bound the entries of one list or label map.
	MaxEnv    = 4096
	MaxLabels = 1024
)

// checkBounds refuses a spec beyond hush's bounds, naming the field and
// the limit. It runs before anything else in validateSpec so that nothing
// of such a spec is stored.
func checkBounds(s *swarm.ServiceSpec) error {
	count := func(field string, n, limit int) error {
		if n > limit {
			return errdefs.InvalidArgument("%s: %d entries exceed hush's limit of %d", field, n, limit)
		}
		return nil
	}
	tt := &s.TaskTemplate
	checks := []struct {
		field    string
		n, limit int
	}{
		{"Labels", len(s.Labels), MaxLabels},
		{"TaskTemplate.Networks", len(tt.Networks), MaxNetworks},
	}
	if cs := tt.ContainerSpec; cs != nil {
		checks = append(checks, []struct {
			field    string
			n, limit int
		}{
			{"ContainerSpec.Secrets", len(cs.Secrets), MaxSecretRefs},
			{"ContainerSpec.Configs", len(cs.Configs), MaxConfigRefs},
			{"ContainerSpec.Mounts", len(cs.Mounts), MaxMounts},
			{"ContainerSpec.Env", len(cs.Env), MaxEnv},
			{"ContainerSpec.Labels", len(cs.Labels), MaxLabels},
		}...)
	}
	if s.EndpointSpec != nil {
		checks = append(checks, struct {
			field    string
			n, limit int
		}{"EndpointSpec.Ports", len(s.EndpointSpec.Ports), MaxPorts})
	}
	for _, c := range checks {
		if err := count(c.field, c.n, c.limit); err != nil {
			return err
		}
	}
	replicas := uint64(1)
	for _, r := range []struct {
		what string
		n    *uint64
	}{
		{"replica count", replicatedCount(s)},
		{"job MaxConcurrent", jobField(s, func(j *swarm.ReplicatedJob) *uint64 { return j.MaxConcurrent })},
		{"job TotalCompletions", jobField(s, func(j *swarm.ReplicatedJob) *uint64 { return j.TotalCompletions })},
	} {
		if r.n == nil {
			continue
		}
		if *r.n > MaxReplicas {
			return errdefs.InvalidArgument("invalid %s %d: hush runs at most %d replicas per service", r.what, *r.n, MaxReplicas)
		}
		replicas = max(replicas, *r.n)
	}
	enc, err := json.Marshal(s)
	if err != nil {
		return errdefs.InvalidArgument("service spec cannot be encoded: %v", err)
	}
	if len(enc) > MaxSpecBytes {
		return errdefs.InvalidArgument("service spec is %d bytes, more than hush's limit of %d bytes", len(enc), MaxSpecBytes)
	}
	tpl, err := json.Marshal(tt)
	if err != nil {
		return errdefs.InvalidArgument("task template cannot be encoded: %v", err)
	}
	if uint64(len(tpl))*replicas > MaxTaskBytes {
		return errdefs.InvalidArgument("%d replicas of a %d-byte task template exceed hush's limit of %d bytes of tasks per service; use fewer replicas or a smaller spec", replicas, len(tpl), MaxTaskBytes)
	}
	return nil
}

func replicatedCount(s *swarm.ServiceSpec) *uint64 {
	if s.Mode.Replicated == nil {
		return nil
	}
	return s.Mode.Replicated.Replicas
}

func jobField(s *swarm.ServiceSpec, f func(*swarm.ReplicatedJob) *uint64) *uint64 {
	if s.Mode.ReplicatedJob == nil {
		return nil
	}
	return f(s.Mode.ReplicatedJob)
}

// decodeLoaded decodes a service for the mirror, which the orchestrator
// plans from. A record an older hushd stored beyond MaxReplicas would make
// every pass build that many slots (and crash hushd on each restart), so
// the mirror's copy runs at the bound until the service is updated;
// inspect (which reads the store) still shows what was stored.
func (m *Manager) decodeLoaded(o store.Object) (*model.Service, error) {
	s, err := decodeService(o)
	if err != nil {
		return nil, err
	}
	if clampReplicas(&s.Spec) {
		m.log.Error("stored service exceeds hush's replica bound; running it at the bound until it is updated",
			"service", s.ID, "name", s.Spec.Name, "limit", MaxReplicas)
	}
	return s, nil
}

// clampReplicas lowers every replica-like count above MaxReplicas to it, in
// a copy of the pointers (decoded records share nothing).
func clampReplicas(s *swarm.ServiceSpec) bool {
	clamped := false
	clamp := func(p **uint64) {
		if *p != nil && **p > MaxReplicas {
			v := uint64(MaxReplicas)
			*p = &v
			clamped = true
		}
	}
	if r := s.Mode.Replicated; r != nil {
		clamp(&r.Replicas)
	}
	if j := s.Mode.ReplicatedJob; j != nil {
		clamp(&j.MaxConcurrent)
		clamp(&j.TotalCompletions)
	}
	return clamped
}
