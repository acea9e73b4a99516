package api

import (
	"testing"

	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

func TestServiceStatus(t *testing.T) {
	u := func(v uint64) *uint64 { return &v }
	svc := func(mode swarm.ServiceMode, iter *uint64) *model.Service {
		s := &model.Service{}
		s.ID = "svc"
		s.Spec.Mode = mode
		if iter != nil {
			s.JobStatus = &swarm.JobStatus{JobIteration: swarm.Version{Index: *iter}}
		}
		return s
	}
	task := func(desired, state swarm.TaskState, iter *uint64) *model.Task {
		t := &model.Task{}
		t.ServiceID = "svc"
		t.DesiredState, t.Status.State = desired, state
		if iter != nil {
			t.JobIteration = &swarm.Version{Index: *iter}
		}
		return t
	}
	other := task(swarm.TaskStateRunning, swarm.TaskStateRunning, nil)
	other.ServiceID = "other"
	tests := []struct {
		name  string
		svc   *model.Service
		tasks []*model.Task
		want  swarm.ServiceStatus
	}{
		{"replicated", svc(swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: u(3)}}, nil), []*model.Task{
			task(swarm.TaskStateRunning, swarm.TaskStateRunning, nil),
			task(swarm.TaskStateRunning, swarm.TaskStatePending, nil),
			task(swarm.TaskStateShutdown, swarm.TaskStateComplete, nil),
			other,
		}, swarm.ServiceStatus{RunningTasks: 1, DesiredTasks: 3}},
		{"global", svc(swarm.ServiceMode{Global: &swarm.GlobalService{}}, nil), []*model.Task{
			task(swarm.TaskStateRunning, swarm.TaskStateRunning, nil),
			task(swarm.TaskStateShutdown, swarm.TaskStateShutdown, nil),
		}, swarm.ServiceStatus{RunningTasks: 1, DesiredTasks: 1}},
		// replicated job 0/2 (3/3 completed), after a force update of a
		// job that had completed once.
		{"replicated job", svc(swarm.ServiceMode{ReplicatedJob: &swarm.ReplicatedJob{MaxConcurrent: u(2), TotalCompletions: u(3)}}, u(1)), []*model.Task{
			task(swarm.TaskStateComplete, swarm.TaskStateComplete, u(0)),
			task(swarm.TaskStateComplete, swarm.TaskStateComplete, u(1)),
			task(swarm.TaskStateComplete, swarm.TaskStateComplete, u(1)),
			task(swarm.TaskStateComplete, swarm.TaskStateRunning, u(1)),
			task(swarm.TaskStateShutdown, swarm.TaskStateFailed, u(1)),
		}, swarm.ServiceStatus{RunningTasks: 1, DesiredTasks: 2, CompletedTasks: 2}},
		// global job 0/0 (1/1 completed) once done; a task still to
		// complete counts as desired.
		{"global job", svc(swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}}, u(0)), []*model.Task{
			task(swarm.TaskStateComplete, swarm.TaskStateComplete, u(0)),
			task(swarm.TaskStateComplete, swarm.TaskStatePending, u(0)),
		}, swarm.ServiceStatus{DesiredTasks: 1, CompletedTasks: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := serviceStatus(tt.svc, tt.tasks); *got != tt.want {
				t.Fatalf("got %+v, want %+v", *got, tt.want)
			}
		})
	}
}
