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

func u(n uint64) *uint64 { return &n }

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
		want     *events.Message
	}{
		{"secret create", "secrets", "sec1", nil, secret("db", nil),
			&events.Message{Type: "secret", Action: "create", Actor: events.Actor{ID: "sec1", Attributes: map[string]string{"name": "db"}}}},
		{"secret label update", "secrets", "sec1", secret("db", nil), secret("db", map[string]string{"a": "b"}),
			&events.Message{Type: "secret", Action: "update", Actor: events.Actor{ID: "sec1", Attributes: map[string]string{"name": "db"}}}},
		{"secret rewrite of the same bytes", "secrets", "sec1", secret("db", nil), secret("db", nil), nil},
		{"secret remove", "secrets", "sec1", secret("db", nil), nil,
			&events.Message{Type: "secret", Action: "remove", Actor: events.Actor{ID: "sec1", Attributes: map[string]string{"name": "db"}}}},
		{"config create", "configs", "cfg1", nil, map[string]any{"name": "app.conf"},
			&events.Message{Type: "config", Action: "create", Actor: events.Actor{ID: "cfg1", Attributes: map[string]string{"name": "app.conf"}}}},
		{"config remove", "configs", "cfg1", map[string]any{"name": "app.conf"}, nil,
			&events.Message{Type: "config", Action: "remove", Actor: events.Actor{ID: "cfg1", Attributes: map[string]string{"name": "app.conf"}}}},
		{"service create", "services", "svc1", nil, service("web", "busybox:1", u(1), "", "PASSWORD=hunter2"),
			&events.Message{Type: "service", Action: "create", Actor: events.Actor{ID: "svc1", Attributes: map[string]string{"name": "web"}}}},
		{"service scale", "services", "svc1", service("web", "busybox:1", u(1), ""), service("web", "busybox:1", u(2), ""),
			&events.Message{Type: "service", Action: "update", Actor: events.Actor{ID: "svc1", Attributes: map[string]string{
				"name": "web", "replicas.old": "1", "replicas.new": "2"}}}},
		{"service env change says only its name", "services", "svc1", service("web", "busybox:1", u(1), "", "A=1"), service("web", "busybox:1", u(1), "", "A=2"),
			&events.Message{Type: "service", Action: "update", Actor: events.Actor{ID: "svc1", Attributes: map[string]string{"name": "web"}}}},
		{"service image change starts an update", "services", "svc1", service("web", "busybox:1", u(1), ""), service("web", "busybox:2", u(1), swarm.UpdateStateUpdating),
			&events.Message{Type: "service", Action: "update", Actor: events.Actor{ID: "svc1", Attributes: map[string]string{
				"name": "web", "image.old": "busybox:1", "image.new": "busybox:2", "updatestate.new": "updating"}}}},
		{"service update completes", "services", "svc1", service("web", "busybox:2", u(1), swarm.UpdateStateUpdating), service("web", "busybox:2", u(1), swarm.UpdateStateCompleted),
			&events.Message{Type: "service", Action: "update", Actor: events.Actor{ID: "svc1", Attributes: map[string]string{
				"name": "web", "updatestate.old": "updating", "updatestate.new": "completed"}}}},
		{"service update status cleared", "services", "svc1", service("web", "busybox:2", u(1), swarm.UpdateStateCompleted), service("web", "busybox:2", u(3), ""),
			&events.Message{Type: "service", Action: "update", Actor: events.Actor{ID: "svc1", Attributes: map[string]string{
				"name": "web", "replicas.old": "1", "replicas.new": "3"}}}},
		{"global service has no replicas", "services", "svc1", service("web", "busybox:1", nil, ""), service("web", "busybox:2", nil, ""),
			&events.Message{Type: "service", Action: "update", Actor: events.Actor{ID: "svc1", Attributes: map[string]string{
				"name": "web", "image.old": "busybox:1", "image.new": "busybox:2"}}}},
		{"service remove", "services", "svc1", service("web", "busybox:1", u(1), ""), nil,
			&events.Message{Type: "service", Action: "remove", Actor: events.Actor{ID: "svc1", Attributes: map[string]string{"name": "web"}}}},
		{"node create named by hostname", "nodes", "node1", nil, node("", swarm.NodeAvailabilityActive, swarm.NodeRoleManager, nil),
			&events.Message{Type: "node", Action: "create", Actor: events.Actor{ID: "node1", Attributes: map[string]string{"name": "host-of-node1"}}}},
		{"node label update", "nodes", "node1", node("", swarm.NodeAvailabilityActive, swarm.NodeRoleManager, nil), node("", swarm.NodeAvailabilityActive, swarm.NodeRoleManager, map[string]string{"a": "1"}),
			&events.Message{Type: "node", Action: "update", Actor: events.Actor{ID: "node1", Attributes: map[string]string{"name": "host-of-node1"}}}},
		{"node drain", "nodes", "node1", node("n1", swarm.NodeAvailabilityActive, swarm.NodeRoleManager, nil), node("n1", swarm.NodeAvailabilityDrain, swarm.NodeRoleManager, nil),
			&events.Message{Type: "node", Action: "update", Actor: events.Actor{ID: "node1", Attributes: map[string]string{
				"name": "n1", "availability.old": "active", "availability.new": "drain"}}}},
		{"node demote", "nodes", "node1", node("n1", swarm.NodeAvailabilityActive, swarm.NodeRoleManager, nil), node("n1", swarm.NodeAvailabilityActive, swarm.NodeRoleWorker, nil),
			&events.Message{Type: "node", Action: "update", Actor: events.Actor{ID: "node1", Attributes: map[string]string{
				"name": "n1", "role.old": "manager", "role.new": "worker"}}}},
		{"network create", "networks", "net1", nil, network.Network{ID: "net1", Name: "app_default", Driver: "overlay", Scope: "swarm"},
			&events.Message{Type: "network", Action: "create", Actor: events.Actor{ID: "net1", Attributes: map[string]string{"name": "app_default"}}}},
		{"network update", "networks", "net1", network.Network{ID: "net1", Name: "app_default"}, network.Network{ID: "net1", Name: "app_default", Labels: map[string]string{"x": "y"}},
			&events.Message{Type: "network", Action: "update", Actor: events.Actor{ID: "net1", Attributes: map[string]string{"name": "app_default"}}}},
		{"network remove", "networks", "net1", network.Network{ID: "net1", Name: "app_default"}, nil,
			&events.Message{Type: "network", Action: "remove", Actor: events.Actor{ID: "net1", Attributes: map[string]string{"name": "app_default"}}}},
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
			got, ok := derive(tt.table, tt.id, view(tt.old), view(tt.cur))
			if tt.want == nil {
				if ok {
					t.Fatalf("want no event, got %+v", got)
				}
				return
			}
			if !ok {
				t.Fatal("want an event, got none")
			}
			tt.want.Scope = "swarm"
			if got.Type != tt.want.Type || got.Action != tt.want.Action || got.Scope != tt.want.Scope ||
				got.Actor.ID != tt.want.Actor.ID || !maps.Equal(got.Actor.Attributes, tt.want.Actor.Attributes) {
				t.Fatalf("got  %+v\nwant %+v", got, *tt.want)
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
