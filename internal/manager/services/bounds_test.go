package services

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
)

func boundN(v uint64) *uint64 { return &v }

func TestCheckBounds(t *testing.T) {
	with := func(f func(s *swarm.ServiceSpec)) swarm.ServiceSpec {
		s := spec("web")
		f(&s)
		return s
	}
	many := func(n int, f func(i int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	labels := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprint("k", i)] = "v"
		}
		return m
	}
	tests := []struct {
		name string
		spec swarm.ServiceSpec
		want string // substring of the error; "" = within bounds
	}{
		{"replicas at the bound", with(func(s *swarm.ServiceSpec) {
			s.Mode.Replicated = &swarm.ReplicatedService{Replicas: boundN(MaxReplicas)}
		}), ""},
		{"a billion replicas", with(func(s *swarm.ServiceSpec) {
			s.Mode.Replicated = &swarm.ReplicatedService{Replicas: boundN(1e9)}
		}), "invalid replica count 1000000000: hush runs at most 10000 replicas per service"},
		{"max uint64 replicas", with(func(s *swarm.ServiceSpec) {
			s.Mode.Replicated = &swarm.ReplicatedService{Replicas: boundN(^uint64(0))}
		}), "hush runs at most 10000 replicas"},
		{"job completions", with(func(s *swarm.ServiceSpec) {
			s.Mode.ReplicatedJob = &swarm.ReplicatedJob{TotalCompletions: boundN(MaxReplicas + 1)}
		}), "invalid job TotalCompletions 10001"},
		{"job concurrency", with(func(s *swarm.ServiceSpec) {
			s.Mode.ReplicatedJob = &swarm.ReplicatedJob{MaxConcurrent: boundN(1 << 40)}
		}), "invalid job MaxConcurrent"},
		{"env at the bound", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.ContainerSpec.Env = many(MaxEnv, func(i int) string { return fmt.Sprint("E", i, "=x") })
		}), ""},
		{"env", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.ContainerSpec.Env = many(MaxEnv+1, func(i int) string { return "E=x" })
		}), "ContainerSpec.Env: 4097 entries exceed hush's limit of 4096"},
		{"secrets", with(func(s *swarm.ServiceSpec) {
			for range MaxSecretRefs + 1 {
				s.TaskTemplate.ContainerSpec.Secrets = append(s.TaskTemplate.ContainerSpec.Secrets, &swarm.SecretReference{SecretName: "a"})
			}
		}), "ContainerSpec.Secrets: 257 entries exceed hush's limit of 256"},
		{"configs", with(func(s *swarm.ServiceSpec) {
			for range MaxConfigRefs + 1 {
				s.TaskTemplate.ContainerSpec.Configs = append(s.TaskTemplate.ContainerSpec.Configs, &swarm.ConfigReference{ConfigName: "a"})
			}
		}), "ContainerSpec.Configs: 257 entries"},
		{"mounts", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.ContainerSpec.Mounts = make([]mount.Mount, MaxMounts+1)
		}), "ContainerSpec.Mounts: 257 entries"},
		{"ports", with(func(s *swarm.ServiceSpec) {
			s.EndpointSpec = &swarm.EndpointSpec{Ports: make([]swarm.PortConfig, MaxPorts+1)}
		}), "EndpointSpec.Ports: 1025 entries"},
		{"networks", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.Networks = make([]swarm.NetworkAttachmentConfig, MaxNetworks+1)
		}), "TaskTemplate.Networks: 257 entries"},
		{"service labels", with(func(s *swarm.ServiceSpec) { s.Labels = labels(MaxLabels + 1) }), "Labels: 1025 entries exceed"},
		{"container labels", with(func(s *swarm.ServiceSpec) { s.TaskTemplate.ContainerSpec.Labels = labels(MaxLabels + 1) }), "ContainerSpec.Labels: 1025 entries"},
		{"oversized spec", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.ContainerSpec.Env = []string{"BIG=" + strings.Repeat("x", MaxSpecBytes)}
		}), "more than hush's limit of 524288 bytes"},
		{"replicas times template", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.ContainerSpec.Env = []string{"BIG=" + strings.Repeat("x", 100<<10)}
			s.Mode.Replicated = &swarm.ReplicatedService{Replicas: boundN(1000)}
		}), "exceed hush's limit of 67108864 bytes of tasks per service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.spec
			err := validateSpec(&s)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

// TestOverBoundNotStored: create and update refuse, and nothing changes.
func TestOverBoundNotStored(t *testing.T) {
	m, _, ctx := newManagers(t)
	s := spec("bnd")
	s.Mode.Replicated = &swarm.ReplicatedService{Replicas: boundN(1e9)}
	if _, err := m.Create(ctx, s); err == nil {
		t.Fatal("create accepted a billion replicas")
	}
	svcs, _, err := m.Snapshot(ctx)
	if err != nil || len(svcs) != 0 {
		t.Fatalf("stored %d services (%v)", len(svcs), err)
	}
	id, err := m.Create(ctx, spec("bnd"))
	if err != nil {
		t.Fatal(err)
	}
	cur, err := m.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	next := cur.Spec
	next.Mode.Replicated = &swarm.ReplicatedService{Replicas: boundN(MaxReplicas + 1)}
	if err := m.Update(ctx, id, next, UpdateOptions{Version: cur.Version.Index}); err == nil {
		t.Fatal("update accepted too many replicas")
	}
	after, err := m.Get(ctx, id)
	if err != nil || after.Version.Index != cur.Version.Index || *after.Spec.Mode.Replicated.Replicas != 1 {
		t.Fatalf("service changed: %+v %v", after, err)
	}
}

// TestStoredOverBoundClamped: a record an older hushd stored beyond the
// bound reaches the orchestrator's view (the mirror) at the bound, and the
// service can still be read, updated and removed.
func TestStoredOverBoundClamped(t *testing.T) {
	m, _, ctx := newManagers(t)
	id, err := identity.NewID()
	if err != nil {
		t.Fatal(err)
	}
	svc := model.Service{SpecVersion: 1}
	svc.ID = id
	svc.CreatedAt, svc.UpdatedAt = time.Now(), time.Now()
	svc.Spec = spec("bndold")
	svc.Spec.Mode.Replicated = &swarm.ReplicatedService{Replicas: boundN(1e9)}
	val, _ := json.Marshal(&svc)
	if _, err := m.st.Table(model.ServicesTable).Create(ctx, id, "bndold", val); err != nil {
		t.Fatal(err)
	}
	svcs, _, err := m.Snapshot(ctx)
	if err != nil || len(svcs) != 1 {
		t.Fatalf("snapshot: %d %v", len(svcs), err)
	}
	if got := *svcs[0].Spec.Mode.Replicated.Replicas; got != MaxReplicas {
		t.Fatalf("mirror replicas %d, want %d", got, MaxReplicas)
	}
	stored, err := m.Get(ctx, id)
	if err != nil || *stored.Spec.Mode.Replicated.Replicas != 1e9 {
		t.Fatalf("inspect must show the stored spec: %v", err)
	}
	next := stored.Spec
	next.Mode.Replicated = &swarm.ReplicatedService{Replicas: boundN(2)}
	if err := m.Update(ctx, id, next, UpdateOptions{Version: stored.Version.Index}); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := m.st.Table(model.ServicesTable).Get(ctx, id); err != store.ErrNotFound {
		t.Fatalf("not removed: %v", err)
	}
}
