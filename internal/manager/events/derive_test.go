package events

import (
	"encoding/json"
	"maps"
	"testing"

	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
)

func jsonOf(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// service is a stored service with the fields events look at.
func service(name, image string, replicas *uint64, update swarm.UpdateState, env ...string) model.Service {
	var s model.Service
	s.ID = "svc1"
	s.Spec.Name = name
	s.Spec.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: image, Env: env}
	if replicas != nil {
		s.Spec.Mode.Replicated = &swarm.ReplicatedService{Replicas: replicas}
	} else {
		s.Spec.Mode.Global = &swarm.GlobalService{}
	}
	if update != "" {
		s.UpdateStatus = &swarm.UpdateStatus{State: update, Message: "update in progress"}
	}
	return s
}

func node(name string, avail swarm.NodeAvailability, role swarm.NodeRole, labels map[string]string) nodes.Node {
	return nodes.Node{ID: "node1", Spec: swarm.NodeSpec{
		Annotations: swarm.Annotations{Name: name, Labels: labels}, Availability: avail, Role: role,
	}}
}

// nodeIn is node with the liveness state the leader recorded ("" for
// none recorded yet).
func nodeIn(state swarm.NodeState, avail swarm.NodeAvailability) nodes.Node {
	n := node("n1", avail, swarm.NodeRoleWorker, nil)
	if state != "" {
		n.Status = &nodes.Status{State: state, Message: "heartbeat"}
	}
	return n
}

func u(n uint64) *uint64 { return &n }

// msg is an event of type typ: action on id with attribute pairs kv.
func msg(typ, action, id string, kv ...string) events.Message {
	attrs := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		attrs[kv[i]] = kv[i+1]
	}
	return events.Message{Type: events.Type(typ), Action: events.Action(action), Actor: events.Actor{ID: id, Attributes: attrs}}
}

func one(m events.Message) []events.Message { return []events.Message{m} }

func TestDerive(t *testing.T) {
	secret := func(name string, labels map[string]string) any {
		// The stored record of internal/manager/objects, as far as events
		// read it; TestSourceFromManagers checks the real one.
		return map[string]any{"id": "sec1", "name": name, "labels": labels, "sealed": map[string]string{"ct": "c2VhbGVk"}}
	}
	hostname := func(id string) string { return "host-of-" + id }
	tests := []struct {
		name     string
		table    string
		id       string
		old, cur any // nil: absent
		want     []events.Message
	}{
		{"secret create", "secrets", "sec1", nil, secret("db", nil),
			one(msg("secret", "create", "sec1", "name", "db"))},
		{"secret label update", "secrets", "sec1", secret("db", nil), secret("db", map[string]string{"a": "b"}),
			one(msg("secret", "update", "sec1", "name", "db"))},
		{"secret rewrite of the same bytes", "secrets", "sec1", secret("db", nil), secret("db", nil), nil},
		{"secret remove", "secrets", "sec1", secret("db", nil), nil,
			one(msg("secret", "remove", "sec1", "name", "db"))},
		{"config create", "configs", "cfg1", nil, map[string]any{"name": "app.conf"},
			one(msg("config", "create", "cfg1", "name", "app.conf"))},
		{"config remove", "configs", "cfg1", map[string]any{"name": "app.conf"}, nil,
			one(msg("config", "remove", "cfg1", "name", "app.conf"))},
		{"service create", "services", "svc1", nil, service("web", "busybox:1", u(1), "", "PASSWORD=hunter2"),
			one(msg("service", "create", "svc1", "name", "web"))},
		{"service scale", "services", "svc1", service("web", "busybox:1", u(1), ""), service("web", "busybox:1", u(2), ""),
			one(msg("service", "update", "svc1", "name", "web", "replicas.old", "1", "replicas.new", "2"))},
		{"service env change says only its name", "services", "svc1", service("web", "busybox:1", u(1), "", "A=1"), service("web", "busybox:1", u(1), "", "A=2"),
			one(msg("service", "update", "svc1", "name", "web"))},
		{"service image change starts an update", "services", "svc1", service("web", "busybox:1", u(1), ""), service("web", "busybox:2", u(1), swarm.UpdateStateUpdating),
			[]events.Message{
				msg("service", "update", "svc1", "name", "web", "image.old", "busybox:1", "image.new", "busybox:2"),
				msg("service", "update", "svc1", "name", "web", "updatestate.new", "updating"),
			}},
		{"service env change and the next rollout", "services", "svc1", service("web", "busybox:1", u(1), swarm.UpdateStateCompleted, "A=1"), service("web", "busybox:1", u(1), swarm.UpdateStateUpdating, "A=2"),
			[]events.Message{
				msg("service", "update", "svc1", "name", "web"),
				msg("service", "update", "svc1", "name", "web", "updatestate.old", "completed", "updatestate.new", "updating"),
			}},
		{"service status write alone", "services", "svc1", service("web", "busybox:1", u(1), swarm.UpdateStateUpdating), service("web", "busybox:1", u(1), swarm.UpdateStatePaused),
			one(msg("service", "update", "svc1", "name", "web", "updatestate.old", "updating", "updatestate.new", "paused"))},
		{"service update completes", "services", "svc1", service("web", "busybox:2", u(1), swarm.UpdateStateUpdating), service("web", "busybox:2", u(1), swarm.UpdateStateCompleted),
			one(msg("service", "update", "svc1", "name", "web", "updatestate.old", "updating", "updatestate.new", "completed"))},
		{"service update status cleared", "services", "svc1", service("web", "busybox:2", u(1), swarm.UpdateStateCompleted), service("web", "busybox:2", u(3), ""),
			one(msg("service", "update", "svc1", "name", "web", "replicas.old", "1", "replicas.new", "3"))},
		{"global service has no replicas", "services", "svc1", service("web", "busybox:1", nil, ""), service("web", "busybox:2", nil, ""),
			one(msg("service", "update", "svc1", "name", "web", "image.old", "busybox:1", "image.new", "busybox:2"))},
		{"service remove", "services", "svc1", service("web", "busybox:1", u(1), ""), nil,
			one(msg("service", "remove", "svc1", "name", "web"))},
		{"node create named by hostname", "nodes", "node1", nil, node("", swarm.NodeAvailabilityActive, swarm.NodeRoleManager, nil),
			one(msg("node", "create", "node1", "name", "host-of-node1"))},
		{"node label update", "nodes", "node1", node("", swarm.NodeAvailabilityActive, swarm.NodeRoleManager, nil), node("", swarm.NodeAvailabilityActive, swarm.NodeRoleManager, map[string]string{"a": "1"}),
			one(msg("node", "update", "node1", "name", "host-of-node1"))},
		{"node drain", "nodes", "node1", node("n1", swarm.NodeAvailabilityActive, swarm.NodeRoleManager, nil), node("n1", swarm.NodeAvailabilityDrain, swarm.NodeRoleManager, nil),
			one(msg("node", "update", "node1", "name", "n1", "availability.old", "active", "availability.new", "drain"))},
		{"node demote", "nodes", "node1", node("n1", swarm.NodeAvailabilityActive, swarm.NodeRoleManager, nil), node("n1", swarm.NodeAvailabilityActive, swarm.NodeRoleWorker, nil),
			one(msg("node", "update", "node1", "name", "n1", "role.old", "manager", "role.new", "worker"))},
		// Swarm's node events carry the liveness change (moby's
		// daemon/events.go compares Status.State), lower case; a node with
		// no recorded status is in Swarm's zero state, "unknown".
		{"node goes down", "nodes", "node1", nodeIn(swarm.NodeStateReady, swarm.NodeAvailabilityActive), nodeIn(swarm.NodeStateDown, swarm.NodeAvailabilityActive),
			one(msg("node", "update", "node1", "name", "n1", "state.old", "ready", "state.new", "down"))},
		{"node first heartbeat", "nodes", "node1", nodeIn("", swarm.NodeAvailabilityActive), nodeIn(swarm.NodeStateReady, swarm.NodeAvailabilityActive),
			one(msg("node", "update", "node1", "name", "n1", "state.old", "unknown", "state.new", "ready"))},
		{"node status message alone", "nodes", "node1", nodeIn(swarm.NodeStateDown, swarm.NodeAvailabilityActive), func() nodes.Node {
			n := nodeIn(swarm.NodeStateDown, swarm.NodeAvailabilityActive)
			n.Status.Message = "heartbeat failure"
			return n
		}(), one(msg("node", "update", "node1", "name", "n1"))},
		{"node drained while down", "nodes", "node1", nodeIn(swarm.NodeStateReady, swarm.NodeAvailabilityActive), nodeIn(swarm.NodeStateDown, swarm.NodeAvailabilityDrain),
			one(msg("node", "update", "node1", "name", "n1", "availability.old", "active", "availability.new", "drain", "state.old", "ready", "state.new", "down"))},
		{"network create", "networks", "net1", nil, network.Network{ID: "net1", Name: "app_default", Driver: "overlay", Scope: "swarm"},
			one(msg("network", "create", "net1", "name", "app_default"))},
		{"network update", "networks", "net1", network.Network{ID: "net1", Name: "app_default"}, network.Network{ID: "net1", Name: "app_default", Labels: map[string]string{"x": "y"}},
			one(msg("network", "update", "net1", "name", "app_default"))},
		{"network remove", "networks", "net1", network.Network{ID: "net1", Name: "app_default"}, nil,
			one(msg("network", "remove", "net1", "name", "app_default"))},
		{"unwatched table", "tasks", "t1", nil, map[string]any{"id": "t1"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			view := func(v any) *view {
				if v == nil {
					return nil
				}
				if _, ok := tables[tt.table]; !ok {
					return nil
				}
				got, err := decode(tt.table, tt.id, jsonOf(t, v), hostname)
				if err != nil {
					t.Fatal(err)
				}
				return &got
			}
			got := derive(tt.table, tt.id, view(tt.old), view(tt.cur))
			if len(got) != len(tt.want) {
				t.Fatalf("got %d events %+v, want %d %+v", len(got), got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				g := got[i]
				if g.Type != w.Type || g.Action != w.Action || g.Scope != "swarm" ||
					g.Actor.ID != w.Actor.ID || !maps.Equal(g.Actor.Attributes, w.Actor.Attributes) {
					t.Fatalf("event %d: got  %+v\nwant %+v", i, g, w)
				}
			}
		})
	}
}

func TestDecodeRefusesGarbage(t *testing.T) {
	for table := range tables {
		if _, err := decode(table, "x", []byte("{not json"), nil); err == nil {
			t.Errorf("%s: garbage decoded", table)
		}
	}
}
