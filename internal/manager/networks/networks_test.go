package networks

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
)

// fakeEngine is an in-memory engine with failure injection.
type fakeEngine struct {
	mu      sync.Mutex
	nets    map[string]EngineSpec
	seq     int
	creates int
	// createErr fails the next creates (one per entry); inUse makes
	// removals of these IDs fail as while containers are attached.
	createErr []error
	inUse     map[string]bool
	dupNames  bool // refuse duplicate names, as engines since API 1.44 do
	local     map[string]bool
}

func newFakeEngine() *fakeEngine {
	return &fakeEngine{nets: map[string]EngineSpec{}, inUse: map[string]bool{}, local: map[string]bool{}}
}

func (f *fakeEngine) ListNetworks(_ context.Context, labels map[string]string) ([]EngineNetwork, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []EngineNetwork
	for id, s := range f.nets {
		ok := true
		for k, v := range labels {
			ok = ok && s.Labels[k] == v
		}
		if ok {
			out = append(out, EngineNetwork{ID: id, Name: s.Name, Labels: maps.Clone(s.Labels)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *fakeEngine) CreateNetwork(_ context.Context, s EngineSpec) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.createErr) > 0 {
		err := f.createErr[0]
		f.createErr = f.createErr[1:]
		return "", err
	}
	if f.dupNames {
		for _, have := range f.nets {
			if have.Name == s.Name {
				return "", fmt.Errorf("network with name %s already exists: %w", s.Name, ErrEngineConflict)
			}
		}
	}
	f.seq++
	f.creates++
	id := fmt.Sprintf("e%063d", f.seq)
	f.nets[id] = s
	return id, nil
}

func (f *fakeEngine) RemoveNetwork(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inUse[id] {
		return fmt.Errorf("network %s has active endpoints: %w", id, ErrEngineInUse)
	}
	delete(f.nets, id)
	return nil
}

func (f *fakeEngine) InspectNetwork(_ context.Context, id string) (network.Inspect, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.nets[id]
	if !ok {
		return network.Inspect{}, errors.New("not found")
	}
	return network.Inspect{Network: network.Network{ID: id, Name: s.Name, Labels: s.Labels, IPAM: network.IPAM{
		Config: []network.IPAMConfig{{Subnet: netip.MustParsePrefix("172.30.0.0/16"), Gateway: netip.MustParseAddr("172.30.0.1")}},
	}}}, nil
}

func (f *fakeEngine) NetworksNamed(_ context.Context, name string) ([]EngineNetwork, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []EngineNetwork
	for id, s := range f.nets {
		if s.Name == name {
			out = append(out, EngineNetwork{ID: id, Name: s.Name, Labels: maps.Clone(s.Labels)})
		}
	}
	return out, nil
}

func (f *fakeEngine) IsLocalNetwork(_ context.Context, ref string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.local[ref]
}

// byHush returns the engine networks realising hush network id.
func (f *fakeEngine) byHush(id string) []EngineSpec {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []EngineSpec
	for _, s := range f.nets {
		if s.Labels[LabelNetworkID] == id {
			out = append(out, s)
		}
	}
	return out
}

func (f *fakeEngine) idOf(hushID string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, s := range f.nets {
		if s.Labels[LabelNetworkID] == hushID {
			return id
		}
	}
	return ""
}

type env struct {
	st  *store.Store
	m   *Manager
	eng *fakeEngine
}

func newEnv(t *testing.T, withEngine bool) *env {
	t.Helper()
	st := storetest.New(t)
	mir := store.NewMirror(st)
	e := &env{st: st}
	cfg := Config{Store: st, Mirror: mir, NodeID: "node1"}
	if withEngine {
		e.eng = newFakeEngine()
		cfg.Engine = e.eng
	}
	e.m = New(cfg)
	storetest.RunMirror(t, mir)
	return e
}

func overlay(name string) network.CreateRequest {
	return network.CreateRequest{Name: name, Driver: DriverOverlay}
}

func (e *env) mustCreate(t *testing.T, req network.CreateRequest) string {
	t.Helper()
	id, err := e.m.Create(context.Background(), req)
	if err != nil {
		t.Fatalf("create %s: %v", req.Name, err)
	}
	return id
}

// wire renders an error as the API edge does (control errors with the rpc
// prefix).
func wire(err error) string {
	var e *errdefs.Error
	if errors.As(err, &e) && e.Control {
		code := map[bool]string{true: "InvalidArgument"}[errors.Is(err, errdefs.ErrInvalidArgument)]
		switch {
		case errors.Is(err, errdefs.ErrConflict):
			code = "FailedPrecondition"
		case errors.Is(err, errdefs.ErrInternal):
			code = "Unknown"
		}
		return "rpc error: code = " + code + " desc = " + e.Msg
	}
	return err.Error()
}

func TestCreateValidation(t *testing.T) {
	e := newEnv(t, false)
	e.mustCreate(t, overlay("taken"))
	long := strings.Repeat("a", 64)
	tests := []struct {
		req  network.CreateRequest
		want string
		cat  error
	}{
		{overlay(""), "invalid name: ", errdefs.ErrInvalidArgument},
		{overlay("none"), "operation is not permitted on predefined none network ", errdefs.ErrForbidden},
		{overlay("default"), "operation is not permitted on predefined default network ", errdefs.ErrForbidden},
		{overlay("bridge"), "network with name bridge already exists", errdefs.ErrAlreadyExists},
		{overlay("host"), "network with name host already exists", errdefs.ErrAlreadyExists},
		{overlay("a.b"), "rpc error: code = InvalidArgument desc = name must be valid as a DNS name component", errdefs.ErrInvalidArgument},
		{overlay("a_"), "rpc error: code = InvalidArgument desc = name must be valid as a DNS name component", errdefs.ErrInvalidArgument},
		{overlay("-a"), "rpc error: code = InvalidArgument desc = name must be valid as a DNS name component", errdefs.ErrInvalidArgument},
		{overlay(long), "rpc error: code = InvalidArgument desc = name must be 63 characters or fewer", errdefs.ErrInvalidArgument},
		{network.CreateRequest{Name: "x", Scope: ScopeSwarm}, "rpc error: code = InvalidArgument desc = driver name: if driver is specified name is required", errdefs.ErrInvalidArgument},
		{overlay("taken"), "network with name taken already exists", errdefs.ErrAlreadyExists},
		{overlay("TAKEN"), "rpc error: code = Unknown desc = name conflicts with an existing object", errdefs.ErrInternal},
		{network.CreateRequest{Name: "ing", Driver: DriverOverlay, Ingress: true}, "rpc error: code = InvalidArgument desc = ingress networks are not supported by hush: it has no routing mesh", errdefs.ErrInvalidArgument},
		{network.CreateRequest{Name: "mv", Driver: "macvlan", Scope: ScopeSwarm}, `rpc error: code = InvalidArgument desc = network driver "macvlan" is not supported by hush: swarm networks are overlay (realised as bridge networks on the host)`, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		_, err := e.m.Create(context.Background(), tt.req)
		if err == nil {
			t.Errorf("create %q: no error, want %q", tt.req.Name, tt.want)
			continue
		}
		if got := wire(err); got != tt.want {
			t.Errorf("create %q: %q, want %q", tt.req.Name, got, tt.want)
		}
		if !errors.Is(err, tt.cat) {
			t.Errorf("create %q: category of %v is not %v", tt.req.Name, err, tt.cat)
		}
	}
	// Valid names: '_' and '-' between alphanumerics, 63 characters.
	for _, name := range []string{"a_b-c", "a--b", strings.Repeat("b", 63), "app_default"} {
		e.mustCreate(t, overlay(name))
	}
	// A swarm-scoped bridge is Swarm's too.
	e.mustCreate(t, network.CreateRequest{Name: "swbr", Driver: "bridge", Scope: ScopeSwarm})
}

func TestOwns(t *testing.T) {
	for _, tt := range []struct {
		req  network.CreateRequest
		want bool
	}{
		{network.CreateRequest{Driver: "overlay"}, true},
		{network.CreateRequest{Driver: "bridge", Scope: "swarm"}, true},
		{network.CreateRequest{Scope: "swarm"}, true},
		{network.CreateRequest{Driver: "bridge"}, false},
		{network.CreateRequest{}, false},
		{network.CreateRequest{Driver: "macvlan", Scope: "local"}, false},
	} {
		if got := Owns(&tt.req); got != tt.want {
			t.Errorf("Owns(%+v) = %v", tt.req, got)
		}
	}
}

func TestCreateEchoAndRealise(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	req := network.CreateRequest{
		Name: "app_default", Driver: DriverOverlay, Attachable: true, Internal: true,
		Labels:  map[string]string{"com.docker.stack.namespace": "app"},
		Options: map[string]string{"encrypted": ""},
		IPAM:    &network.IPAM{Config: []network.IPAMConfig{{Subnet: netip.MustParsePrefix("10.77.0.0/24")}}},
	}
	id := e.mustCreate(t, req)
	n, err := e.m.Inspect(ctx, "app_default")
	if err != nil {
		t.Fatal(err)
	}
	if n.ID != id || n.Name != "app_default" || n.Scope != "swarm" || n.Driver != "overlay" || !n.Attachable || !n.Internal ||
		n.Labels["com.docker.stack.namespace"] != "app" || n.Options["encrypted"] != "" || len(n.Options) != 1 ||
		n.IPAM.Driver != "default" || len(n.IPAM.Config) != 1 || n.IPAM.Config[0].Subnet.String() != "10.77.0.0/24" {
		t.Fatalf("inspect does not echo the request: %+v", n)
	}
	real := e.eng.byHush(id)
	if len(real) != 1 {
		t.Fatalf("want 1 engine network for %s, have %+v", id, real)
	}
	s := real[0]
	if s.Name != "app_default" || s.Labels[LabelNetworkID] != id || s.Labels[LabelNodeID] != "node1" ||
		s.Labels["com.docker.stack.namespace"] != "app" || !s.Internal || s.IPAM == nil || s.IPAM.Config[0].Subnet.String() != "10.77.0.0/24" {
		t.Fatalf("engine network: %+v", s)
	}
	// Without subnets of its own, inspect shows the realised ones.
	id2 := e.mustCreate(t, overlay("plain"))
	n2, err := e.m.Inspect(ctx, id2[:6])
	if err != nil {
		t.Fatal(err)
	}
	if len(n2.IPAM.Config) != 1 || n2.IPAM.Config[0].Subnet.String() != "172.30.0.0/16" {
		t.Fatalf("realised subnets not shown: %+v", n2.IPAM)
	}
	if got := e.eng.byHush(id2); len(got) != 1 || got[0].IPAM != nil {
		t.Fatalf("plain network realised as %+v", got)
	}
}

func TestCreateEngineRefusalUndoes(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	e.eng.createErr = []error{errors.New("Pool overlaps with other one on this address space")}
	_, err := e.m.Create(ctx, overlay("overlapping"))
	if err == nil || !strings.Contains(err.Error(), "Pool overlaps") || !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("want the engine's refusal, got %v", err)
	}
	if _, err := e.m.Resolve(ctx, "overlapping"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("refused network still stored: %v", err)
	}
	e.mustCreate(t, overlay("overlapping")) // the name is free again

	// An engine that does not answer keeps the network; the reconciler
	// realises it later.
	e.eng.createErr = []error{fmt.Errorf("dial: %w", ErrEngineUnavailable)}
	id := e.mustCreate(t, overlay("later"))
	if len(e.eng.byHush(id)) != 0 {
		t.Fatal("realised although the engine was down")
	}
	if pending, err := e.m.Reconcile(ctx); err != nil || pending {
		t.Fatalf("reconcile: pending %v, err %v", pending, err)
	}
	if len(e.eng.byHush(id)) != 1 {
		t.Fatal("reconcile did not realise the network")
	}
}

func TestRealiseNameConflictFallback(t *testing.T) {
	e := newEnv(t, true)
	e.eng.dupNames = true
	if _, err := e.eng.CreateNetwork(context.Background(), EngineSpec{Name: "web", Labels: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	id := e.mustCreate(t, overlay("web"))
	got := e.eng.byHush(id)
	if len(got) != 1 || got[0].Name != "web-"+id[:12] {
		t.Fatalf("want a suffixed engine name, have %+v", got)
	}
}

// TestRealiseBesideForeignSameName: on an engine that accepts duplicate
// names (API < 1.44, as Docker 20.10), a network of the stack's name that
// is not this hush network's (a user's, another hushd's, one left by an
// earlier hushd of another node ID) is never adopted, renamed or removed,
// and hush's own gets a name of its own, so no name is ever ambiguous.
func TestRealiseBesideForeignSameName(t *testing.T) {
	foreign := []struct {
		name   string
		labels map[string]string
	}{
		{"user's bridge", map[string]string{}},
		{"earlier hushd", map[string]string{LabelNetworkID: "oldnetworkid", LabelNodeID: "oldnode"}},
		{"another hushd, same network ID", nil}, // labels filled in below
	}
	for _, f := range foreign {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t, true)
			ctx := context.Background()
			id := e.mustCreate(t, overlay("app_default"))
			// Forget the realisation made at create: the foreign network
			// must be there first.
			for eid := range e.eng.nets {
				_ = e.eng.RemoveNetwork(ctx, eid)
			}
			labels := f.labels
			if labels == nil {
				labels = map[string]string{LabelNetworkID: id, LabelNodeID: "othernode"}
			}
			fid, err := e.eng.CreateNetwork(ctx, EngineSpec{Name: "app_default", Labels: labels})
			if err != nil {
				t.Fatal(err)
			}
			eid, err := e.m.Realise(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if eid == fid {
				t.Fatal("the foreign network was adopted")
			}
			mine, err := e.eng.InspectNetwork(ctx, eid)
			if err != nil {
				t.Fatal(err)
			}
			if mine.Name != "app_default-"+id[:12] || mine.Labels[LabelNetworkID] != id || mine.Labels[LabelNodeID] != "node1" {
				t.Fatalf("hush's engine network: name %q labels %v", mine.Name, mine.Labels)
			}
			// A task's node realises it as the same engine network, by ID.
			nets, _, err := e.m.TaskNetworks(ctx, []swarm.NetworkAttachmentConfig{{Target: id}}, "web")
			if err != nil || len(nets) != 1 {
				t.Fatalf("TaskNetworks = %v, %v", nets, err)
			}
			if got, err := e.m.real.Realise(ctx, "node1", nets[0]); err != nil || got != eid {
				t.Fatalf("Realise = %s, %v; want %s", got, err, eid)
			}
			// Removing the hush network removes only hush's engine network.
			if err := e.m.Remove(ctx, id); err != nil {
				t.Fatal(err)
			}
			if _, err := e.m.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			got, err := e.eng.NetworksNamed(ctx, "app_default")
			if err != nil || len(got) != 1 || got[0].ID != fid || !maps.Equal(got[0].Labels, labels) {
				t.Fatalf("foreign network after remove: %+v, %v", got, err)
			}
			if _, err := e.eng.InspectNetwork(ctx, eid); err == nil {
				t.Fatal("hush's engine network outlived its network")
			}
		})
	}
}

func TestListFilters(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	a := e.mustCreate(t, network.CreateRequest{Name: "app_default", Driver: DriverOverlay, Labels: map[string]string{"com.docker.stack.namespace": "app"}})
	b := e.mustCreate(t, network.CreateRequest{Name: "app_back", Driver: DriverOverlay, Labels: map[string]string{"com.docker.stack.namespace": "app", "tier": "db"}})
	c := e.mustCreate(t, network.CreateRequest{Name: "other", Driver: "bridge", Scope: ScopeSwarm})
	// a is used by a service.
	if err := e.st.Apply(ctx, RefOps("svc1", &swarm.ServiceSpec{TaskTemplate: swarm.TaskSpec{Networks: []swarm.NetworkAttachmentConfig{{Target: a}}}})...); err != nil {
		t.Fatal(err)
	}
	names := func(f Filters) string {
		t.Helper()
		l, err := e.m.List(ctx, f)
		if err != nil {
			t.Fatalf("list %v: %v", f, err)
		}
		var out []string
		for _, n := range l {
			out = append(out, n.Name)
		}
		return strings.Join(out, ",")
	}
	f := func(kv ...string) Filters {
		out := Filters{}
		for i := 0; i < len(kv); i += 2 {
			if out[kv[i]] == nil {
				out[kv[i]] = map[string]bool{}
			}
			out[kv[i]][kv[i+1]] = true
		}
		return out
	}
	for _, tt := range []struct {
		f    Filters
		want string
	}{
		{nil, "app_back,app_default,other"},
		{f("label", "com.docker.stack.namespace=app"), "app_back,app_default"},
		{f("label", "com.docker.stack.namespace=app", "label", "tier"), "app_back"},
		{f("label", "tier=web"), ""},
		{f("name", "app_"), "app_back,app_default"},
		{f("name", "^app_d"), "app_default"},
		{f("name", "default$", "name", "other"), "app_default,other"},
		{f("id", b[:5]), "app_back"},
		{f("id", c), "other"},
		{f("driver", "overlay"), "app_back,app_default"},
		{f("driver", "over"), ""},
		{f("scope", "swarm"), "app_back,app_default,other"},
		{f("scope", "local"), ""},
		{f("type", "custom"), "app_back,app_default,other"},
		{f("type", "builtin"), ""},
		{f("dangling", "true"), "app_back,other"},
		{f("dangling", "0"), "app_default"},
	} {
		if got := names(tt.f); got != tt.want {
			t.Errorf("filters %v: %q, want %q", tt.f, got, tt.want)
		}
	}
	for _, tt := range []struct {
		f    Filters
		want string
	}{
		{f("foo", "x"), "Invalid filter 'foo'"},
		{f("type", "xx"), "invalid filter: 'type'='xx'"},
		{f("dangling", "maybe"), `invalid value for filter 'dangling', must be "true" (or "1"), or "false" (or "0")`},
	} {
		_, err := e.m.List(ctx, tt.f)
		if err == nil || err.Error() != tt.want || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("filters %v: %v, want %q", tt.f, err, tt.want)
		}
	}
}

func TestResolve(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	id := e.mustCreate(t, overlay("Front"))
	for _, ref := range []string{id, "Front", id[:4]} {
		n, err := e.m.Resolve(ctx, ref)
		if err != nil || n.ID != id {
			t.Fatalf("resolve %q: %v %v", ref, n, err)
		}
	}
	// Names are unique case-insensitively but looked up exactly, as dockerd
	// does.
	if _, err := e.m.Resolve(ctx, "front"); err == nil || err.Error() != "network front not found" || !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("resolve by other case: %v", err)
	}
	if _, ok, err := e.m.LookupExact(ctx, "front"); ok || err != nil {
		t.Fatalf("LookupExact of another case: matched %v, err %v", ok, err)
	}
	if _, ok, err := e.m.LookupExact(ctx, id[:5]); ok || err != nil {
		t.Fatalf("LookupExact of a prefix: matched %v, err %v", ok, err)
	}
	// Ambiguous prefixes: force two IDs with a common prefix.
	e.m.newID = func() (string, error) { return "zzzz" + strings.Repeat("a", 21), nil }
	e.mustCreate(t, overlay("z1"))
	e.m.newID = func() (string, error) { return "zzzz" + strings.Repeat("b", 21), nil }
	e.mustCreate(t, overlay("z2"))
	if _, err := e.m.Resolve(ctx, "zzzz"); err == nil || err.Error() != "network zzzz is ambiguous (2 matches found)" {
		t.Fatalf("ambiguous: %v", err)
	}
}

func svcSpec(targets ...string) *swarm.ServiceSpec {
	s := &swarm.ServiceSpec{}
	s.Name = "app_web"
	for _, t := range targets {
		s.TaskTemplate.Networks = append(s.TaskTemplate.Networks, swarm.NetworkAttachmentConfig{Target: t, Aliases: []string{"web"}})
	}
	return s
}

func TestResolveAttachments(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	id := e.mustCreate(t, overlay("app_default"))
	e.eng.local["localnet"] = true

	s := svcSpec("app_default", id[:7], id)
	guards, err := e.m.ResolveAttachments(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range s.TaskTemplate.Networks {
		if a.Target != id {
			t.Fatalf("target not resolved to the ID: %+v", s.TaskTemplate.Networks)
		}
	}
	if len(guards) != 1 {
		t.Fatalf("want one guard per distinct network, have %d", len(guards))
	}
	_, err = e.m.ResolveAttachments(ctx, svcSpec("nosuch"))
	if err == nil || wire(err) != "network nosuch not found" || !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	_, err = e.m.ResolveAttachments(ctx, svcSpec("localnet"))
	if err == nil || wire(err) != "The network localnet cannot be used with services. Only networks scoped to the swarm can be used, such as those created with the overlay driver." || !errors.Is(err, errdefs.ErrForbidden) {
		t.Fatalf("local: %v", err)
	}
	// The guard fails a write once the network is gone.
	if err := e.m.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	held, err := e.st.Holds(ctx, guards...)
	if err != nil || held {
		t.Fatalf("guard held after removal: %v %v", held, err)
	}
}

func TestRemoveInUse(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	id := e.mustCreate(t, overlay("app_default"))
	other := e.mustCreate(t, overlay("app_other"))
	s1 := svcSpec(id)
	if err := e.st.Apply(ctx, RefOps("svcaaa", s1)...); err != nil {
		t.Fatal(err)
	}
	if err := e.st.Apply(ctx, RefOps("svcbbb", s1)...); err != nil {
		t.Fatal(err)
	}
	err := e.m.Remove(ctx, "app_default")
	want := "rpc error: code = FailedPrecondition desc = network " + id + " is in use by service svcaaa"
	if err == nil || wire(err) != want {
		t.Fatalf("remove in use: %v, want %q", err, want)
	}
	// An update moving svcaaa to the other network; svcbbb drops it.
	ops := RefDiffOps("svcaaa", s1, svcSpec(other))
	keys := map[string]bool{}
	for _, op := range ops {
		if keys[op.Key()] {
			t.Fatalf("duplicate key in txn: %s", op.Key())
		}
		keys[op.Key()] = true
	}
	if err := e.st.Apply(ctx, ops...); err != nil {
		t.Fatal(err)
	}
	// Same spec before and after: put only, no delete of the same key.
	same := RefDiffOps("svcbbb", s1, s1)
	if len(same) != 1 || !same[0].IsPut() {
		t.Fatalf("unchanged spec: %d ops", len(same))
	}
	if err := e.m.Remove(ctx, id); err == nil || !strings.Contains(wire(err), "in use by service svcbbb") {
		t.Fatalf("still used by svcbbb: %v", err)
	}
	if err := e.st.Apply(ctx, DropRefOps("svcbbb", s1)...); err != nil {
		t.Fatal(err)
	}
	// Containers still attached: the object goes now, the engine network
	// when the reconciler finds it free.
	eid := e.eng.idOf(id)
	e.eng.mu.Lock()
	e.eng.inUse[eid] = true
	e.eng.mu.Unlock()
	if err := e.m.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Resolve(ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("removed network resolves: %v", err)
	}
	if len(e.eng.byHush(id)) != 1 {
		t.Fatal("engine network removed while in use")
	}
	if pending, err := e.m.Reconcile(ctx); !pending || err != nil {
		t.Fatalf("reconcile: want pending (and no error) while the engine network is in use, got %v, %v", pending, err)
	}
	e.eng.mu.Lock()
	delete(e.eng.inUse, eid)
	e.eng.mu.Unlock()
	if pending, err := e.m.Reconcile(ctx); pending || err != nil {
		t.Fatalf("reconcile: pending %v, err %v", pending, err)
	}
	if len(e.eng.byHush(id)) != 0 {
		t.Fatal("engine network not removed")
	}
	if err := e.m.Remove(ctx, other); err == nil || !strings.Contains(wire(err), "in use by service svcaaa") {
		t.Fatalf("other network in use by svcaaa: %v", err)
	}
	if err := e.m.Remove(ctx, "nosuch"); err == nil || err.Error() != "network nosuch not found" || !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("remove unknown: %v", err)
	}
}

func TestReconcile(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	id := e.mustCreate(t, overlay("keep"))
	eid := e.eng.idOf(id)
	// Removed behind hush's back: realised again.
	_ = e.eng.RemoveNetwork(ctx, eid)
	// An orphan of this node, one of another hushd, and a user network.
	_, _ = e.eng.CreateNetwork(ctx, EngineSpec{Name: "orphan", Labels: map[string]string{LabelNetworkID: "gone", LabelNodeID: "node1"}})
	_, _ = e.eng.CreateNetwork(ctx, EngineSpec{Name: "theirs", Labels: map[string]string{LabelNetworkID: "x", LabelNodeID: "node2"}})
	_, _ = e.eng.CreateNetwork(ctx, EngineSpec{Name: "user", Labels: map[string]string{}})
	if pending, err := e.m.Reconcile(ctx); pending || err != nil {
		t.Fatalf("reconcile: pending %v, err %v", pending, err)
	}
	var names []string
	all, err := e.eng.ListNetworks(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range all {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	if got := strings.Join(names, ","); got != "keep,theirs,user" {
		t.Fatalf("engine networks after reconcile: %s", got)
	}
	creates := e.eng.creates
	if _, err := e.m.Reconcile(ctx); err != nil || e.eng.creates != creates {
		t.Fatalf("second pass created again (%d → %d): %v", creates, e.eng.creates, err)
	}
}

// TaskNetworks describes a task's networks for its node to realise on its
// own engine: it creates no engine network (the manager's engine is not
// the node's); the node's realiser does, under the node's own labels.
func TestTaskNetworks(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	front := overlay("front")
	front.IPAM = &network.IPAM{Config: []network.IPAMConfig{{Subnet: netip.MustParsePrefix("10.78.0.0/24")}}}
	a := e.mustCreate(t, front)
	b := e.mustCreate(t, overlay("back"))
	creates := e.eng.creates
	nets, aliases, err := e.m.TaskNetworks(ctx, []swarm.NetworkAttachmentConfig{
		{Target: a, Aliases: []string{"web"}},
		{Target: "back", Aliases: []string{"web", "api"}},
		{Target: a},
	}, "app_web")
	if err != nil {
		t.Fatal(err)
	}
	if len(nets) != 2 || nets[0].ID != a || nets[0].Name != "front" || nets[1].ID != b || nets[1].Name != "back" {
		t.Fatalf("networks %+v, want front (%s) and back (%s)", nets, a, b)
	}
	if len(nets[0].IPAM) != 1 || nets[0].IPAM[0].Subnet.String() != "10.78.0.0/24" {
		t.Fatalf("front's subnet: %+v", nets[0])
	}
	if want := []string{"web", "api", "app_web", "tasks.app_web"}; !slices.Equal(aliases, want) {
		t.Fatalf("aliases %v, want %v", aliases, want)
	}
	if e.eng.creates != creates {
		t.Fatalf("TaskNetworks created %d engine networks", e.eng.creates-creates)
	}
	// A worker's realiser, on its engine: its own labels, the subnet.
	r := NewRealiser(e.eng, nil)
	wid, err := r.Realise(ctx, "worker1", nets[0])
	if err != nil {
		t.Fatal(err)
	}
	e.eng.mu.Lock()
	spec := e.eng.nets[wid]
	e.eng.mu.Unlock()
	if spec.Labels[LabelNodeID] != "worker1" || spec.Labels[LabelNetworkID] != a || spec.IPAM == nil || !reflect.DeepEqual(spec.IPAM.Config, nets[0].IPAM) {
		t.Fatalf("the worker's engine network: %+v", spec)
	}
	if again, err := r.Realise(ctx, "worker1", nets[0]); err != nil || again != wid {
		t.Fatalf("realised twice: %s, %v (first %s)", again, err, wid)
	}
	// Gone from the engine: realised again on demand.
	_ = e.eng.RemoveNetwork(ctx, wid)
	if again, err := r.Realise(ctx, "worker1", nets[0]); err != nil || again == "" || again == wid {
		t.Fatalf("re-realise: %s %v", again, err)
	}
	if nets, aliases, err := e.m.TaskNetworks(ctx, nil, "app_web"); nets != nil || aliases != nil || err != nil {
		t.Fatalf("no networks: %v %v %v", nets, aliases, err)
	}
	if _, _, err := e.m.TaskNetworks(ctx, []swarm.NetworkAttachmentConfig{{Target: "gone"}}, "x"); err == nil || !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing network: %v", err)
	}
	if _, err := (*Realiser)(nil).Realise(ctx, "worker1", nets[0]); !errdefs.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("no engine: %v", err)
	}
}

// Prune removes what a node realised for networks none of its tasks uses
// any more, and nothing else: not the kept ones, not another node's, not
// one still in use (the engine refuses; a later prune takes it).
func TestRealiserPrune(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	a := e.mustCreate(t, overlay("keep"))
	b := e.mustCreate(t, overlay("drop"))
	c := e.mustCreate(t, overlay("busy"))
	nets, _, err := e.m.TaskNetworks(ctx, []swarm.NetworkAttachmentConfig{{Target: a}, {Target: b}, {Target: c}}, "s")
	if err != nil {
		t.Fatal(err)
	}
	r := NewRealiser(e.eng, nil)
	ids := map[string]string{}
	for _, n := range nets {
		if ids[n.ID], err = r.Realise(ctx, "worker1", n); err != nil {
			t.Fatal(err)
		}
	}
	other, err := r.Realise(ctx, "worker2", nets[1])
	if err != nil {
		t.Fatal(err)
	}
	e.eng.mu.Lock()
	e.eng.inUse = map[string]bool{ids[c]: true}
	e.eng.mu.Unlock()
	if err := r.Prune(ctx, "worker1", map[string]bool{a: true}); err != nil {
		t.Fatal(err)
	}
	e.eng.mu.Lock()
	_, keep := e.eng.nets[ids[a]]
	_, drop := e.eng.nets[ids[b]]
	_, busy := e.eng.nets[ids[c]]
	_, others := e.eng.nets[other]
	e.eng.inUse = nil
	e.eng.mu.Unlock()
	if !keep || drop || !busy || !others {
		t.Fatalf("after the prune: kept %v, dropped one left %v, in use left %v, another node's left %v", keep, drop, busy, others)
	}
	if err := r.Prune(ctx, "worker1", map[string]bool{a: true}); err != nil {
		t.Fatal(err)
	}
	e.eng.mu.Lock()
	_, busy = e.eng.nets[ids[c]]
	e.eng.mu.Unlock()
	if busy {
		t.Fatal("a network no longer in use was not pruned the next time")
	}
}

// TestConcurrentRealise: a starting task and the reconciler never create
// the same engine network twice.
func TestConcurrentRealise(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	e.eng.createErr = []error{fmt.Errorf("down: %w", ErrEngineUnavailable)}
	id := e.mustCreate(t, overlay("race"))
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if nets, _, err := e.m.TaskNetworks(ctx, []swarm.NetworkAttachmentConfig{{Target: id}}, "s"); err == nil {
				_, _ = e.m.real.Realise(ctx, "node1", nets[0])
			}
		}()
		go func() { defer wg.Done(); _, _ = e.m.Reconcile(ctx) }()
	}
	wg.Wait()
	if got := e.eng.byHush(id); len(got) != 1 {
		t.Fatalf("want 1 engine network, have %d", len(got))
	}
}
