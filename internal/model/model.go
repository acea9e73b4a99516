// Package model holds the stored forms of services and tasks, shared by the
// manager (which writes specs and desired states) and the agent (whose
// task status reports the dispatcher writes), and the messages a node and
// the dispatcher exchange (assignment.go).
//
// Records embed the Docker API's wire types so that what is stored is what
// is served, minus nothing: services and tasks carry no secret data, only
// references to secrets by ID (and a service's registry credentials,
// sealed, which are never served).
package model

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/moby/moby/api/types/swarm"
)

// Store tables.
const (
	ServicesTable = "services"
	TasksTable    = "tasks"
)

// Service is a stored service.
type Service struct {
	swarm.Service
	// SpecVersion counts spec changes (not status writes); a task made from
	// an older SpecVersion is not up to date.
	SpecVersion uint64 `json:"specVersion"`
	// PreviousSpecVersion is the SpecVersion PreviousSpec had.
	PreviousSpecVersion uint64 `json:"previousSpecVersion,omitempty"`
	// PullAuth is the X-Registry-Auth value (registry credentials) the
	// spec came with (`--with-registry-auth`), sealed by the keyring as
	// secret data is; PreviousPullAuth is PreviousSpec's. Swarm keeps them
	// in the task spec's PullOptions, which its API never shows; neither is
	// served here (the API answers with the embedded swarm.Service).
	PullAuth         *keyring.Sealed `json:"pullAuth,omitempty"`
	PreviousPullAuth *keyring.Sealed `json:"previousPullAuth,omitempty"`
	// RotationPins hold the service's tasks on an earlier version of a
	// secret or config (keyed by DataKey) after a rotation's rollout failed
	// with failure action rollback; a pin lapses once the object is rotated
	// again (its current version is no longer Against).
	RotationPins map[string]Pin `json:"rotationPins,omitempty"`
}

// Pin is one RotationPins entry: Version is used while Against is current.
type Pin struct {
	Version int `json:"version"`
	Against int `json:"against"`
}

// Task is a stored task.
type Task struct {
	swarm.Task
	// TemplateHash identifies the task template the task was made from; a
	// task whose hash differs from its service's template is outdated
	// (replica count, labels and update settings do not make it so).
	TemplateHash string `json:"templateHash"`
	// ServiceName is kept for container naming after the service is gone.
	ServiceName string `json:"serviceName"`
	// CreateIndex is the store revision that created the task: it orders
	// tasks made within one clock tick (not stored).
	CreateIndex int64 `json:"-"`
	// NotBefore delays the start of a restarted task (restart delay); the
	// task waits with desired state "ready" until then, as in Swarm.
	NotBefore time.Time `json:"notBefore,omitempty"`
	// Restarts are the times this task's slot lineage was restarted by the
	// restart policy, for max-attempts and window (bounded).
	Restarts []time.Time `json:"restarts,omitempty"`
	// Ports are the service's published ports when the task was made; the
	// task's container binds them on the host.
	Ports []swarm.PortConfig `json:"ports,omitempty"`
	// DataVersions are the versions of the task's secrets and configs it
	// holds, keyed by DataKey: the dispatcher hands it those and no other,
	// and a rotation makes the task outdated.
	DataVersions map[string]int `json:"dataVersions,omitempty"`
	// LoadedVersions are the versions the task's container has (written
	// by the agent at start and after each reload); in reload mode they
	// trail DataVersions until the swap is done.
	LoadedVersions map[string]int `json:"loadedVersions,omitempty"`
	// RotateMode is the service's io.hush.rotate when the task was made.
	RotateMode string `json:"rotateMode,omitempty"`
}

// DataKey names an object of a kind ("secret", "config") in DataVersions.
func DataKey(kind, id string) string { return kind + "/" + id }

// HeldVersion is the version of object id of kind that t holds. Tasks made
// before versions existed hold version 1, the only one there was.
func (t *Task) HeldVersion(kind, id string) int {
	if n, ok := t.DataVersions[DataKey(kind, id)]; ok && n > 0 {
		return n
	}
	return 1
}

// Decode parses a stored record.
func Decode[T any](b []byte) (*T, error) {
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		return nil, fmt.Errorf("decode: %w: %w", errdefs.ErrInternal, err)
	}
	return v, nil
}

// Name is a task's name as Swarm forms it: <service>.<slot> for replicated
// tasks and <service>.<node> for global ones.
func (t *Task) Name() string {
	if t.Slot != 0 {
		return fmt.Sprintf("%s.%d", t.ServiceName, t.Slot)
	}
	return t.ServiceName + "." + t.NodeID
}

// ContainerName is <task name>.<task ID>, as Swarm names task containers.
func (t *Task) ContainerName() string { return t.Name() + "." + t.ID }

// Terminal reports whether a task state is final.
func Terminal(s swarm.TaskState) bool {
	switch s {
	case swarm.TaskStateComplete, swarm.TaskStateShutdown, swarm.TaskStateFailed,
		swarm.TaskStateRejected, swarm.TaskStateRemove, swarm.TaskStateOrphaned:
		return true
	}
	return false
}

// Runs reports whether a desired state asks the node to run the task:
// "running" for services, "complete" for jobs (run until it exits).
func Runs(desired swarm.TaskState) bool {
	return desired == swarm.TaskStateRunning || desired == swarm.TaskStateComplete
}

// MsgPendingScheduling is the status message of a task waiting for a node
// that can take it. Such a task may already name its node (a global task
// waiting for resources there), but it is not the node's to start yet.
const MsgPendingScheduling = "pending task scheduling"

// Unscheduled reports whether t waits for placement.
func Unscheduled(t *Task) bool {
	return t.Status.State == swarm.TaskStatePending && t.Status.Message == MsgPendingScheduling
}

// stateOrder ranks states as Swarm orders them.
var stateOrder = map[swarm.TaskState]int{
	swarm.TaskStateNew: 0, swarm.TaskStateAllocated: 1, swarm.TaskStatePending: 2,
	swarm.TaskStateAssigned: 3, swarm.TaskStateAccepted: 4, swarm.TaskStatePreparing: 5,
	swarm.TaskStateReady: 6, swarm.TaskStateStarting: 7, swarm.TaskStateRunning: 8,
	swarm.TaskStateComplete: 9, swarm.TaskStateShutdown: 10, swarm.TaskStateFailed: 11,
	swarm.TaskStateRejected: 12, swarm.TaskStateRemove: 13, swarm.TaskStateOrphaned: 14,
}

// Before reports whether state a comes before b.
func Before(a, b swarm.TaskState) bool { return stateOrder[a] < stateOrder[b] }

// TemplateHash hashes what a service's tasks are made from for up-to-date
// checks: the task template and the published ports (which the task's
// container binds on the host).
func TemplateHash(s *swarm.ServiceSpec) string {
	var ports []swarm.PortConfig
	if s.EndpointSpec != nil {
		ports = s.EndpointSpec.Ports
	}
	b, _ := json.Marshal(struct {
		T *swarm.TaskSpec
		P []swarm.PortConfig `json:",omitempty"`
	}{&s.TaskTemplate, ports})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}
