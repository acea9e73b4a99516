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
	Version   uint64         `json:"-"`
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
	n, err := Get(ctx, st, id)
	if err != nil {
		return err
	}
	if spec.Role == "" {
		spec.Role = n.Spec.Role
	}
	if spec.Role != swarm.NodeRoleManager {
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
