package services

import (
	"reflect"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/swarm"
)

// IsJob reports whether a spec is a replicated or global job.
func IsJob(s *swarm.ServiceSpec) bool {
	return s.Mode.ReplicatedJob != nil || s.Mode.GlobalJob != nil
}

// validateMode checks the service mode and stores the defaults dockerd
// stores: replicated with one replica when no mode is given, and for a
// replicated job MaxConcurrent 1 and TotalCompletions = MaxConcurrent.
func validateMode(s *swarm.ServiceSpec) error {
	n := 0
	for _, set := range []bool{s.Mode.Replicated != nil, s.Mode.Global != nil, s.Mode.ReplicatedJob != nil, s.Mode.GlobalJob != nil} {
		if set {
			n++
		}
	}
	if n > 1 {
		// dockerd refuses this while converting, before the control API.
		return errdefs.BadRequest("must specify only one service mode")
	}
	switch {
	case n == 0:
		one := uint64(1)
		s.Mode.Replicated = &swarm.ReplicatedService{Replicas: &one}
	case s.Mode.Replicated != nil && s.Mode.Replicated.Replicas == nil:
		one := uint64(1)
		s.Mode.Replicated.Replicas = &one
	case s.Mode.ReplicatedJob != nil:
		j := s.Mode.ReplicatedJob
		if j.MaxConcurrent == nil {
			one := uint64(1)
			j.MaxConcurrent = &one
		}
		if j.TotalCompletions == nil {
			total := *j.MaxConcurrent
			j.TotalCompletions = &total
		}
	}
	if IsJob(s) && s.UpdateConfig != nil {
		return errdefs.InvalidArgument("Jobs may not have an update config")
	}
	return nil
}

// checkModeChange refuses an update that changes the kind of mode (Swarm:
// the same text, as gRPC Unimplemented, HTTP 501); the replica count may
// change.
func checkModeChange(cur, next *swarm.ServiceSpec) error {
	kind := func(s *swarm.ServiceSpec) [4]bool {
		return [4]bool{s.Mode.Replicated != nil, s.Mode.Global != nil, s.Mode.ReplicatedJob != nil, s.Mode.GlobalJob != nil}
	}
	if !reflect.DeepEqual(kind(cur), kind(next)) {
		return errdefs.InvalidArgument("service mode change is not allowed")
	}
	return nil
}

// nextJobStatus is a job's status after an update: as in Swarm, every
// update (a forced one included) runs the job again as a new iteration.
func nextJobStatus(cur *swarm.JobStatus, now time.Time) *swarm.JobStatus {
	next := &swarm.JobStatus{LastExecution: now}
	if cur != nil {
		next.JobIteration.Index = cur.JobIteration.Index + 1
	}
	return next
}

// checkPlacement checks the spread preferences, which the orchestrator
// acts on besides constraints (resource reservations are checked with the
// limits, in checkResources). Swarm ignores a preference it cannot spread
// over; hush refuses it by name instead of accepting and ignoring it.
func checkPlacement(tt *swarm.TaskSpec) error {
	p := tt.Placement
	if p == nil {
		return nil
	}
	for _, pref := range p.Preferences {
		if pref.Spread == nil {
			return errdefs.InvalidArgument("Placement.Preferences: only spread preferences are supported")
		}
		if !SpreadLabel(pref.Spread.SpreadDescriptor) {
			return errdefs.InvalidArgument("Placement.Preferences: cannot spread over %q: hush spreads only over node.labels.* and engine.labels.*", pref.Spread.SpreadDescriptor)
		}
	}
	return nil
}

// SpreadLabel reports whether a spread descriptor names a node or engine
// label (prefix matched case-insensitively, as Swarm does).
func SpreadLabel(d string) bool {
	for _, p := range []string{"node.labels.", "engine.labels."} {
		if len(d) > len(p) && strings.EqualFold(d[:len(p)], p) {
			return true
		}
	}
	return false
}
