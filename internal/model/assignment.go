package model

import (
	"time"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
)

// What a node and the dispatcher exchange (internal/manager/dispatcher,
// internal/agent). These are the only forms in which a node ever sees the
// cluster: its own tasks and the data they hold, nothing else. They travel
// in-process today and are meant to cross a mutual-TLS transport unchanged.

// Largest secret and config data (exclusive bounds), which also bound a
// template's rendering on the node.
const (
	MaxSecretData = 500 * 1024
	MaxConfigData = 1000 * 1024
)

// DataRef names one version of a secret or config.
type DataRef struct {
	Kind    string // "secret" or "config"
	ID      string
	Version int
}

// Key is the ref's DataVersions key (without the version).
func (r DataRef) Key() string { return DataKey(r.Kind, r.ID) }

// DataItem is one version of a secret or config sent to a node. Data is
// plaintext in memory only; whoever drops an item wipes it.
type DataItem struct {
	DataRef
	Name string
	// Templating is the object's templating driver ("" for none): the
	// agent renders the raw template for each task before it mounts it.
	Templating string
	Data       []byte
}

// AssignedTask is a task as its node is given it: the stored task (spec,
// desired state, the versions it holds and has loaded, status) and what of
// its service the node needs (labels, for templates).
type AssignedTask struct {
	Task          *Task
	ServiceLabels map[string]string
}

// Assignments is one message of a node's assignment stream: the first of
// a session is Full (it replaces whatever the node was given before), the
// following ones are increments. Data holds each version a task of the
// node holds while it should run, once per version however many tasks
// hold it; RemovedData names the versions no task of the node holds any
// more, which the node wipes. Data is keyed apart from tasks so that other
// holders (standalone containers' grants, not sent yet) can share it.
type Assignments struct {
	Full         bool
	Tasks        []AssignedTask // new or changed
	RemovedTasks []string       // IDs no longer assigned to the node
	Data         []DataItem
	RemovedData  []DataRef
}

// Wipe clears the data of every item of m.
func (m *Assignments) Wipe() {
	for i := range m.Data {
		clear(m.Data[i].Data)
	}
}

// StatusReport is a node's report on one of its tasks.
type StatusReport struct {
	TaskID string
	State  swarm.TaskState
	// Message and Err are as in swarm.TaskStatus.
	Message, Err string
	// Container is nil when the task has no container (yet).
	Container *swarm.ContainerStatus
	// At is when the node saw the change (the dispatcher bounds it by
	// its own clock).
	At time.Time
	// Loaded are the versions the task's container holds after a start
	// or a reload; nil leaves the recorded ones.
	Loaded map[string]int
}

// TaskNetwork is a swarm network one of a node's tasks joins, as the node
// realises it: a local bridge on its own engine (a swarm network is a
// bridge on each node's engine, never one host's network ID: engine IDs
// mean nothing on another host).
type TaskNetwork struct {
	ID         string
	Name       string
	Labels     map[string]string `json:",omitempty"`
	Internal   bool              `json:",omitempty"`
	EnableIPv6 bool              `json:",omitempty"`
	// IPAM is the network's subnets (nil: the engine picks).
	IPAM []network.IPAMConfig `json:",omitempty"`
}
