package events

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/networks"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
)

// Scope is the scope of every event hush derives, as Swarm marks cluster
// events.
const Scope = "swarm"

// nodesTable is the store table of internal/manager/nodes (unexported there).
const nodesTable = "nodes"

// tables maps each watched store table to the event type of its objects.
var tables = map[string]events.Type{
	objects.Secret.Table: events.SecretEventType,
	objects.Config.Table: events.ConfigEventType,
	model.ServicesTable:  events.ServiceEventType,
	nodesTable:           events.NodeEventType,
	networks.Table:       events.NetworkEventType,
}

// view is what an event needs to know of one stored object: enough to name
// it and to tell which of the fields Swarm reports on an update changed.
// It never holds data, environment or any other spec content.
type view struct {
	name string
	// sum is the stored value's digest: a put that rewrote the same bytes
	// changed nothing a client could see, so it is no event.
	sum [sha256.Size]byte

	// Services. specSum digests the spec alone, to tell a spec change from
	// a status write.
	specSum     [sha256.Size]byte
	image       string
	replicated  bool
	replicas    uint64
	hasUpdate   bool
	updateState string

	// Nodes. state is the liveness the leader recorded, Swarm's zero
	// state "unknown" before any.
	availability string
	role         string
	state        string
}

// nameOnly is the part of a stored secret or config record an event uses
// (internal/manager/objects keeps its record type private; the JSON field is
// the stored format, checked against the real manager in the tests).
type nameOnly struct {
	Name string `json:"name"`
}

// decode reads the view of the object id of table from its stored value.
// hostname names a node whose spec carries no name, as Swarm falls back to
// the node's hostname.
func decode(table, id string, val []byte, hostname func(string) string) (view, error) {
	v := view{sum: sha256.Sum256(val)}
	bad := func(err error) (view, error) {
		return view{}, fmt.Errorf("events: decode %s %s: %w: %w", table, id, errdefs.ErrInternal, err)
	}
	switch table {
	case objects.Secret.Table, objects.Config.Table:
		var r nameOnly
		if err := json.Unmarshal(val, &r); err != nil {
			return bad(err)
		}
		v.name = r.Name
	case model.ServicesTable:
		var s model.Service
		if err := json.Unmarshal(val, &s); err != nil {
			return bad(err)
		}
		v.name = s.Spec.Name
		spec, err := json.Marshal(&s.Spec)
		if err != nil {
			return bad(err)
		}
		v.specSum = sha256.Sum256(spec)
		if cs := s.Spec.TaskTemplate.ContainerSpec; cs != nil {
			v.image = cs.Image
		}
		if r := s.Spec.Mode.Replicated; r != nil {
			v.replicated = true
			if r.Replicas != nil {
				v.replicas = *r.Replicas
			}
		}
		if u := s.UpdateStatus; u != nil {
			v.hasUpdate, v.updateState = true, string(u.State)
		}
	case nodesTable:
		var n nodes.Node
		if err := json.Unmarshal(val, &n); err != nil {
			return bad(err)
		}
		v.name = n.Spec.Name
		if v.name == "" && hostname != nil {
			v.name = hostname(id)
		}
		v.availability, v.role = string(n.Spec.Availability), string(n.Spec.Role)
		v.state = string(swarm.NodeStateUnknown)
		if n.Status != nil {
			v.state = string(n.Status.State)
		}
	case networks.Table:
		var n network.Network
		if err := json.Unmarshal(val, &n); err != nil {
			return bad(err)
		}
		v.name = n.Name
	default:
		return view{}, fmt.Errorf("events: table %q is not watched: %w", table, errdefs.ErrInternal)
	}
	return v, nil
}

// derive turns a change of the object id of table from old to cur (nil:
// absent) into Swarm's events, without their time; none when nothing
// changed.
//
// A service update that changes the spec and starts a rollout is one write
// in hush but two in Swarm (the spec, then the updater's status), so it
// becomes Swarm's two events: the spec's changes first, the update state
// second.
func derive(table, id string, old, cur *view) []events.Message {
	typ, watched := tables[table]
	if !watched || (old == nil && cur == nil) {
		return nil
	}
	m := events.Message{Type: typ, Scope: Scope, Actor: events.Actor{ID: id}}
	switch {
	case old == nil:
		m.Action = events.ActionCreate
		m.Actor.Attributes = map[string]string{"name": cur.name}
	case cur == nil:
		m.Action = events.ActionRemove
		m.Actor.Attributes = map[string]string{"name": old.name}
	default:
		if old.sum == cur.sum {
			return nil
		}
		m.Action = events.ActionUpdate
		m.Actor.Attributes = map[string]string{"name": cur.name}
		changes(typ, old, cur, m.Actor.Attributes)
		if typ == events.ServiceEventType && old.specSum != cur.specSum && updateChanged(old, cur) {
			spec := m
			spec.Actor.Attributes = map[string]string{"name": cur.name}
			for k, v := range m.Actor.Attributes {
				if !strings.HasPrefix(k, "updatestate.") {
					spec.Actor.Attributes[k] = v
				}
			}
			status := m
			status.Actor.Attributes = map[string]string{"name": cur.name}
			for k, v := range m.Actor.Attributes {
				if strings.HasPrefix(k, "updatestate.") {
					status.Actor.Attributes[k] = v
				}
			}
			return []events.Message{spec, status}
		}
	}
	return []events.Message{m}
}

// updateChanged reports whether Swarm would report the update state of a
// service update from old to cur.
func updateChanged(old, cur *view) bool {
	return cur.hasUpdate && (!old.hasUpdate || old.updateState != cur.updateState)
}

// changes adds the old/new attribute pairs Swarm puts on an update event.
func changes(typ events.Type, old, cur *view, attrs map[string]string) {
	pair := func(key, o, n string) {
		attrs[key+".old"], attrs[key+".new"] = o, n
	}
	switch typ {
	case events.ServiceEventType:
		if old.image != cur.image {
			pair("image", old.image, cur.image)
		}
		if old.replicated && cur.replicated && old.replicas != cur.replicas {
			pair("replicas", strconv.FormatUint(old.replicas, 10), strconv.FormatUint(cur.replicas, 10))
		}
		// Swarm reports the update state only when the new object has one:
		// its first appearance alone, a change as a pair.
		if updateChanged(old, cur) {
			if !old.hasUpdate {
				attrs["updatestate.new"] = cur.updateState
			} else {
				pair("updatestate", old.updateState, cur.updateState)
			}
		}
	case events.NodeEventType:
		if old.availability != cur.availability {
			pair("availability", old.availability, cur.availability)
		}
		if old.role != cur.role {
			pair("role", old.role, cur.role)
		}
		// A liveness change (the leader marking a node down or ready) is
		// reported as Swarm does; a new status message alone is not.
		if old.state != cur.state {
			pair("state", old.state, cur.state)
		}
	}
}
