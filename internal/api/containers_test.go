package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/manager/standalone"
)

// fakeGrants records what the handler asked of the grants.
type fakeGrants struct {
	prepared  []standalone.Request
	names     []string
	committed map[string]string // grant -> container
	aborted   []string
	err       error
}

func (f *fakeGrants) Prepare(_ context.Context, req standalone.Request, name string) (*standalone.Prepared, error) {
	if f.err != nil {
		return nil, f.err
	}
	f.prepared = append(f.prepared, req)
	f.names = append(f.names, name)
	var b []standalone.Binding
	for i, r := range append(req.Secrets, req.Configs...) {
		b = append(b, standalone.Binding{HostPath: "/run/hush/x.containers/g1/" + string(rune('0'+i)), ContainerPath: r.Target})
	}
	return &standalone.Prepared{GrantID: "g1", Bindings: b}, nil
}

func (f *fakeGrants) Commit(_ context.Context, grant, cid, _ string) error {
	if f.committed == nil {
		f.committed = map[string]string{}
	}
	f.committed[grant] = cid
	return nil
}

func (f *fakeGrants) Abort(_ context.Context, grant string) { f.aborted = append(f.aborted, grant) }

func (f *fakeGrants) Holders(context.Context, string, string) ([]standalone.Holder, error) {
	return nil, nil
}

// fakeEngineCreate records the bodies it gets and answers as the engine.
type fakeEngineCreate struct {
	bodies [][]byte
	paths  []string
	code   int
}

func (e *fakeEngineCreate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	e.bodies = append(e.bodies, b)
	e.paths = append(e.paths, r.URL.RequestURI())
	if e.code != 0 && e.code != http.StatusCreated {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(e.code)
		_, _ = w.Write([]byte(`{"message":"No such image: x"}`))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write([]byte(`{"Id":"c0ffee","Warnings":[]}`))
}

type stateSwarm struct {
	SwarmController
	err error
}

func (s stateSwarm) CheckServing() error { return s.err }

func newCreateServer(g *fakeGrants, eng *fakeEngineCreate, serving error) *Server {
	return New(Config{Containers: g, Fallback: eng, Swarm: stateSwarm{err: serving}})
}

func post(s *Server, path string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec
}

func TestContainerCreatePassThrough(t *testing.T) {
	bodies := []string{
		`{"Image":"busybox","Labels":{"app":"x"},"HostConfig":{"Binds":["/a:/b"]},"Unknown": [1, 2 ,3]}`,
		`{"Image":"busybox"  ,  "Env":["A=1"]}`,
		`not json at all`,
		`{"Labels":"not a map","Image":"x"}`,
		``,
		`{"Image":"busybox","Labels":{"com.example.io.hush.secrets":"db"}}`,
	}
	for _, b := range bodies {
		g := &fakeGrants{}
		eng := &fakeEngineCreate{}
		// Even a locked hushd passes these on: they are not hush's.
		s := newCreateServer(g, eng, errdefs.Unavailable("locked"))
		rec := post(s, "/v1.41/containers/create?name=web", []byte(b))
		if rec.Code != http.StatusCreated {
			t.Fatalf("%q: status %d %s", b, rec.Code, rec.Body)
		}
		if len(eng.bodies) != 1 || !bytes.Equal(eng.bodies[0], []byte(b)) {
			t.Fatalf("%q: the engine got %q, want it byte for byte", b, eng.bodies)
		}
		if eng.paths[0] != "/v1.41/containers/create?name=web" {
			t.Fatalf("path %q", eng.paths[0])
		}
		if len(g.prepared) != 0 {
			t.Fatalf("%q: a grant was prepared", b)
		}
	}
}

func TestContainerCreateRewrite(t *testing.T) {
	g := &fakeGrants{}
	eng := &fakeEngineCreate{}
	s := newCreateServer(g, eng, nil)
	body := `{"Image":"busybox","FutureField":{"x":[1]},"Labels":{"io.hush.secrets":"db","io.hush.secret.api":"target=/etc/api,uid=7,mode=0400","keep":"me"},` +
		`"HostConfig":{"Mounts":[{"Type":"volume","Source":"v","Target":"/data"}],"Memory":5,"NewHostField":true}}`
	rec := post(s, "/v1.44/containers/create?name=app", []byte(body))
	if rec.Code != http.StatusCreated || !strings.Contains(rec.Body.String(), "c0ffee") {
		t.Fatalf("status %d %s", rec.Code, rec.Body)
	}
	if len(g.prepared) != 1 || g.names[0] != "app" || g.committed["g1"] != "c0ffee" || len(g.aborted) != 0 {
		t.Fatalf("grants: %+v", g)
	}
	var sent, orig map[string]any
	if err := json.Unmarshal(eng.bodies[0], &sent); err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal([]byte(body), &orig)
	// Everything but HostConfig.Mounts is as the client sent it.
	hc := sent["HostConfig"].(map[string]any)
	mounts := hc["Mounts"].([]any)
	delete(hc, "Mounts")
	ohc := orig["HostConfig"].(map[string]any)
	delete(ohc, "Mounts")
	a, _ := json.Marshal(sent)
	b, _ := json.Marshal(orig)
	if !bytes.Equal(a, b) {
		t.Fatalf("fields changed:\n got %s\nwant %s", a, b)
	}
	want := `[{"Source":"v","Target":"/data","Type":"volume"},` +
		`{"ReadOnly":true,"Source":"/run/hush/x.containers/g1/0","Target":"/run/secrets/db","Type":"bind"},` +
		`{"ReadOnly":true,"Source":"/run/hush/x.containers/g1/1","Target":"/etc/api","Type":"bind"}]`
	if got, _ := json.Marshal(mounts); string(got) != want {
		t.Fatalf("mounts\n got %s\nwant %s", got, want)
	}
}

func TestContainerCreateRefusals(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		grants  error
		serving error
		code    int
		msg     string
	}{
		{name: "unknown label", body: `{"Labels":{"io.hush.foo":"1"}}`, code: 400, msg: `unknown label "io.hush.foo"`},
		{name: "unknown option", body: `{"Labels":{"io.hush.secret.db":"moed=0400"}}`, code: 400, msg: `label io.hush.secret.db: unknown option "moed" (target, uid, gid, mode)`},
		{name: "both forms", body: `{"Labels":{"io.hush.secrets":"db","io.hush.secret.db":""}}`, code: 400, msg: "named both"},
		{name: "bad target", body: `{"Labels":{"io.hush.secret.db":"target=../x"}}`, code: 400, msg: `must not contain ".."`},
		{name: "target over a client mount", body: `{"Labels":{"io.hush.secrets":"db"},"HostConfig":{"Mounts":[{"Type":"tmpfs","Target":"/run/secrets/db"}]}}`, code: 400, msg: "already used by a mount"},
		{name: "target over a bind", body: `{"Labels":{"io.hush.secret.db":"target=/etc/k"},"HostConfig":{"Binds":["/h:/etc/k:ro"]}}`, code: 400, msg: "already used by a bind"},
		{name: "unknown secret", body: `{"Labels":{"io.hush.secrets":"db"}}`, grants: errdefs.InvalidArgument("secret not found: db"), code: 400, msg: "secret not found: db"},
		{name: "locked", body: `{"Labels":{"io.hush.secrets":"db"}}`, serving: errdefs.Unavailable("locked text"), code: 503, msg: "locked text"},
		{name: "bad HostConfig", body: `{"Labels":{"io.hush.secrets":"db"},"HostConfig":[1]}`, code: 400, msg: "HostConfig"},
		{name: "labels spelled twice", body: `{"Labels":{"io.hush.secrets":"db"},"labels":{"a":"b"}}`, code: 400, msg: "Labels is given 2 times"},
		{name: "lower-case labels are the engine's Labels", body: `{"labels":{"io.hush.bad":"1"}}`, code: 400, msg: `unknown label "io.hush.bad"`},
		{name: "too new", body: `{"Labels":{"io.hush.secrets":"db"}}`, code: 400, msg: "too new"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &fakeGrants{err: tt.grants}
			eng := &fakeEngineCreate{}
			s := newCreateServer(g, eng, tt.serving)
			path := "/v1.41/containers/create"
			if tt.name == "too new" {
				path = "/v9.99/containers/create"
			}
			rec := post(s, path, []byte(tt.body))
			if rec.Code != tt.code {
				t.Fatalf("status %d (%s), want %d", rec.Code, rec.Body, tt.code)
			}
			if msg := msgOf(t, rec.Body.String()); !strings.Contains(msg, tt.msg) || strings.HasPrefix(msg, "rpc error") {
				t.Fatalf("message %q, want it to contain %q (no rpc prefix)", msg, tt.msg)
			}
			if len(eng.bodies) != 0 {
				t.Fatal("the engine was asked to create the container")
			}
			if tt.grants == nil && len(g.prepared) != 0 {
				t.Fatal("a grant was prepared")
			}
		})
	}
}

func TestContainerCreateEngineRefuses(t *testing.T) {
	g := &fakeGrants{}
	eng := &fakeEngineCreate{code: http.StatusNotFound}
	s := newCreateServer(g, eng, nil)
	rec := post(s, "/containers/create", []byte(`{"Image":"x","Labels":{"io.hush.secrets":"db"}}`))
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "No such image") {
		t.Fatalf("the engine's answer was not passed on: %d %s", rec.Code, rec.Body)
	}
	if len(g.aborted) != 1 || g.aborted[0] != "g1" || len(g.committed) != 0 {
		t.Fatalf("grant not undone: %+v", g)
	}
}

func TestContainerCreateBodyBound(t *testing.T) {
	g := &fakeGrants{}
	eng := &fakeEngineCreate{}
	s := newCreateServer(g, eng, nil)
	big := append([]byte(`{"Labels":{"io.hush.secrets":"db"},"Env":["A=`), bytes.Repeat([]byte("x"), maxCreateBodyBytes)...)
	rec := post(s, "/containers/create", append(big, `"]}`...))
	if rec.Code != http.StatusRequestEntityTooLarge || len(eng.bodies) != 0 || len(g.prepared) != 0 {
		t.Fatalf("status %d, engine calls %d, grants %d", rec.Code, len(eng.bodies), len(g.prepared))
	}
}

// FuzzContainerCreate: whatever the body, a request without hush's labels
// reaches the engine unchanged, and one with them is either refused with
// nothing sent or sent with the client's fields intact.
func FuzzContainerCreate(f *testing.F) {
	f.Add([]byte(`{"Image":"x","Labels":{"io.hush.secrets":"db"}}`))
	f.Add([]byte(`{"Image":"x","Labels":{"a":"b"}}`))
	f.Add([]byte(`{"Labels":{"io.hush.secret.a":"target=/x"},"HostConfig":{"Mounts":null}}`))
	f.Add([]byte(`{"Labels":{"io.hush.configs":"c"},"HostConfig":{"Mounts":[{"Target":"/c"}]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		g := &fakeGrants{}
		eng := &fakeEngineCreate{}
		s := newCreateServer(g, eng, nil)
		rec := post(s, "/containers/create", body)
		_, labels, _, ok := createLabels(body)
		if !ok || !standalone.HasLabels(labels) {
			if len(eng.bodies) != 1 || !bytes.Equal(eng.bodies[0], body) {
				t.Fatalf("pass-through changed %q into %q", body, eng.bodies)
			}
			return
		}
		if rec.Code != http.StatusCreated {
			if len(eng.bodies) != 0 {
				t.Fatalf("refused (%d) yet sent to the engine", rec.Code)
			}
			return
		}
		var sent map[string]json.RawMessage
		if err := json.Unmarshal(eng.bodies[0], &sent); err != nil {
			t.Fatalf("sent body is not JSON: %v", err)
		}
		var orig map[string]json.RawMessage
		_ = json.Unmarshal(body, &orig)
		for k := range orig {
			if _, ok := sent[k]; !ok {
				t.Fatalf("field %q dropped", k)
			}
		}
	})
}

type holdersGrants struct {
	fakeGrants
	asked []string
}

func (h *holdersGrants) Holders(_ context.Context, table, id string) ([]standalone.Holder, error) {
	h.asked = append(h.asked, table+"/"+id)
	return []standalone.Holder{{Kind: "container", ID: "c1", Name: "app", Version: 1}}, nil
}

func TestHoldersRoute(t *testing.T) {
	base := newTestServer(t)
	g := &holdersGrants{}
	cfg := base.Config
	cfg.Containers = g
	s := New(cfg)
	id, err := cfg.Secrets.Create(context.Background(), objects.Spec{Name: "db", Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	code, body := do(t, s, "GET", "/hush/v1/secrets/db/holders", "")
	if code != 200 || len(g.asked) != 1 || g.asked[0] != "secrets/"+id {
		t.Fatalf("%d %s (asked %v)", code, body, g.asked)
	}
	var got []map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil || len(got) != 1 {
		t.Fatalf("body %s", body)
	}
	for _, k := range []string{"Kind", "ID", "Name", "Service", "Version", "Since"} {
		if _, ok := got[0][k]; !ok {
			t.Errorf("holder lacks %s: %s", k, body)
		}
	}
	if code, body := do(t, s, "GET", "/hush/v1/secrets/nope/holders", ""); code != 404 {
		t.Fatalf("unknown secret: %d %s", code, body)
	}
}

// TestContainerCreateNotBypassed: the engine accepts version prefixes hush
// does not parse as X.Y (/v1.41.0/, its router takes /v[0-9.]+) and a body
// with data after its JSON object (its decoder reads the first value): a
// labelled create sent either way must still be hush's, never reach the
// engine untouched (a container with hush's labels and no secrets).
func TestContainerCreateNotBypassed(t *testing.T) {
	labelled := `{"Image":"x","Labels":{"io.hush.secrets":"db"}}`
	tests := []struct{ name, path, body string }{
		{"three-part version", "/v1.41.0/containers/create", labelled},
		{"trailing dot version", "/v1.41./containers/create", labelled},
		{"data after the object", "/v1.41/containers/create", labelled + ` trailing`},
		{"second object after it", "/v1.41/containers/create", labelled + `{"Labels":{}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &fakeGrants{}
			eng := &fakeEngineCreate{}
			s := newCreateServer(g, eng, nil)
			rec := post(s, tt.path, []byte(tt.body))
			if len(eng.bodies) == 1 && bytes.Equal(eng.bodies[0], []byte(tt.body)) {
				t.Fatalf("labelled create reached the engine untouched (status %d)", rec.Code)
			}
			if rec.Code == http.StatusCreated && len(g.prepared) != 1 {
				t.Fatalf("created without a grant: %+v", g)
			}
		})
	}
}

// leavingClientEngine is an engine during whose create the client goes
// away; like the proxy, it drops the call when its request's context ends.
type leavingClientEngine struct {
	cancel  context.CancelFunc
	created bool
}

func (e *leavingClientEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.ReadAll(r.Body)
	e.cancel()
	if r.Context().Err() != nil {
		return // the proxy's answer to a client gone: nothing
	}
	e.created = true
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write([]byte(`{"Id":"c0ffee","Warnings":[]}`))
}

// TestContainerCreateClientLeaves: a client that hangs up while the engine
// creates (a compose timeout) must not cut the engine's call short: hush
// would undo a grant whose container the engine may still have made (a
// container that can never start), so the create is seen through and
// recorded.
func TestContainerCreateClientLeaves(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := &fakeGrants{}
	eng := &leavingClientEngine{cancel: cancel}
	s := New(Config{Containers: g, Fallback: eng, Swarm: stateSwarm{}})
	req := httptest.NewRequest(http.MethodPost, "/v1.41/containers/create?name=app",
		strings.NewReader(`{"Image":"x","Labels":{"io.hush.secrets":"db"}}`)).WithContext(ctx)
	req.Header.Set("Content-Type", "application/json")
	s.ServeHTTP(httptest.NewRecorder(), req)
	if !eng.created || g.committed["g1"] != "c0ffee" || len(g.aborted) != 0 {
		t.Fatalf("engine created %v; grants %+v", eng.created, g)
	}
}

// TestContainerCreateRepeatedKeys: a key given twice in the same spelling
// is invisible to a map, yet the engine's decoder merges repeated objects
// (Labels, HostConfig): hush must neither miss labels that way nor drop
// the first copy's fields from what it forwards.
func TestContainerCreateRepeatedKeys(t *testing.T) {
	tests := []struct{ name, body string }{
		{"labels hidden in a first copy", `{"Image":"x","Labels":{"io.hush.secrets":"db"},"Labels":{"a":"b"}}`},
		{"host config given twice", `{"Image":"x","Labels":{"io.hush.secrets":"db"},"HostConfig":{"Memory":5},"HostConfig":{"CpuShares":2}}`},
		{"mounts given twice", `{"Image":"x","Labels":{"io.hush.secrets":"db"},"HostConfig":{"Mounts":[{"Type":"tmpfs","Target":"/run/secrets/db"}],"Mounts":[]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &fakeGrants{}
			eng := &fakeEngineCreate{}
			s := newCreateServer(g, eng, nil)
			rec := post(s, "/v1.41/containers/create", []byte(tt.body))
			if rec.Code != http.StatusBadRequest || !strings.Contains(msgOf(t, rec.Body.String()), "given twice") {
				t.Fatalf("status %d %s, want a 400 naming the repeated field", rec.Code, rec.Body)
			}
			if len(eng.bodies) != 0 || len(g.prepared) != 0 {
				t.Fatalf("sent to the engine %q, grants %+v", eng.bodies, g)
			}
		})
	}
	// Unlabelled, a repeated key is the engine's business: byte for byte.
	g, eng := &fakeGrants{}, &fakeEngineCreate{}
	body := `{"Image":"x","Labels":{"a":"b"},"Labels":{"c":"d"}}`
	if rec := post(newCreateServer(g, eng, nil), "/containers/create", []byte(body)); rec.Code != http.StatusCreated || string(eng.bodies[0]) != body {
		t.Fatalf("unlabelled: %d, sent %q", rec.Code, eng.bodies)
	}
}

// oddEngine answers a create with 201 and a body hush cannot read.
type oddEngine struct{ body string }

func (e oddEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.ReadAll(r.Body)
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write([]byte(e.body))
}

// TestContainerCreateOddAnswer: the engine said it created the container
// but hush cannot read its ID: the grant must be neither left pending
// forever (no reconcile would touch it) nor undone under a live
// container; it is recorded without an ID, for the reconciler to match.
func TestContainerCreateOddAnswer(t *testing.T) {
	for _, body := range []string{`not json`, `{"Warnings":[]}`} {
		g := &fakeGrants{}
		s := New(Config{Containers: g, Fallback: oddEngine{body}, Swarm: stateSwarm{}})
		post(s, "/containers/create", []byte(`{"Image":"x","Labels":{"io.hush.secrets":"db"}}`))
		if cid, ok := g.committed["g1"]; !ok || cid != "" || len(g.aborted) != 0 {
			t.Fatalf("%s: grants %+v", body, g)
		}
	}
}

// TestContainerCreateTopLevelHostFields: without a HostConfig member the
// engine reads host fields (Binds, Privileged...) from the top level, and
// ignores them once a HostConfig is there, which hush adds for its
// mounts: such a labelled create is refused naming the field, not
// created with those fields silently dropped.
func TestContainerCreateTopLevelHostFields(t *testing.T) {
	for _, body := range []string{
		`{"Image":"x","Labels":{"io.hush.secrets":"db"},"Binds":["/h:/data"]}`,
		`{"Image":"x","Labels":{"io.hush.secrets":"db"},"privileged":true,"HostConfig":null}`,
		`{"Image":"x","Labels":{"io.hush.secrets":"db"},"Memory":5}`,
	} {
		g, eng := &fakeGrants{}, &fakeEngineCreate{}
		rec := post(newCreateServer(g, eng, nil), "/containers/create", []byte(body))
		if rec.Code != http.StatusBadRequest || !strings.Contains(msgOf(t, rec.Body.String()), "HostConfig") || len(eng.bodies) != 0 || len(g.prepared) != 0 {
			t.Fatalf("%s: %d %s (engine calls %d)", body, rec.Code, rec.Body, len(eng.bodies))
		}
	}
	// With a HostConfig the engine takes it and ignores top-level copies
	// (but for a few resources it merges): unchanged by hush.
	g, eng := &fakeGrants{}, &fakeEngineCreate{}
	body := `{"Image":"x","Labels":{"io.hush.secrets":"db"},"Memory":5,"HostConfig":{"Privileged":true}}`
	if rec := post(newCreateServer(g, eng, nil), "/containers/create", []byte(body)); rec.Code != http.StatusCreated || !strings.Contains(string(eng.bodies[0]), `"Memory":5`) {
		t.Fatalf("%d %s; sent %q", rec.Code, rec.Body, eng.bodies)
	}
}

// The client's own mounts at or under /run/secrets would be taken whole
// (or hidden) by the one swappable directory: the files are bound one by
// one instead, and reload or signal:, which need it, are refused by name.
func TestSharedSecretsDir(t *testing.T) {
	tests := []struct {
		name     string
		rotate   string
		taken    map[string]string
		bindEach bool
		err      string
	}{
		{name: "nothing there", taken: map[string]string{"/data": "a bind"}},
		{name: "a mount under /run/secrets", taken: map[string]string{"/run/secrets/own": "a bind"}, bindEach: true},
		{name: "a volume at /run/secrets, restart", rotate: "restart", taken: map[string]string{"/run/secrets": "a mount"}, bindEach: true},
		{name: "a look-alike path", taken: map[string]string{"/run/secretsx": "a bind"}},
		{name: "reload refused", rotate: "reload", taken: map[string]string{"/run/secrets/own": "a bind (HostConfig.Binds)"},
			err: "label io.hush.rotate=reload: a bind (HostConfig.Binds) at /run/secrets/own shares /run/secrets"},
		{name: "signal refused", rotate: "signal:SIGHUP", taken: map[string]string{"/run/secrets": "a tmpfs"}, err: "label io.hush.rotate=signal:SIGHUP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := standalone.Request{Secrets: []standalone.Ref{{Name: "db", Target: "/run/secrets/db"}}, Rotate: tt.rotate}
			err := sharedSecretsDir(&req, tt.taken)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("got %v, want an invalid argument with %q", err, tt.err)
				}
				return
			}
			if err != nil || req.BindEach != tt.bindEach {
				t.Fatalf("got %v, BindEach %v; want %v", err, req.BindEach, tt.bindEach)
			}
		})
	}
}
