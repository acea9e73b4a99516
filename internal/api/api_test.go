package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

type stClusterSource struct{ st *store.Store }

func (c stClusterSource) Cluster(ctx context.Context) (cluster.Cluster, error) {
	return cluster.Get(ctx, c.st)
}

// newTestServer starts the API over a real embedded store.
func newTestServer(t testing.TB) *Server {
	t.Helper()
	st := storetest.New(t)
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.Init(context.Background(), st, kr, cluster.DefaultSpec()); err != nil {
		t.Fatal(err)
	}
	return New(Config{
		Secrets: objects.New(objects.Secret, st, kr, nil),
		Configs: objects.New(objects.Config, st, kr, nil),
		Cluster: stClusterSource{st},
		Node:    Node{ID: "node1", Addr: "127.0.0.1"},
		Version: "test",
	})
}

func do(t testing.TB, h http.Handler, method, path, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func msgOf(t testing.TB, body string) string {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("error body is not JSON {message}: %q", body)
	}
	return e.Message
}

func TestVersions(t *testing.T) {
	s := newTestServer(t)
	tests := []struct {
		path string
		code int
		msg  string
	}{
		{"/_ping", 200, ""},
		{"/v1.24/_ping", 200, ""},
		{"/v1.51/secrets", 200, ""},
		{"/v1.52/secrets", 400, "client version 1.52 is too new. Maximum supported API version is 1.51"},
		{"/v1.12/secrets", 400, "client version 1.12 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version"},
		{"/v1.41/nosuch", 404, "page not found"},
		{"/secrets/x/y", 404, "page not found"},
	}
	for _, tt := range tests {
		code, body := do(t, s, "GET", tt.path, "")
		if code != tt.code {
			t.Errorf("%s: status %d want %d (%s)", tt.path, code, tt.code, body)
			continue
		}
		if tt.msg != "" && msgOf(t, body) != tt.msg {
			t.Errorf("%s: message %q want %q", tt.path, msgOf(t, body), tt.msg)
		}
	}
}

func TestPingHeaders(t *testing.T) {
	s := newTestServer(t)
	req := httptest.NewRequest("HEAD", "/_ping", nil)
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	for k, want := range map[string]string{"Api-Version": MaxAPIVersion, "Ostype": "linux", "Swarm": "active/manager", "Docker-Experimental": "false"} {
		if got := rec.Header().Get(k); got != want {
			t.Errorf("header %s = %q want %q", k, got, want)
		}
	}
}

func TestBadRequests(t *testing.T) {
	s := newTestServer(t)
	code, body := do(t, s, "POST", "/v1.41/secrets/create", `{"Name":"keep","Data":"a2VlcA=="}`)
	if code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	big := `{"Name":"big","Data":"` + strings.Repeat("A", 3<<20) + `"}`
	tests := []struct {
		name, method, path, body string
		code                     int
		msg                      string
	}{
		{"malformed", "POST", "/secrets/create", `{bad`, 400, "invalid character 'b' looking for beginning of object key string"},
		{"empty body", "POST", "/secrets/create", ``, 400, "got EOF while reading request body"},
		{"wrong type", "POST", "/secrets/create", `{"Name":5}`, 400, "json: cannot unmarshal number into Go struct field SecretSpec.Name of type string"},
		{"bad base64", "POST", "/secrets/create", `{"Name":"x","Data":"!!!"}`, 400, "illegal base64 data at input byte 0"},
		{"too large", "POST", "/secrets/create", big, 413, "request body too large: the limit is 2097152 bytes"},
		{"bad filters", "GET", "/secrets?filters=%7Bbad", "", 400, "invalid character 'b' looking for beginning of object key string"},
		{"unknown filter", "GET", `/secrets?filters={"foo":{"a":true}}`, "", 400, "Invalid filter 'foo'"},
		{"no version", "POST", "/secrets/keep/update", `{"Name":"keep"}`, 400, "invalid secret version"},
		{"duplicate", "POST", "/secrets/create", `{"Name":"KEEP","Data":"eA=="}`, 409, "rpc error: code = AlreadyExists desc = secret KEEP already exists"},
		{"missing", "DELETE", "/secrets/nosuch", "", 404, "secret nosuch not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := do(t, s, tt.method, tt.path, tt.body)
			if code != tt.code {
				t.Fatalf("status %d want %d: %s", code, tt.code, body)
			}
			if m := msgOf(t, body); tt.msg != "" && m != tt.msg {
				t.Fatalf("message %q want %q", m, tt.msg)
			}
		})
	}
	code, body = do(t, s, "GET", "/secrets", "")
	var list []swarm.Secret
	if err := json.Unmarshal([]byte(body), &list); err != nil || code != 200 || len(list) != 1 || list[0].Spec.Name != "keep" {
		t.Fatalf("after bad requests: %d %s", code, body)
	}
}

func TestNoDataInResponses(t *testing.T) {
	s := newTestServer(t)
	code, body := do(t, s, "POST", "/secrets/create", `{"Name":"x","Data":"Y2FuYXJ5LXZhbHVl","Labels":{"l":"v"}}`)
	if code != 201 {
		t.Fatal(body)
	}
	for _, p := range []string{"/secrets", "/secrets/x", `/secrets?filters={"name":{"x":true}}`} {
		_, body := do(t, s, "GET", p, "")
		if strings.Contains(body, "Y2FuYXJ5LXZhbHVl") || strings.Contains(body, "canary-value") || strings.Contains(body, `"Data"`) {
			t.Fatalf("%s leaks data: %s", p, body)
		}
	}
}

func TestParseFilters(t *testing.T) {
	tests := []struct {
		raw     string
		wantErr bool
		key     string
		n       int
	}{
		{"", false, "name", 0},
		{`{"name":{"a":true,"b":true}}`, false, "name", 2},
		{`{"name":["a"]}`, false, "name", 1},
		{`{"label":{"k=v":true}}`, false, "label", 1},
		{`{"bogus":{"a":true}}`, true, "", 0},
		{`[1,2]`, true, "", 0},
	}
	for _, tt := range tests {
		f, err := parseFilters(tt.raw, "name", "label")
		if (err != nil) != tt.wantErr {
			t.Errorf("%q: err %v", tt.raw, err)
			continue
		}
		if err == nil && len(f.values(tt.key)) != tt.n {
			t.Errorf("%q: %d values of %s, want %d", tt.raw, len(f.values(tt.key)), tt.key, tt.n)
		}
	}
}

// FuzzCreate feeds arbitrary bodies to the create handler: it must never
// panic, answer only 201 or a 4xx JSON error, and never echo the data back.
func FuzzCreate(f *testing.F) {
	for _, seed := range []string{
		`{"Name":"a","Data":"eA=="}`, `{"Name":"a","Labels":{"x":"y"},"Data":"eA=="}`,
		`{bad`, `{"Name":5}`, `{"Name":"a","Data":"!!"}`, `null`, `[]`, `{"Name":"a","Data":"eA==","Driver":{"Name":"d"}}`,
		`{"Name":"a","Data":"eA==","Templating":{"Name":"golang","Options":{"k":"v"}}}`,
	} {
		f.Add(seed)
	}
	s := newTestServer(f)
	f.Fuzz(func(t *testing.T, body string) {
		code, resp := do(t, s, "POST", "/v1.41/secrets/create", body)
		switch {
		case code == 201:
			var r swarm.SecretCreateResponse
			if err := json.Unmarshal([]byte(resp), &r); err != nil || r.ID == "" {
				t.Fatalf("201 without an ID: %q", resp)
			}
			// Remove it so the name can be reused by later inputs.
			if c, b := do(t, s, "DELETE", "/secrets/"+r.ID, ""); c != 204 {
				t.Fatalf("delete: %d %s", c, b)
			}
		case code >= 400 && code < 500:
			msgOf(t, resp)
		default:
			t.Fatalf("status %d for %q: %s", code, body, resp)
		}
		var spec struct{ Data []byte }
		if json.Unmarshal([]byte(body), &spec) == nil && len(spec.Data) >= 8 && bytes.Contains([]byte(resp), spec.Data) {
			t.Fatalf("response echoes data")
		}
	})
}

// TestListCacheFollowsWrites checks the encoded-object cache never serves an
// old version: label updates and removals show in the next list.
func TestListCacheFollowsWrites(t *testing.T) {
	s := newTestServer(t)
	code, body := do(t, s, "POST", "/secrets/create", `{"Name":"c1","Data":"eA==","Labels":{"v":"1"}}`)
	if code != 201 {
		t.Fatal(body)
	}
	list := func() []swarm.Secret {
		t.Helper()
		code, body := do(t, s, "GET", "/secrets", "")
		var out []swarm.Secret
		if code != 200 || json.Unmarshal([]byte(body), &out) != nil {
			t.Fatalf("list: %d %s", code, body)
		}
		return out
	}
	first := list()
	if len(first) != 1 || first[0].Spec.Labels["v"] != "1" {
		t.Fatalf("first list %+v", first)
	}
	path := "/secrets/c1/update?version=" + strconv.FormatUint(first[0].Version.Index, 10)
	if code, body := do(t, s, "POST", path, `{"Name":"c1","Labels":{"v":"2"}}`); code != 200 {
		t.Fatal(body)
	}
	if got := list(); len(got) != 1 || got[0].Spec.Labels["v"] != "2" || got[0].Version.Index == first[0].Version.Index {
		t.Fatalf("after update %+v", got)
	}
	if code, body := do(t, s, "DELETE", "/secrets/c1", ""); code != 204 {
		t.Fatal(body)
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("after remove %+v", got)
	}
}

// TestOversizedBodyPlainClient: a plain net/http client sending a body over
// the cap, on a unix socket as the docker CLI does, gets the 413 answer, not
// a broken pipe (hush drains the rest before answering).
func TestOversizedBodyPlainClient(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: newTestServer(t)}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	big := `{"Name":"big","Data":"` + strings.Repeat("A", 3<<20) + `"}`
	for i := 0; i < 20; i++ {
		resp, err := client.Post("http://docker/v1.41/secrets/create", "application/json", strings.NewReader(big))
		if err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("attempt %d: status %d", i, resp.StatusCode)
		}
	}
}
