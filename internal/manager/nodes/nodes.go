// Package nodes keeps the node objects' specs: the labels, availability and
// role an operator sets with `docker node update`. A node's description
// (hostname, resources, engine) is reported live, not stored.
package nodes

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

const table = "nodes"

// MaxLabels bounds a node's labels, as a service's (they are read into
// every placement decision).
const MaxLabels = 1024

// Node is a stored node.
type Node struct {
	ID        string         `json:"id"`
	CreatedAt time.Time      `json:"created"`
	UpdatedAt time.Time      `json:"updated"`
	Spec      swarm.NodeSpec `json:"spec"`
	// Hostname and Addr (host:port of its join/CA service) are what a
	// joining node said of itself (a node's own are read live instead).
	Hostname string `json:"hostname,omitempty"`
	Addr     string `json:"addr,omitempty"`
	Version  uint64 `json:"-"`
}

// Record creates n if no node has its ID; a node already recorded (a
// retried join) is returned as stored.
func Record(ctx context.Context, st *store.Store, n Node) (Node, error) {
	now := time.Now().UTC()
	n.CreatedAt, n.UpdatedAt = now, now
	if n.Spec.Labels == nil {
		n.Spec.Labels = map[string]string{}
	}
	val, _ := json.Marshal(&n)
	if _, err := st.Table(table).Create(ctx, n.ID, "", val); err != nil && !errors.Is(err, store.ErrNameTaken) {
		return Node{}, err
	}
	return Get(ctx, st, n.ID)
}

// List reads every node.
func List(ctx context.Context, st *store.Store) ([]Node, error) {
	objs, err := st.Table(table).List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Node, 0, len(objs))
	for _, o := range objs {
		var n Node
		if err := json.Unmarshal(o.Value, &n); err != nil {
			return nil, errors.Join(errdefs.ErrInternal, err)
		}
		n.Version = uint64(o.ModRev)
		out = append(out, n)
	}
	return out, nil
}

// Ensure returns node id, creating it as an active manager if missing.
func Ensure(ctx context.Context, st *store.Store, id string) (Node, error) {
	n, err := Get(ctx, st, id)
	if !errors.Is(err, store.ErrNotFound) {
		return n, err
	}
	now := time.Now().UTC()
	n = Node{ID: id, CreatedAt: now, UpdatedAt: now, Spec: swarm.NodeSpec{
		Annotations: swarm.Annotations{Labels: map[string]string{}},
		Role:        swarm.NodeRoleManager, Availability: swarm.NodeAvailabilityActive,
	}}
	val, _ := json.Marshal(&n)
	if _, err := st.Table(table).Create(ctx, id, "", val); err != nil && !errors.Is(err, store.ErrNameTaken) {
		return Node{}, err
	}
	return Get(ctx, st, id)
}

// Get reads node id.
func Get(ctx context.Context, st *store.Store, id string) (Node, error) {
	o, err := st.Table(table).Get(ctx, id)
	if err != nil {
		return Node{}, err
	}
	var n Node
	if err := json.Unmarshal(o.Value, &n); err != nil {
		return Node{}, errors.Join(errdefs.ErrInternal, err)
	}
	n.Version = uint64(o.ModRev)
	return n, nil
}

// Update replaces node id's spec if version is current. hush runs one
// manager per cluster, so the role cannot change: demoting it would leave
// the cluster without a manager, which Swarm refuses too.
func Update(ctx context.Context, st *store.Store, id string, version uint64, spec swarm.NodeSpec) error {
	return update(ctx, st, id, version, spec, false)
}

// UpdateRole is Update on a cluster of several managers, where the role
// may change: the caller has checked that the membership allows it (see
// the daemon's role changes), and the record is what the nodes converge
// to.
func UpdateRole(ctx context.Context, st *store.Store, id string, version uint64, spec swarm.NodeSpec) error {
	return update(ctx, st, id, version, spec, true)
}

func update(ctx context.Context, st *store.Store, id string, version uint64, spec swarm.NodeSpec, roles bool) error {
	n, err := Get(ctx, st, id)
	if err != nil {
		return err
	}
	if spec.Role == "" {
		spec.Role = n.Spec.Role
	}
	switch {
	case spec.Role != swarm.NodeRoleManager && spec.Role != swarm.NodeRoleWorker:
		return errdefs.InvalidArgument("invalid role %q: must be manager or worker", spec.Role)
	case spec.Role != swarm.NodeRoleManager && !roles:
		return errdefs.Unknown("attempting to demote the last manager of the swarm")
	}
	switch spec.Availability {
	case "":
		spec.Availability = n.Spec.Availability
	case swarm.NodeAvailabilityActive, swarm.NodeAvailabilityPause, swarm.NodeAvailabilityDrain:
	default:
		return errdefs.InvalidArgument("invalid availability %q: must be active, pause or drain", spec.Availability)
	}
	if spec.Labels == nil {
		spec.Labels = map[string]string{}
	}
	if len(spec.Labels) > MaxLabels {
		return errdefs.InvalidArgument("Labels: %d entries exceed hush's limit of %d", len(spec.Labels), MaxLabels)
	}
	n.Spec = spec
	n.UpdatedAt = time.Now().UTC()
	val, _ := json.Marshal(&n)
	_, err = st.Table(table).Update(ctx, id, int64(version), val)
	if errors.Is(err, store.ErrStale) {
		return errdefs.OutOfSequence()
	}
	return err
}

// Describe records the hostname and address other managers show for node
// id (a node's own are read live); unchanged values write nothing.
func Describe(ctx context.Context, st *store.Store, id, hostname, addr string) error {
	n, err := Get(ctx, st, id)
	if err != nil {
		return err
	}
	if n.Hostname == hostname && n.Addr == addr {
		return nil
	}
	n.Hostname, n.Addr = hostname, addr
	val, _ := json.Marshal(&n)
	_, err = st.Table(table).Update(ctx, id, int64(n.Version), val)
	return err
}
