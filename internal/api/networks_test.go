package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/manager/networks"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/network"
)

// netEngine is a fake engine network backend for the manager.
type netEngine struct {
	mu   sync.Mutex
	nets map[string]networks.EngineSpec
}

func (e *netEngine) ListNetworks(_ context.Context, labels map[string]string) ([]networks.EngineNetwork, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []networks.EngineNetwork
	for id, s := range e.nets {
		ok := true
		for k, v := range labels {
			ok = ok && s.Labels[k] == v
		}
		if ok {
			out = append(out, networks.EngineNetwork{ID: id, Name: s.Name, Labels: s.Labels})
		}
	}
	return out, nil
}

func (e *netEngine) CreateNetwork(_ context.Context, s networks.EngineSpec) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := fmt.Sprintf("engnet%d", len(e.nets)+1)
	e.nets[id] = s
	return id, nil
}

func (e *netEngine) RemoveNetwork(_ context.Context, id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.nets, id)
	return nil
}

func (e *netEngine) InspectNetwork(_ context.Context, id string) (network.Inspect, error) {
	return network.Inspect{}, fmt.Errorf("no inspect in this fake")
}

// fakeDockerd records what reaches the fallback and answers a few network
// calls as the engine would.
type fakeDockerd struct {
	mu   sync.Mutex
	reqs []string // "METHOD path?query body"
}

const engineList = `[{"Name":"bridge","Id":"b1","Scope":"local","Driver":"bridge","Labels":{},"Custom":"kept"},` +
	`{"Name":"mylocal","Id":"l1","Scope":"local","Driver":"bridge","Labels":{"com.docker.stack.namespace":"app"}},` +
	`{"Name":"ov1","Id":"engnet1","Scope":"local","Driver":"bridge","Labels":{"io.hush.network.id":"x"}},` +
	`{"Name":"ingress","Id":"i1","Scope":"swarm","Driver":"overlay","Labels":{}}]`

func (f *fakeDockerd) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	line := r.Method + " " + r.URL.Path
	if r.URL.RawQuery != "" {
		line += "?" + r.URL.RawQuery
	}
	if len(b) > 0 {
		line += " " + string(b)
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, line)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1.41/networks":
		var items []map[string]any
		_ = json.Unmarshal([]byte(engineList), &items)
		var want string
		if fs := r.URL.Query().Get("filters"); fs != "" {
			var args map[string]map[string]bool
			_ = json.Unmarshal([]byte(fs), &args)
			for k := range args["name"] {
				want = strings.Trim(k, "^$")
			}
		}
		out := []map[string]any{}
		for _, it := range items {
			if want == "" || it["Name"] == want {
				out = append(out, it)
			}
		}
		_ = json.NewEncoder(w).Encode(out)
	case r.Method == http.MethodGet && r.URL.Path == "/v1.41/networks/bridge":
		_, _ = io.WriteString(w, `{"Name":"bridge","Id":"b1","Scope":"local","Custom":"kept"}`)
	case r.Method == http.MethodGet && r.URL.Path == "/v1.41/networks/mylocal":
		_, _ = io.WriteString(w, `{"Name":"mylocal","Id":"l1","Scope":"local"}`)
	case r.Method == http.MethodGet && r.URL.Path == "/v1.41/networks/engnet9":
		_, _ = io.WriteString(w, `{"Name":"x","Id":"engnet9","Scope":"local","Labels":{"io.hush.network.id":"abc"}}`)
	case r.Method == http.MethodGet:
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"message":"network not found"}`)
	default:
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, `{"message":"engine answered"}`)
	}
}

func (f *fakeDockerd) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.reqs
	f.reqs = nil
	return out
}

func newNetworkServer(t *testing.T) (*Server, *fakeDockerd, *netEngine) {
	t.Helper()
	st := storetest.New(t)
	mir := store.NewMirror(st)
	eng := &netEngine{nets: map[string]networks.EngineSpec{}}
	m := networks.New(networks.Config{Store: st, Mirror: mir, Engine: eng, NodeID: "node1"})
	storetest.RunMirror(t, mir)
	fd := &fakeDockerd{}
	s := New(Config{Fallback: fd, Node: Node{ID: "node1"}, Version: "test"})
	s.networkRoutes(m)
	return s, fd, eng
}

func serve(s *Server, method, path, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec
}

func TestNetworkCreateRouting(t *testing.T) {
	s, fd, eng := newNetworkServer(t)
	// A local network reaches the engine byte for byte, versioned path
	// included.
	local := `{"Name":"loc","Driver":"bridge","CheckDuplicate":true,"Options":{"x":"y"}}`
	rec := serve(s, "POST", "/v1.41/networks/create", local)
	if rec.Code != http.StatusTeapot {
		t.Fatalf("local create: %d %s", rec.Code, rec.Body)
	}
	if got := fd.take(); len(got) != 1 || got[0] != "POST /v1.41/networks/create "+local {
		t.Fatalf("engine saw %q", got)
	}
	// So does a body hush cannot read.
	serve(s, "POST", "/v1.41/networks/create", `{"Name":`)
	if got := fd.take(); len(got) != 1 || got[0] != `POST /v1.41/networks/create {"Name":` {
		t.Fatalf("engine saw %q", got)
	}
	// An overlay network is hush's; the engine is only asked about the
	// name (CheckDuplicate), and the network is realised.
	rec = serve(s, "POST", "/v1.41/networks/create", `{"Name":"ov1","Driver":"overlay","CheckDuplicate":true,"Labels":{"com.docker.stack.namespace":"app"}}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("overlay create: %d %s", rec.Code, rec.Body)
	}
	var cr network.CreateResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &cr); err != nil || len(cr.ID) != 25 {
		t.Fatalf("create response %s", rec.Body)
	}
	if got := fd.take(); len(got) != 1 || !strings.HasPrefix(got[0], "GET /v1.41/networks?filters=") {
		t.Fatalf("engine saw %q", got)
	}
	if len(eng.nets) != 1 {
		t.Fatalf("not realised: %v", eng.nets)
	}
	// The name of an engine network: dockerd's duplicate check.
	rec = serve(s, "POST", "/v1.41/networks/create", `{"Name":"mylocal","Driver":"overlay","CheckDuplicate":true}`)
	if rec.Code != http.StatusConflict || msgOf(t, rec.Body.String()) != "network with name mylocal already exists" {
		t.Fatalf("duplicate of a local name: %d %s", rec.Code, rec.Body)
	}
	// Predefined names are refused before the engine is asked.
	fd.take()
	rec = serve(s, "POST", "/networks/create", `{"Name":"none","Driver":"overlay"}`)
	if rec.Code != http.StatusForbidden || msgOf(t, rec.Body.String()) != "operation is not permitted on predefined none network " {
		t.Fatalf("none: %d %s", rec.Code, rec.Body)
	}
	if got := fd.take(); len(got) != 0 {
		t.Fatalf("engine asked about a predefined name: %q", got)
	}
}

func TestNetworkListMerge(t *testing.T) {
	s, fd, _ := newNetworkServer(t)
	if rec := serve(s, "POST", "/v1.41/networks/create", `{"Name":"ov1","Driver":"overlay","Labels":{"com.docker.stack.namespace":"app"}}`); rec.Code != http.StatusCreated {
		t.Fatal(rec.Body)
	}
	fd.take()
	rec := serve(s, "GET", "/v1.41/networks", "")
	var items []map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &items); err != nil || rec.Code != 200 {
		t.Fatalf("list: %d %s", rec.Code, rec.Body)
	}
	var got []string
	for _, it := range items {
		got = append(got, fmt.Sprintf("%s/%s", it["Name"], it["Scope"]))
	}
	// The realised bridge and the engine's own swarm networks are hidden;
	// the engine's items are relayed untouched.
	if strings.Join(got, ",") != "bridge/local,mylocal/local,ov1/swarm" {
		t.Fatalf("list: %v", got)
	}
	if items[0]["Custom"] != "kept" {
		t.Fatalf("engine item changed: %v", items[0])
	}
	// Filters reach the engine as sent and apply to hush's networks.
	fd.take()
	q := `filters=%7B%22label%22%3A%7B%22com.docker.stack.namespace%3Dapp%22%3Atrue%7D%7D`
	rec = serve(s, "GET", "/v1.41/networks?"+q, "")
	if reqs := fd.take(); len(reqs) != 1 || reqs[0] != "GET /v1.41/networks?"+q {
		t.Fatalf("engine saw %q", reqs)
	}
	if !strings.Contains(rec.Body.String(), `"Name":"ov1"`) {
		t.Fatalf("filtered list lacks ov1: %s", rec.Body)
	}
	rec = serve(s, "GET", `/v1.41/networks?filters={"nope":{"x":true}}`, "")
	if rec.Code != 400 || msgOf(t, rec.Body.String()) != "Invalid filter 'nope'" {
		t.Fatalf("bad filter: %d %s", rec.Code, rec.Body)
	}
}

func TestNetworkInspectRemoveRouting(t *testing.T) {
	s, fd, eng := newNetworkServer(t)
	rec := serve(s, "POST", "/v1.41/networks/create", `{"Name":"ov1","Driver":"overlay"}`)
	var cr network.CreateResponse
	_ = json.Unmarshal(rec.Body.Bytes(), &cr)
	fd.take()

	for _, ref := range []string{"ov1", cr.ID, cr.ID[:6]} {
		rec = serve(s, "GET", "/v1.41/networks/"+ref, "")
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"Scope":"swarm"`) {
			t.Fatalf("inspect %s: %d %s", ref, rec.Code, rec.Body)
		}
	}
	fd.take()
	rec = serve(s, "GET", "/v1.41/networks/bridge", "")
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"Custom":"kept"`) {
		t.Fatalf("engine inspect: %d %s", rec.Code, rec.Body)
	}
	// scope=swarm (service create's check) never shows a local network.
	fd.take()
	rec = serve(s, "GET", "/v1.41/networks/bridge?scope=swarm", "")
	if rec.Code != 404 || msgOf(t, rec.Body.String()) != "network bridge not found" {
		t.Fatalf("scope=swarm: %d %s", rec.Code, rec.Body)
	}
	if got := fd.take(); len(got) != 0 {
		t.Fatalf("engine asked with scope=swarm: %q", got)
	}
	// engnet9 realises hush network "abc", which does not exist here.
	rec = serve(s, "GET", "/v1.41/networks/engnet9", "")
	if rec.Code != 404 || msgOf(t, rec.Body.String()) != "network engnet9 not found" {
		t.Fatalf("realised network of a missing one: %d %s", rec.Code, rec.Body)
	}
	rec = serve(s, "GET", "/v1.41/networks/nosuch", "")
	if rec.Code != 404 || msgOf(t, rec.Body.String()) != "network nosuch not found" {
		t.Fatalf("unknown: %d %s", rec.Code, rec.Body)
	}
	// Remove: engine networks pass through, realised ones are refused,
	// hush's are removed with their engine network.
	fd.take()
	rec = serve(s, "DELETE", "/v1.41/networks/mylocal", "")
	if got := fd.take(); rec.Code != http.StatusTeapot || len(got) != 2 || got[1] != "DELETE /v1.41/networks/mylocal" {
		t.Fatalf("local remove: %d, engine saw %q", rec.Code, got)
	}
	rec = serve(s, "DELETE", "/v1.41/networks/engnet9", "")
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "realises hush network abc") {
		t.Fatalf("realised remove: %d %s", rec.Code, rec.Body)
	}
	rec = serve(s, "DELETE", "/v1.41/networks/ov1", "")
	if rec.Code != http.StatusNoContent {
		t.Fatalf("remove: %d %s", rec.Code, rec.Body)
	}
	if len(eng.nets) != 0 {
		t.Fatalf("engine network left: %v", eng.nets)
	}
}

func TestNetworkConnectAndPrune(t *testing.T) {
	s, fd, eng := newNetworkServer(t)
	serve(s, "POST", "/v1.41/networks/create", `{"Name":"ov1","Driver":"overlay","Attachable":true}`)
	var eid string
	for id := range eng.nets {
		eid = id
	}
	fd.take()
	body := `{"Container":"c1"}`
	serve(s, "POST", "/v1.41/networks/ov1/connect", body)
	if got := fd.take(); len(got) != 1 || got[0] != "POST /v1.41/networks/"+eid+"/connect "+body {
		t.Fatalf("connect: engine saw %q", got)
	}
	serve(s, "POST", "/v1.41/networks/mylocal/disconnect", body)
	if got := fd.take(); len(got) != 2 || got[1] != "POST /v1.41/networks/mylocal/disconnect "+body {
		t.Fatalf("local disconnect: engine saw %q", got)
	}
	serve(s, "POST", `/v1.41/networks/prune?filters={"until":{"1h":true}}`, "")
	got := fd.take()
	if len(got) != 1 || !strings.HasPrefix(got[0], "POST /v1.41/networks/prune?filters=") {
		t.Fatalf("prune: engine saw %q", got)
	}
	q := got[0][strings.Index(got[0], "?")+1:]
	req := httptest.NewRequest("GET", "/?"+q, nil)
	var f map[string]map[string]bool
	if err := json.Unmarshal([]byte(req.URL.Query().Get("filters")), &f); err != nil || !f["label!"]["io.hush.network.id"] || !f["until"]["1h"] {
		t.Fatalf("prune filters: %v %v", f, err)
	}
}
