package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

const testNodeID = "hldv7awwf7nu8ad508zi92dz2"

func newNodeServer(t *testing.T) *Server {
	t.Helper()
	st := storetest.New(t)
	mir := store.NewMirror(st)
	svcs := services.New(st, mir, nil)
	storetest.RunMirror(t, mir)
	if _, err := nodes.Ensure(context.Background(), st, testNodeID); err != nil {
		t.Fatal(err)
	}
	return New(Config{Services: svcs, Node: Node{ID: testNodeID, Addr: "127.0.0.1"}, Version: "test",
		EngineLabels: []string{"storage=ssd"}})
}

func nodeIDs(t *testing.T, body string) []string {
	t.Helper()
	var ns []swarm.Node
	if err := json.Unmarshal([]byte(body), &ns); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	ids := []string{}
	for _, n := range ns {
		ids = append(ids, n.ID)
	}
	return ids
}

func TestNodeListFilters(t *testing.T) {
	s := newNodeServer(t)
	tests := []struct {
		filters string
		code    int
		match   bool
		msg     string
	}{
		{``, 200, true, ""},
		{`{"role":{"worker":true}}`, 200, false, ""},
		{`{"role":{"manager":true}}`, 200, true, ""},
		{`{"membership":{"accepted":true}}`, 200, true, ""},
		{`{"membership":{"pending":true}}`, 200, false, ""},
		{`{"label":{"storage=ssd":true}}`, 200, true, ""},
		{`{"label":{"zone":true}}`, 200, false, ""},
		{`{"node.label":{"storage":true}}`, 200, false, ""},
		{`{"id":{"hldv":true}}`, 200, true, ""},
		{`{"id":{"zzz":true}}`, 200, false, ""},
		{`{"foo":{"x":true}}`, 400, false, "Invalid filter 'foo'"},
		{`{"role":{"bogus":true}}`, 400, false, "Invalid role filter: 'bogus'"},
		{`{"membership":{"bogus":true}}`, 400, false, "Invalid membership filter: 'bogus'"},
	}
	for _, tt := range tests {
		rec := serve(s, "GET", "/v1.41/nodes?filters="+url.QueryEscape(tt.filters), "")
		if rec.Code != tt.code {
			t.Errorf("%s: status %d, want %d: %s", tt.filters, rec.Code, tt.code, rec.Body)
			continue
		}
		if tt.code != 200 {
			if m := msgOf(t, rec.Body.String()); m != tt.msg {
				t.Errorf("%s: message %q, want %q", tt.filters, m, tt.msg)
			}
			continue
		}
		if ids := nodeIDs(t, rec.Body.String()); len(ids) == 1 != tt.match {
			t.Errorf("%s: got %v, want match=%v", tt.filters, ids, tt.match)
		}
	}
	// node.label follows `docker node update --label-add`.
	n := serve(s, "GET", "/nodes/"+testNodeID, "")
	var node swarm.Node
	if err := json.Unmarshal(n.Body.Bytes(), &node); err != nil {
		t.Fatal(err)
	}
	if node.Description.Engine.Labels["storage"] != "ssd" {
		t.Fatalf("engine labels %v", node.Description.Engine.Labels)
	}
	node.Spec.Labels = map[string]string{"zone": "a"}
	spec, _ := json.Marshal(node.Spec)
	if rec := serve(s, "POST", "/nodes/"+testNodeID+"/update?version="+strconv.FormatUint(node.Version.Index, 10), string(spec)); rec.Code != 200 {
		t.Fatalf("update: %d %s", rec.Code, rec.Body)
	}
	rec := serve(s, "GET", "/nodes?filters="+url.QueryEscape(`{"node.label":{"zone=a":true}}`), "")
	if ids := nodeIDs(t, rec.Body.String()); len(ids) != 1 {
		t.Fatalf("node.label=zone=a after update: %v", ids)
	}
	// The old version is now stale: a conflict, with Swarm's text.
	rec = serve(s, "POST", "/nodes/"+testNodeID+"/update?version="+strconv.FormatUint(node.Version.Index, 10), string(spec))
	if rec.Code != http.StatusConflict || msgOf(t, rec.Body.String()) != "rpc error: code = Unknown desc = update out of sequence" {
		t.Fatalf("stale node update: %d %s", rec.Code, rec.Body)
	}
}

func TestNodeRemoveAndInspect(t *testing.T) {
	s := newNodeServer(t)
	manager := "rpc error: code = FailedPrecondition desc = node " + testNodeID + " is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
	tests := []struct {
		method, ref string
		code        int
		msg         string
	}{
		{"DELETE", "foobar01", 404, "node foobar01 not found"},
		{"DELETE", "foobar01?force=1", 404, "node foobar01 not found"},
		{"DELETE", "HLDV", 404, "node HLDV not found"},
		{"DELETE", "hldv", 400, manager},
		{"DELETE", testNodeID + "?force=1", 400, manager},
		{"GET", "foobar01", 404, "node foobar01 not found"},
		{"GET", "hldv", 200, ""},
	}
	for _, tt := range tests {
		rec := serve(s, tt.method, "/v1.41/nodes/"+tt.ref, "")
		if rec.Code != tt.code {
			t.Errorf("%s %s: %d %s, want %d", tt.method, tt.ref, rec.Code, rec.Body, tt.code)
			continue
		}
		if tt.msg != "" && msgOf(t, rec.Body.String()) != tt.msg {
			t.Errorf("%s %s: %q, want %q", tt.method, tt.ref, msgOf(t, rec.Body.String()), tt.msg)
		}
	}
}

type noCluster struct{}

func (noCluster) Cluster(context.Context) (cluster.Cluster, error) {
	return cluster.Cluster{}, store.ErrNotFound
}

// fakeManagers is a cluster of three managers as the daemon reports it.
type fakeManagers struct{ down string }

func (f fakeManagers) Managers(context.Context) (*swarm.ManagerStatus, []swarm.Node, bool, error) {
	peer := func(id, addr string, leader bool) swarm.Node {
		n := swarm.Node{ID: id, Spec: swarm.NodeSpec{Role: swarm.NodeRoleManager, Availability: swarm.NodeAvailabilityActive},
			Status:        swarm.NodeStatus{State: swarm.NodeStateReady},
			ManagerStatus: &swarm.ManagerStatus{Leader: leader, Reachability: swarm.ReachabilityReachable, Addr: addr}}
		if id == f.down {
			n.Status.State, n.ManagerStatus.Reachability = swarm.NodeStateDown, swarm.ReachabilityUnreachable
		}
		return n
	}
	return &swarm.ManagerStatus{Reachability: swarm.ReachabilityReachable, Addr: "127.0.0.2:4000"},
		[]swarm.Node{peer("peer2aaaaaaaaaaaaaaaaaaaa", "127.0.0.3:4000", true), peer("peer3aaaaaaaaaaaaaaaaaaaa", "127.0.0.4:4000", false)}, true, nil
}

// On a manager of a cluster, node ls lists every manager with its status
// from the membership (this node is no longer always the Leader), the
// filters apply to all of them, and /info counts them.
func TestNodeListCluster(t *testing.T) {
	s := newNodeServer(t)
	s.Nodes = fakeManagers{down: "peer3aaaaaaaaaaaaaaaaaaaa"}
	s.Cluster = noCluster{}
	rec := serve(s, "GET", "/v1.41/nodes", "")
	var ns []swarm.Node
	if err := json.Unmarshal(rec.Body.Bytes(), &ns); err != nil || len(ns) != 3 {
		t.Fatalf("node ls: %v %s", err, rec.Body)
	}
	want := map[string]string{testNodeID: "false reachable 127.0.0.2:4000 ready", "peer2aaaaaaaaaaaaaaaaaaaa": "true reachable 127.0.0.3:4000 ready",
		"peer3aaaaaaaaaaaaaaaaaaaa": "false unreachable 127.0.0.4:4000 down"}
	for _, n := range ns {
		got := strconv.FormatBool(n.ManagerStatus.Leader) + " " + string(n.ManagerStatus.Reachability) + " " + n.ManagerStatus.Addr + " " + string(n.Status.State)
		if got != want[n.ID] {
			t.Errorf("%s: %q, want %q", n.ID, got, want[n.ID])
		}
	}
	rec = serve(s, "GET", "/v1.41/nodes?filters="+url.QueryEscape(`{"id":{"peer":true}}`), "")
	if ids := nodeIDs(t, rec.Body.String()); len(ids) != 2 {
		t.Errorf("id filter over the cluster: %v", ids)
	}
	rec = serve(s, "GET", "/v1.41/info", "")
	var info struct{ Swarm swarm.Info }
	if err := json.Unmarshal(rec.Body.Bytes(), &info); err != nil {
		t.Fatal(err)
	}
	if info.Swarm.Managers != 3 || info.Swarm.Nodes != 3 || len(info.Swarm.RemoteManagers) != 3 {
		t.Errorf("info: %d managers, %d nodes, %d remote managers; want 3 3 3", info.Swarm.Managers, info.Swarm.Nodes, len(info.Swarm.RemoteManagers))
	}
}

// The tasks' node filter names one node as Swarm's getNode does (full ID,
// hostname, unique ID prefix) and lists only that node's tasks, this
// node's included; a name matching none is Swarm's not-found, several its
// ambiguity error.
func TestTaskListNodeFilter(t *testing.T) {
	s := newNodeServer(t)
	s.Nodes = fakeManagers{}
	s.Cluster = noCluster{}
	for _, node := range []string{testNodeID, "peer2aaaaaaaaaaaaaaaaaaaa", "peer3aaaaaaaaaaaaaaaaaaaa"} {
		task := model.Task{}
		task.ID, task.ServiceID, task.NodeID = "t-"+node, "svc1", node
		b, _ := json.Marshal(&task)
		if _, err := s.Services.Store().Table(model.TasksTable).Create(context.Background(), task.ID, "", b); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		ref  string
		code int
		want string // the one task's node, or the error message
	}{
		{testNodeID, 200, testNodeID},
		{testNodeID[:6], 200, testNodeID},
		{hostname(), 200, testNodeID},
		{"peer2aaaaaaaaaaaaaaaaaaaa", 200, "peer2aaaaaaaaaaaaaaaaaaaa"},
		{"peer3", 200, "peer3aaaaaaaaaaaaaaaaaaaa"},
		{"peer", 400, "node peer is ambiguous (2 matches found)"},
		{"nosuch", 404, "node nosuch not found"},
		{"self", 200, testNodeID},
	} {
		var got []string
		var rec *httptest.ResponseRecorder
		deadline := time.Now().Add(10 * time.Second)
		for {
			rec = serve(s, "GET", "/v1.41/tasks?filters="+url.QueryEscape(`{"node":{"`+tt.ref+`":true}}`), "")
			got = nil
			var ts []swarm.Task
			if rec.Code == 200 {
				if err := json.Unmarshal(rec.Body.Bytes(), &ts); err != nil {
					t.Fatal(err)
				}
			}
			for _, x := range ts {
				got = append(got, x.NodeID)
			}
			// The mirror catches up with the store asynchronously.
			if rec.Code != 200 || len(got) > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if rec.Code != tt.code {
			t.Errorf("node=%s: status %d, want %d: %s", tt.ref, rec.Code, tt.code, rec.Body)
			continue
		}
		if tt.code != 200 {
			if m := msgOf(t, rec.Body.String()); m != tt.want {
				t.Errorf("node=%s: message %q, want %q", tt.ref, m, tt.want)
			}
			continue
		}
		if len(got) != 1 || got[0] != tt.want {
			t.Errorf("node=%s: tasks on %v, want one on %s", tt.ref, got, tt.want)
		}
	}
}

// On a manager of a cluster, node inspect of this node (by "self" or its
// ID) gives the membership's manager status as node ls does: not Leader
// when another manager leads, and the address others join at, which the
// CLI prints in `docker swarm join-token` (it used to say Leader and port
// 2377 whatever the listen address).
func TestNodeInspectSelfCluster(t *testing.T) {
	s := newNodeServer(t)
	s.Nodes = fakeManagers{}
	s.Cluster = noCluster{}
	for _, ref := range []string{"self", testNodeID} {
		rec := serve(s, "GET", "/v1.41/nodes/"+ref, "")
		var n swarm.Node
		if err := json.Unmarshal(rec.Body.Bytes(), &n); err != nil || rec.Code != 200 || n.ManagerStatus == nil {
			t.Fatalf("inspect %s: %d %s", ref, rec.Code, rec.Body)
		}
		if n.ManagerStatus.Leader || n.ManagerStatus.Addr != "127.0.0.2:4000" || n.ManagerStatus.Reachability != swarm.ReachabilityReachable {
			t.Errorf("inspect %s: manager status %+v, want a reachable follower at 127.0.0.2:4000", ref, *n.ManagerStatus)
		}
	}
}
