package services

import (
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/swarm"
)

func u64(v uint64) *uint64 { return &v }

func TestValidateModeAndPlacement(t *testing.T) {
	with := func(f func(*swarm.ServiceSpec)) swarm.ServiceSpec {
		s := spec("job")
		f(&s)
		return s
	}
	tests := []struct {
		name string
		spec swarm.ServiceSpec
		// want is the refusal ("" = valid); check looks at the stored defaults.
		want  string
		check func(*testing.T, *swarm.ServiceSpec)
	}{
		{"replicated job defaults", with(func(s *swarm.ServiceSpec) { s.Mode.ReplicatedJob = &swarm.ReplicatedJob{} }), "",
			func(t *testing.T, s *swarm.ServiceSpec) {
				if *s.Mode.ReplicatedJob.MaxConcurrent != 1 || *s.Mode.ReplicatedJob.TotalCompletions != 1 {
					t.Fatalf("dockerd stores MaxConcurrent 1, TotalCompletions 1: %+v", s.Mode.ReplicatedJob)
				}
			}},
		{"total defaults to max concurrent", with(func(s *swarm.ServiceSpec) { s.Mode.ReplicatedJob = &swarm.ReplicatedJob{MaxConcurrent: u64(3)} }), "",
			func(t *testing.T, s *swarm.ServiceSpec) {
				if *s.Mode.ReplicatedJob.TotalCompletions != 3 {
					t.Fatalf("TotalCompletions %d, want 3", *s.Mode.ReplicatedJob.TotalCompletions)
				}
			}},
		{"global job", with(func(s *swarm.ServiceSpec) { s.Mode.GlobalJob = &swarm.GlobalJob{} }), "",
			func(t *testing.T, s *swarm.ServiceSpec) {
				if s.Mode.Replicated != nil {
					t.Fatal("a global job must not get a replicated mode")
				}
			}},
		{"two modes", with(func(s *swarm.ServiceSpec) {
			s.Mode.GlobalJob = &swarm.GlobalJob{}
			s.Mode.Replicated = &swarm.ReplicatedService{}
		}), "must specify only one service mode", nil},
		{"job with update config", with(func(s *swarm.ServiceSpec) {
			s.Mode.ReplicatedJob = &swarm.ReplicatedJob{}
			s.UpdateConfig = &swarm.UpdateConfig{Parallelism: 1}
		}), "Jobs may not have an update config", nil},
		{"job with rollback config", with(func(s *swarm.ServiceSpec) {
			s.Mode.GlobalJob = &swarm.GlobalJob{}
			s.RollbackConfig = &swarm.UpdateConfig{Parallelism: 1}
		}), "", nil},
		{"spread over a node label", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.Placement = &swarm.Placement{Preferences: []swarm.PlacementPreference{{Spread: &swarm.SpreadOver{SpreadDescriptor: "Node.Labels.zone"}}}}
		}), "", nil},
		{"spread over an engine label", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.Placement = &swarm.Placement{Preferences: []swarm.PlacementPreference{{Spread: &swarm.SpreadOver{SpreadDescriptor: "engine.labels.rack"}}}}
		}), "", nil},
		{"spread over the hostname", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.Placement = &swarm.Placement{Preferences: []swarm.PlacementPreference{{Spread: &swarm.SpreadOver{SpreadDescriptor: "node.hostname"}}}}
		}), `Placement.Preferences: cannot spread over "node.hostname": hush spreads only over node.labels.* and engine.labels.*`, nil},
		{"empty preference", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.Placement = &swarm.Placement{Preferences: []swarm.PlacementPreference{{}}}
		}), "Placement.Preferences: only spread preferences are supported", nil},
		{"tiny memory reservation", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{MemoryBytes: 1000}}
		}), "invalid memory value 1000: Must be at least 4MiB", nil},
		{"tiny cpu reservation", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{NanoCPUs: 1000}}
		}), "invalid cpu value 1e-06: Must be at least 0.001", nil},
		{"negative cpu reservation", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{NanoCPUs: -5}}
		}), "invalid cpu value -5e-09: Must be at least 0.001", nil},
		{"reservations", with(func(s *swarm.ServiceSpec) {
			s.TaskTemplate.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{NanoCPUs: 5e8, MemoryBytes: 64 << 20}}
		}), "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.spec
			err := validateSpec(&s)
			if tt.want != "" {
				if err == nil || err.Error() != tt.want || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("got %v, want %q (400)", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, &s)
			}
		})
	}
}

// A job's status starts at iteration 0; every update, forced or not, runs
// it again as the next iteration, with no rollout status. The mode's kind
// cannot change.
func TestJobStatusAndModeChange(t *testing.T) {
	m, _, ctx := newManagers(t)
	s := spec("job")
	s.Mode.ReplicatedJob = &swarm.ReplicatedJob{MaxConcurrent: u64(2), TotalCompletions: u64(3)}
	before := time.Now().UTC().Add(-time.Second)
	id, err := m.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	svc, _ := m.Get(ctx, id)
	if svc.JobStatus == nil || svc.JobStatus.JobIteration.Index != 0 || svc.JobStatus.LastExecution.Before(before) {
		t.Fatalf("job status at create: %+v", svc.JobStatus)
	}
	for i := uint64(1); i <= 2; i++ {
		next := svc.Spec
		next.TaskTemplate.ForceUpdate++
		if err := m.Update(ctx, id, next, UpdateOptions{Version: svc.Version.Index}); err != nil {
			t.Fatal(err)
		}
		svc, _ = m.Get(ctx, id)
		if svc.JobStatus == nil || svc.JobStatus.JobIteration.Index != i || svc.UpdateStatus != nil {
			t.Fatalf("after update %d: job status %+v, update status %+v", i, svc.JobStatus, svc.UpdateStatus)
		}
	}
	next := svc.Spec
	next.Mode = swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: u64(1)}}
	err = m.Update(ctx, id, next, UpdateOptions{Version: svc.Version.Index})
	if err == nil || err.Error() != "service mode change is not allowed" {
		t.Fatalf("mode change: %v", err)
	}
	// A replicated service gets no job status, and may change its count.
	rid, err := m.Create(ctx, spec("web"))
	if err != nil {
		t.Fatal(err)
	}
	web, _ := m.Get(ctx, rid)
	if web.JobStatus != nil {
		t.Fatalf("a service has no job status: %+v", web.JobStatus)
	}
	next = web.Spec
	next.Mode.Replicated = &swarm.ReplicatedService{Replicas: u64(3)}
	if err := m.Update(ctx, rid, next, UpdateOptions{Version: web.Version.Index}); err != nil {
		t.Fatalf("scaling is not a mode change: %v", err)
	}
	for _, tt := range []struct {
		mode swarm.ServiceMode
		want string
	}{
		{swarm.ServiceMode{Replicated: &swarm.ReplicatedService{}}, "replicated"},
		{swarm.ServiceMode{Global: &swarm.GlobalService{}}, "global"},
		{swarm.ServiceMode{ReplicatedJob: &swarm.ReplicatedJob{}}, "replicated-job"},
		{swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}}, "global-job"},
	} {
		if got := ModeName(&swarm.ServiceSpec{Mode: tt.mode}); got != tt.want {
			t.Errorf("ModeName: %q, want %q", got, tt.want)
		}
	}
}
