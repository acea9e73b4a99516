package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// fakeEngine is an in-memory secrets API, just enough of Docker's to drive
// hushbench end to end without a daemon.
type fakeEngine struct {
	mu      sync.Mutex
	secrets map[string]swarm.Secret
	values  []string // base64 of every secret value received
	creates int
	// failEvery makes every n-th create store the secret but answer 500,
	// as when a response is lost after the server committed the write.
	failEvery int
	// downUntil makes creates answer 503 before it, storing nothing, as a
	// cluster without a leader does.
	downUntil time.Time
}

func (f *fakeEngine) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1.41/version", func(w http.ResponseWriter, _ *http.Request) {
		writeJSONResponse(w, http.StatusOK, map[string]string{"Version": "fake", "ApiVersion": "1.41"})
	})
	mux.HandleFunc("POST /v1.41/secrets/create", f.create)
	mux.HandleFunc("GET /v1.41/secrets", f.list)
	mux.HandleFunc("GET /v1.41/secrets/{id}", f.inspect)
	mux.HandleFunc("DELETE /v1.41/secrets/{id}", f.remove)
	return mux
}

func writeJSONResponse(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeEngine) create(w http.ResponseWriter, r *http.Request) {
	var spec swarm.SecretSpec
	if err := json.NewDecoder(r.Body).Decode(&spec); err != nil || spec.Name == "" || len(spec.Data) == 0 {
		writeJSONResponse(w, http.StatusBadRequest, map[string]string{"message": "bad spec"})
		return
	}
	f.mu.Lock()
	if time.Now().Before(f.downUntil) {
		f.mu.Unlock()
		writeJSONResponse(w, http.StatusServiceUnavailable, map[string]string{"message": "The swarm does not have a leader."})
		return
	}
	f.creates++
	id := fmt.Sprintf("id%06d", f.creates)
	f.values = append(f.values, base64.StdEncoding.EncodeToString(spec.Data))
	spec.Data = nil
	f.secrets[id] = swarm.Secret{ID: id, Spec: spec}
	fail := f.failEvery > 0 && f.creates%f.failEvery == 0
	f.mu.Unlock()
	if fail {
		writeJSONResponse(w, http.StatusInternalServerError, map[string]string{"message": "injected failure"})
		return
	}
	writeJSONResponse(w, http.StatusCreated, swarm.SecretCreateResponse{ID: id})
}

func (f *fakeEngine) list(w http.ResponseWriter, r *http.Request) {
	var filters map[string]map[string]bool
	if q := r.URL.Query().Get("filters"); q != "" {
		if err := json.Unmarshal([]byte(q), &filters); err != nil {
			writeJSONResponse(w, http.StatusBadRequest, map[string]string{"message": "bad filters"})
			return
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []swarm.Secret{}
	for _, s := range f.secrets {
		if matchesLabels(s, filters["label"]) {
			out = append(out, s)
		}
	}
	writeJSONResponse(w, http.StatusOK, out)
}

func matchesLabels(s swarm.Secret, want map[string]bool) bool {
	for kv := range want {
		k, v, _ := strings.Cut(kv, "=")
		if got, ok := s.Spec.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (f *fakeEngine) inspect(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	s, ok := f.secrets[r.PathValue("id")]
	f.mu.Unlock()
	if !ok {
		writeJSONResponse(w, http.StatusNotFound, map[string]string{"message": "no such secret"})
		return
	}
	writeJSONResponse(w, http.StatusOK, s)
}

func (f *fakeEngine) remove(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	_, ok := f.secrets[r.PathValue("id")]
	delete(f.secrets, r.PathValue("id"))
	f.mu.Unlock()
	if !ok {
		writeJSONResponse(w, http.StatusNotFound, map[string]string{"message": "no such secret"})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// serveFake starts f on a unix socket and returns the socket path.
func serveFake(t *testing.T, f *fakeEngine) string {
	t.Helper()
	return serveHandler(t, f.handler())
}

// serveHandler starts h on a unix socket and returns the socket path.
func serveHandler(t *testing.T, h http.Handler) string {
	t.Helper()
	// A short directory: unix socket paths are limited to ~108 bytes,
	// which t.TempDir() can exceed.
	dir, err := os.MkdirTemp("", "hb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func runAgainst(t *testing.T, f *fakeEngine, extra ...string) (code int, stdout, stderr, jsonOut string) {
	t.Helper()
	sock := serveFake(t, f)
	jsonPath := filepath.Join(t.TempDir(), "out.json")
	args := append([]string{"--socket", sock, "--n", "40", "--concurrency", "1,4", "--list-size", "60", "--list-reps", "3", "--json", jsonPath}, extra...)
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	data, _ := os.ReadFile(jsonPath)
	return code, out.String(), errOut.String(), string(data)
}

func TestRunCleanServer(t *testing.T) {
	f := &fakeEngine{secrets: map[string]swarm.Secret{}}
	code, stdout, stderr, jsonOut := runAgainst(t, f)
	if code != exitOK {
		t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"create", "inspect", "list", "remove", "label filter", "errors: none"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, stdout)
		}
	}
	var res results
	if err := json.Unmarshal([]byte(jsonOut), &res); err != nil {
		t.Fatalf("bad JSON output: %v", err)
	}
	if len(res.Levels) != 2 || len(res.Levels[0].Ops) != 4 || res.ListSize == nil || res.ListSize.Filtered.Items != 60 {
		t.Errorf("unexpected JSON results: %+v", res)
	}
	assertEmptyAndSecret(t, f, stdout+stderr+jsonOut)
}

func TestRunCountsErrorsAndRemovesOrphans(t *testing.T) {
	f := &fakeEngine{secrets: map[string]swarm.Secret{}, failEvery: 7}
	code, stdout, stderr, jsonOut := runAgainst(t, f, "--ops", "create,inspect")
	if code != exitErrors {
		t.Errorf("exit %d, want %d", code, exitErrors)
	}
	if !strings.Contains(stdout, "HTTP 500 ×") || !strings.Contains(stdout, "injected failure") {
		t.Errorf("report does not show the failures:\n%s", stdout)
	}
	// Secrets whose create "failed" exist on the server all the same;
	// cleanup must find them by label.
	assertEmptyAndSecret(t, f, stdout+stderr+jsonOut)
}

// assertEmptyAndSecret checks that the run left nothing behind and that
// no secret value appears in anything hushbench wrote.
func assertEmptyAndSecret(t *testing.T, f *fakeEngine, output string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.secrets) != 0 {
		t.Errorf("%d secrets left on the server", len(f.secrets))
	}
	for _, v := range f.values {
		if strings.Contains(output, v) {
			t.Fatalf("a secret value appears in the output")
		}
	}
}
