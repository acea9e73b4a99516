package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

func newServicesServer(t *testing.T) (*Server, *services.Manager) {
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
	mir := store.NewMirror(st)
	svcs := services.New(st, mir, nil)
	svcs.UseSealer(kr)
	storetest.RunMirror(t, mir)
	return New(Config{Services: svcs, Cluster: stClusterSource{st}, Node: Node{ID: "node1", Addr: "127.0.0.1"}, Version: "test"}), svcs
}

func doAuth(t *testing.T, h http.Handler, method, path, body, auth string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("X-Registry-Auth", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// TestServiceRegistryAuth: the X-Registry-Auth header of a create or update
// is kept with the service (for the agent's pull) and appears in no
// answer; a malformed one, or an unknown registryAuthFrom, is a 400 that
// names it and changes nothing.
func TestServiceRegistryAuth(t *testing.T) {
	s, svcs := newServicesServer(t)
	const password = "pw-api-5be1c0"
	raw, _ := json.Marshal(map[string]string{"username": "u", "password": password, "serveraddress": "127.0.0.1:5000"})
	auth := base64.URLEncoding.EncodeToString(raw)
	body := `{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"127.0.0.1:5000/app:1"}}}`

	code, out := doAuth(t, s, "POST", "/v1.41/services/create", body, "not//base64url!")
	if code != 400 || msgOf(t, out) != "invalid X-Registry-Auth header: must be base64url-encoded JSON registry credentials" {
		t.Fatalf("bad header: %d %s", code, out)
	}
	if code, _ := do(t, s, "GET", "/v1.41/services/web", ""); code != 404 {
		t.Fatalf("a refused create stored the service (GET: %d)", code)
	}

	code, out = doAuth(t, s, "POST", "/v1.41/services/create", body, auth)
	if code != 201 {
		t.Fatalf("create: %d %s", code, out)
	}
	var created swarm.ServiceCreateResponse
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.ID == "" || len(created.Warnings) != 0 {
		t.Fatalf("create answer %s (%v): want an ID and no warnings", out, err)
	}
	got, err := svcs.RegistryAuth(context.Background(), created.ID)
	if err != nil || string(got) != auth {
		t.Fatalf("kept credentials %q, %v; want the header's value", got, err)
	}
	for _, path := range []string{"/v1.41/services/" + created.ID, "/v1.41/services/web?insertDefaults=true", "/v1.41/services", "/v1.41/tasks"} {
		code, out := do(t, s, "GET", path, "")
		if code != 200 || strings.Contains(out, password) || strings.Contains(out, auth) || strings.Contains(out, "ullAuth") {
			t.Fatalf("GET %s: %d, holds the credentials: %s", path, code, out)
		}
	}

	upd := `{"Name":"web","Labels":{"a":"b"},"TaskTemplate":{"ContainerSpec":{"Image":"127.0.0.1:5000/app:1"}}}`
	version := func() string {
		svc, err := svcs.Get(context.Background(), created.ID)
		if err != nil {
			t.Fatal(err)
		}
		return jsonUint(svc.Version.Index)
	}
	code, out = doAuth(t, s, "POST", "/v1.41/services/web/update?version="+version()+"&registryAuthFrom=bogus", upd, "")
	if code != 400 || msgOf(t, out) != "invalid registryAuthFrom 'bogus'" {
		t.Fatalf("bad registryAuthFrom: %d %s", code, out)
	}
	// The CLI's update without --with-registry-auth keeps them.
	code, out = doAuth(t, s, "POST", "/v1.41/services/web/update?version="+version()+"&registryAuthFrom=spec", upd, "")
	if code != 200 || strings.Contains(out, "Warnings\":[\"") {
		t.Fatalf("update: %d %s", code, out)
	}
	if got, _ := svcs.RegistryAuth(context.Background(), created.ID); string(got) != auth {
		t.Fatalf("update from spec lost the credentials: %q", got)
	}
}

func jsonUint(v uint64) string { b, _ := json.Marshal(v); return string(b) }
