// Package nodes keeps the node objects' specs: the labels, availability and
// role an operator sets with `docker node update`. A node's description
// (hostname, resources, engine) is reported live, not stored.
package nodes

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
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
	// SeenAddr is the IP a worker's dispatcher session last came from,
	// as the manager holding it saw it: what Swarm shows as a worker's
	// Status.Addr. It is the manager's observation of the connection,
	// never the node's word; Addr stays what the node advertised (a
	// promotion is dialled there).
	SeenAddr string `json:"seenAddr,omitempty"`
	// KeyFP is the SHA-256 of the public key (SPKI) the node's latest
	// certificate was issued for: a join under a recorded ID is admitted
	// only with that key (a retry, or a node that left and kept its key),
	// since the ID is otherwise another node's identity. Empty on records
	// made before it was kept, which no join can then take over.
	KeyFP string `json:"keyFP,omitempty"`
	// Status is the node's liveness as the orchestrator's leader last
	// recorded it (nil: never recorded, e.g. just joined).
	Status *Status `json:"status,omitempty"`
	// Description is what the node last reported of itself (nil: nothing
	// yet): placement reads it for every node but the leader's own.
	Description *Description `json:"description,omitempty"`
	Version     uint64       `json:"-"`
}

// Status is a node's liveness: Ready while some manager vouches for it
// (see store.Presence), Down once none has for the heartbeat grace.
type Status struct {
	State   swarm.NodeState `json:"state"`
	Message string          `json:"message,omitempty"`
}

// Description is what a node says of itself: its platform, its engine's
// labels and version, and what it offers to resource reservations.
type Description struct {
	OS            string            `json:"os,omitempty"`
	Arch          string            `json:"arch,omitempty"`
	EngineVersion string            `json:"engineVersion,omitempty"`
	EngineLabels  map[string]string `json:"engineLabels,omitempty"`
	NanoCPUs      int64             `json:"nanoCPUs,omitempty"`
	MemoryBytes   int64             `json:"memoryBytes,omitempty"`
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

// SetKeyFP records fp as the key node id's latest certificate was issued
// for (renewal and role changes certify new keys). A record changed
// meanwhile is read again, a few times at most.
func SetKeyFP(ctx context.Context, st *store.Store, id, fp string) error {
	for range 5 {
		n, err := Get(ctx, st, id)
		if err != nil {
			return err
		}
		if n.KeyFP == fp {
			return nil
		}
		n.KeyFP = fp
		val, _ := json.Marshal(&n)
		_, err = st.Table(table).UpdateGuarded(ctx, id, int64(n.Version), val, nil)
		if !errors.Is(err, store.ErrStale) {
			return err
		}
	}
	return errdefs.OutOfSequence()
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
	return update(ctx, st, id, version, spec, false, nil)
}

// UpdateRole is Update on a cluster of several managers, where the role
// may change: the caller has checked that the membership allows it (see
// the daemon's role changes), and the record is what the nodes converge
// to. managers are the other nodes recorded as managers when the caller
// checked a demotion: the write is guarded on each being unchanged (a
// failed guard is ErrGuard), so two demotions checked at once against the
// same managers cannot both be recorded. extra are further guards of the
// caller's (no master-key rotation in progress).
func UpdateRole(ctx context.Context, st *store.Store, id string, version uint64, spec swarm.NodeSpec, managers []Node, extra ...store.Cond) error {
	guards := append([]store.Cond(nil), extra...)
	for _, m := range managers {
		guards = append(guards, store.AtRevision(st.Table(table).Key(m.ID), int64(m.Version)))
	}
	return update(ctx, st, id, version, spec, true, guards)
}

func update(ctx context.Context, st *store.Store, id string, version uint64, spec swarm.NodeSpec, roles bool, guards []store.Cond) error {
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
	_, err = st.Table(table).UpdateGuarded(ctx, id, int64(version), val, guards)
	if errors.Is(err, store.ErrStale) {
		return errdefs.OutOfSequence()
	}
	return err
}

// SetStatus records node id's liveness, only while l (the orchestrator's
// leadership, which runs the liveness loop) still holds: a deposed leader's
// write fails with store.ErrDeposed (a store.ErrGuard) and changes
// nothing; a record changed since it was read fails with store.ErrStale.
// An unchanged status writes nothing.
func SetStatus(ctx context.Context, st *store.Store, l *store.Leadership, id string, s Status) error {
	n, err := Get(ctx, st, id)
	if err != nil {
		return err
	}
	if n.Status != nil && *n.Status == s {
		return nil
	}
	n.Status = &s
	val, _ := json.Marshal(&n)
	_, err = st.Table(table).UpdateGuarded(ctx, id, int64(n.Version), val, []store.Cond{l.Guard()})
	return l.Explain(ctx, err)
}

// SetDescription records what node id reported of itself; an unchanged
// description writes nothing. Labels are bounded as a spec's are.
func SetDescription(ctx context.Context, st *store.Store, id string, d Description) error {
	return RecordSession(ctx, st, id, netip.Addr{}, &d)
}

// RecordSession records, in one write, what a session open of node id
// told: the address its connection came from (invalid: none known, the
// recorded one kept) and its description (nil: none given, the recorded
// one kept). Nothing unchanged is written, so a node reopening from the
// same place with the same description costs no write.
func RecordSession(ctx context.Context, st *store.Store, id string, seen netip.Addr, d *Description) error {
	if d != nil && len(d.EngineLabels) > MaxLabels {
		return errdefs.InvalidArgument("engine labels: %d entries exceed hush's limit of %d", len(d.EngineLabels), MaxLabels)
	}
	n, err := Get(ctx, st, id)
	if err != nil {
		return err
	}
	changed := false
	if d != nil && (n.Description == nil || !reflect.DeepEqual(*n.Description, *d)) {
		dc := *d
		n.Description, changed = &dc, true
	}
	// Only the IP, without a zone (an interface of the manager's own):
	// nothing the node chose but where it connects from.
	if seen.IsValid() {
		if a := seen.Unmap().WithZone("").String(); a != n.SeenAddr {
			n.SeenAddr, changed = a, true
		}
	}
	if !changed {
		return nil
	}
	val, _ := json.Marshal(&n)
	_, err = st.Table(table).Update(ctx, id, int64(n.Version), val)
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
