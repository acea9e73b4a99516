package orchestrator

import (
	"context"
	"errors"
	"math"
	"sort"
	"strconv"

	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// maxNewJobTasks bounds the tasks one pass creates for a job: a very large
// MaxConcurrent fills up over several passes rather than in one burst.
const maxNewJobTasks = 256

// jobIteration is the service's current job iteration: 0 at create, one
// more with every update.
func jobIteration(svc *model.Service) uint64 {
	if svc.JobStatus == nil {
		return 0
	}
	return svc.JobStatus.JobIteration.Index
}

func inIteration(t *model.Task, iter uint64) bool {
	return t.JobIteration != nil && t.JobIteration.Index == iter
}

// jobSlotKey is a replicated job's slot number (0 to TotalCompletions-1,
// as Swarm numbers them) or a global job's node.
func jobSlotKey(svc *model.Service, t *model.Task) string {
	if svc.Spec.Mode.GlobalJob != nil {
		return "node:" + t.NodeID
	}
	return "slot:" + strconv.Itoa(t.Slot)
}

// jobSlotState is where one slot of the current iteration stands.
type jobSlotState int

const (
	slotFree    jobSlotState = iota // no task alive or done: it may get one
	slotActive                      // a task runs, waits to start, or is being stopped
	slotDone                        // a task completed (exit 0): never run again
	slotGivenUp                     // failed, and the restart policy allows no more tries
)

// reconcileJob runs a job as Swarm does: a replicated job keeps up to
// MaxConcurrent tasks going until TotalCompletions of them completed; a
// global job runs one task on every node that can take it. Failed tasks
// are retried by the restart policy, where "any" means "on-failure", since
// a completed task is never run again. An update starts a new iteration:
// tasks of older ones no longer count; those still running are removed
// (for a global job, all of them).
func (o *Orchestrator) reconcileJob(ctx context.Context, svc *model.Service, tasks []*model.Task) error {
	iter := jobIteration(svc)
	global := svc.Spec.Mode.GlobalJob != nil
	var errs []error
	history := map[string]*slot{} // every iteration, for pruning
	current := map[string]*slot{}
	for _, t := range tasks {
		k := jobSlotKey(svc, t)
		if history[k] == nil {
			history[k] = &slot{key: k, num: t.Slot}
		}
		history[k].tasks = append(history[k].tasks, t)
		if !inIteration(t, iter) {
			if t.DesiredState != swarm.TaskStateRemove && (global || !model.Terminal(t.Status.State)) {
				errs = append(errs, o.setDesired(ctx, t, swarm.TaskStateRemove))
			}
			continue
		}
		if current[k] == nil {
			current[k] = &slot{key: k, num: t.Slot}
		}
		current[k].tasks = append(current[k].tasks, t)
	}
	for _, m := range []map[string]*slot{history, current} {
		for _, s := range m {
			sort.Slice(s.tasks, func(i, j int) bool { return olderTask(s.tasks[i], s.tasks[j]) })
		}
	}
	keys := make([]string, 0, len(current))
	for k := range current {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	states := map[string]jobSlotState{}
	active, done := uint64(0), uint64(0)
	for _, k := range keys {
		st, err := o.jobSlot(ctx, svc, current[k])
		errs = append(errs, err)
		states[k] = st
		switch st {
		case slotActive:
			active++
		case slotDone:
			done++
		}
	}
	if global {
		for _, n := range o.nodes {
			k := "node:" + n.node.ID
			if states[k] != slotFree || !o.eligible(svc, n) {
				continue
			}
			s := current[k]
			if s == nil {
				s = &slot{key: k}
			}
			errs = append(errs, o.createTask(ctx, svc, s))
		}
	} else {
		errs = append(errs, o.fillJob(ctx, svc, current, states, active, done))
	}
	for _, s := range history {
		errs = append(errs, o.prune(ctx, svc, s))
	}
	return errors.Join(errs...)
}

// fillJob starts tasks in the lowest free slots of a replicated job, up to
// MaxConcurrent at a time and TotalCompletions in all.
func (o *Orchestrator) fillJob(ctx context.Context, svc *model.Service, current map[string]*slot, states map[string]jobSlotState, active, done uint64) error {
	var maxC, total uint64
	if rj := svc.Spec.Mode.ReplicatedJob; rj != nil {
		if rj.MaxConcurrent != nil {
			maxC = *rj.MaxConcurrent
		}
		if rj.TotalCompletions != nil {
			total = *rj.TotalCompletions
		}
	}
	need := uint64(0)
	if active < maxC && active+done < total {
		need = min(maxC-active, total-active-done, maxNewJobTasks)
	}
	var errs []error
	// Occupied slots are skipped, so this visits at most the slots in use
	// plus the tasks it creates.
	for n := uint64(0); need > 0 && n < total && n <= math.MaxInt32; n++ {
		k := "slot:" + strconv.FormatUint(n, 10)
		if states[k] != slotFree {
			continue
		}
		s := current[k]
		if s == nil {
			s = &slot{key: k, num: int(n)}
		}
		errs = append(errs, o.createTask(ctx, svc, s))
		need--
	}
	return errors.Join(errs...)
}

// jobSlot works out one slot of the current iteration, starting a delayed
// retry whose time has come and retrying a failed task.
func (o *Orchestrator) jobSlot(ctx context.Context, svc *model.Service, s *slot) (jobSlotState, error) {
	for _, t := range s.tasks {
		if t.Status.State == swarm.TaskStateComplete {
			return slotDone, nil
		}
	}
	cur := s.tasks[len(s.tasks)-1]
	switch {
	case cur.DesiredState == swarm.TaskStateReady:
		// A retry waiting out its restart delay.
		if !o.now().Before(cur.NotBefore) {
			return slotActive, o.setDesired(ctx, cur, swarm.TaskStateComplete)
		}
		return slotActive, nil
	case model.Runs(cur.DesiredState):
		if !model.Terminal(cur.Status.State) {
			return slotActive, nil
		}
		return o.retryJobTask(ctx, svc, s, cur)
	case !model.Terminal(cur.Status.State) && !o.down[cur.NodeID]:
		// Being stopped (drained, or its constraints no longer hold): the
		// slot is taken until it is down. A down node's task reports
		// nothing: its slot is free at once, as a replicated slot is.
		return slotActive, nil
	case failedState(cur.Status.State) && !jobMayRetry(svc, cur):
		return slotGivenUp, nil
	}
	return slotFree, nil
}

func failedState(s swarm.TaskState) bool {
	return model.Terminal(s) && s != swarm.TaskStateComplete && s != swarm.TaskStateShutdown
}

// jobMayRetry applies the restart policy to a job's failed task. The
// window is judged at the failure, so the answer never changes later.
func jobMayRetry(svc *model.Service, dead *model.Task) bool {
	rp := restartPolicyOf(svc)
	return rp.cond != swarm.RestartPolicyConditionNone && !rp.exhausted(dead, dead.Status.Timestamp)
}

// retryJobTask replaces a job's failed task by the restart policy: the
// replacement exists at once and waits out the delay (desired "ready"), as
// in Swarm. With no tries left the slot stays failed.
func (o *Orchestrator) retryJobTask(ctx context.Context, svc *model.Service, s *slot, dead *model.Task) (jobSlotState, error) {
	if err := o.setDesired(ctx, dead, swarm.TaskStateShutdown); err != nil {
		return slotActive, err
	}
	if !jobMayRetry(svc, dead) {
		return slotGivenUp, nil
	}
	delay := restartPolicyOf(svc).delay
	return slotActive, o.createTaskAfter(ctx, svc, s, append(trimRestarts(dead.Restarts), o.now()), dead.Status.Timestamp.Add(delay))
}
