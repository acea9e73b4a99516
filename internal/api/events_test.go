package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	hushevents "github.com/hush-secrets/hush/internal/manager/events"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// fakeEngine serves /events like dockerd: the history lines it is given
// for a request with until in the past, else the lines sent on live until
// the client goes or live is closed.
type fakeEngine struct {
	history  []string
	live     chan string
	requests chan url.Values
}

func (e *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasSuffix(r.URL.Path, "/events") {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	e.requests <- q
	w.Header().Set("Content-Type", "application/x-fake-json")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	until, _ := hushevents.ParseTime(q.Get("until"))
	if !until.IsZero() && until.Before(time.Now()) {
		for _, l := range e.history {
			fmt.Fprintln(w, l)
		}
		return
	}
	for {
		select {
		case l, ok := <-e.live:
			if !ok {
				return
			}
			fmt.Fprintln(w, l)
			w.(http.Flusher).Flush()
		case <-r.Context().Done():
			return
		}
	}
}

// unixStreamer is an EngineStreamer over a unix socket, as internal/proxy
// provides one (its own tests cover Open); an unreachable engine is
// Unavailable, as there.
type unixStreamer struct{ tr *http.Transport }

func newUnixStreamer(sock string) *unixStreamer {
	return &unixStreamer{tr: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

func (u *unixStreamer) Open(ctx context.Context, method, pathQuery string, h http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://docker"+pathQuery, nil)
	if err != nil {
		return nil, err
	}
	req.Header = h.Clone()
	resp, err := u.tr.RoundTrip(req)
	if err != nil {
		return nil, errdefs.Unavailable("the Docker Engine is not reachable: %v", err)
	}
	return resp, nil
}

type eventsRig struct {
	st     *store.Store
	src    *hushevents.Source
	engine *fakeEngine
	url    string
}

func newEventsRig(t *testing.T, withEngine bool) *eventsRig {
	t.Helper()
	st := storetest.New(t)
	src := hushevents.New(hushevents.Config{Store: st})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	// Writes before the first load are its snapshot, not events.
	if err := src.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	rig := &eventsRig{st: st, src: src}
	cfg := Config{Events: src}
	if withEngine {
		rig.engine = &fakeEngine{live: make(chan string), requests: make(chan url.Values, 10)}
		dir, err := os.MkdirTemp("", "hushev")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		sock := filepath.Join(dir, "e.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		esrv := &http.Server{Handler: rig.engine, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = esrv.Serve(ln) }()
		t.Cleanup(func() { _ = esrv.Close() })
		eng := newUnixStreamer(sock)
		t.Cleanup(eng.tr.CloseIdleConnections)
		cfg.EngineEvents = eng
	}
	srv := httptest.NewServer(New(cfg))
	t.Cleanup(srv.Close)
	rig.url = srv.URL
	return rig
}

// createSecret writes a secret record and waits until its event is in the
// history, so the caller may take a time that is after it.
func (r *eventsRig) createSecret(t *testing.T, id string) {
	t.Helper()
	ctx := context.Background()
	if _, err := r.st.Table("secrets").Create(ctx, id, id, []byte(`{"id":"`+id+`","name":"`+id+`"}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.src.Subscribe(ctx, hushevents.Filter{}, time.Unix(0, 0), time.Time{}, false); err != nil {
		t.Fatal(err)
	}
}

func engineLine(name string, t time.Time) string {
	return fmt.Sprintf(`{"status":"start","id":"c1","Type":"container","Action":"start","Actor":{"ID":"c1","Attributes":{"name":%q}},"scope":"local","time":%d,"timeNano":%d}`,
		name, t.Unix(), t.UnixNano())
}

// summary is "type action name" of an event line.
func summary(t *testing.T, line string) string {
	t.Helper()
	var m struct {
		Type, Action string
		Actor        struct{ Attributes map[string]string }
		Scope        string `json:"scope"`
	}
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("line %q: %v", line, err)
	}
	return m.Type + " " + m.Action + " " + m.Actor.Attributes["name"] + " " + m.Scope
}

func readAll(t *testing.T, resp *http.Response) []string {
	t.Helper()
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		out = append(out, summary(t, sc.Text()))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// lineReader returns a function that reads the stream's next line,
// failing the test when none comes within a bound (a missing event must
// fail, not hang) or the stream ends.
func lineReader(t *testing.T, resp *http.Response) func() string {
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		resp.Body.Close()
		for range lines {
		}
	})
	return func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("stream ended")
			}
			return summary(t, l)
		case <-time.After(10 * time.Second):
			t.Fatal("no line within 10s")
		}
		return ""
	}
}

func get(t *testing.T, rawURL string) *http.Response {
	t.Helper()
	resp, err := http.Get(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestEventsPastMergedByTime(t *testing.T) {
	r := newEventsRig(t, true)
	t0 := time.Now()
	r.createSecret(t, "one")
	t1 := time.Now()
	r.createSecret(t, "two")
	t2 := time.Now()
	r.engine.history = []string{engineLine("c-before", t0), engineLine("c-mid", t1), engineLine("c-after", t2)}
	time.Sleep(time.Millisecond) // until must be in the past for the engine too
	until := time.Now()

	tests := []struct {
		name, filters string
		want          []string
	}{
		{"all", ``, []string{"container start c-before local", "secret create one swarm", "container start c-mid local",
			"secret create two swarm", "container start c-after local"}},
		// The fake engine does not filter; what it sends passes unchanged.
		{"scope local excludes hush's", `{"scope":{"local":true}}`, []string{"container start c-before local", "container start c-mid local", "container start c-after local"}},
		{"secret name", `{"secret":{"two":true}}`, []string{"container start c-before local", "container start c-mid local", "secret create two swarm", "container start c-after local"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := url.Values{"since": {unixNano(t0.Add(-time.Second))}, "until": {unixNano(until)}}
			if tt.filters != "" {
				q.Set("filters", tt.filters)
			}
			resp := get(t, r.url+"/v1.41/events?"+q.Encode())
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-fake-json" {
				t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			got := readAll(t, resp)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			eq := <-r.engine.requests
			if eq.Get("since") != q.Get("since") || eq.Get("until") != q.Get("until") || eq.Get("filters") != tt.filters {
				t.Fatalf("engine asked %v, client %v", eq, q)
			}
		})
	}
}

func TestEventsLive(t *testing.T) {
	r := newEventsRig(t, true)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.url+"/v1.41/events?filters="+url.QueryEscape(`{"type":{"secret":true,"container":true}}`), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	eq := <-r.engine.requests
	if eq.Get("since") != "" || eq.Get("until") != "" || eq.Get("filters") != `{"type":{"secret":true,"container":true}}` {
		t.Fatalf("engine asked %v", eq)
	}
	t.Cleanup(cancel)
	nextLine := lineReader(t, resp)
	// Each line arrives on its own, flushed, while the stream stays open.
	r.engine.live <- engineLine("c1", time.Now())
	if got := nextLine(); got != "container start c1 local" {
		t.Fatalf("first line %q", got)
	}
	r.createSecret(t, "live1")
	if got := nextLine(); got != "secret create live1 swarm" {
		t.Fatalf("second line %q", got)
	}
	r.engine.live <- engineLine("c2", time.Now())
	if got := nextLine(); got != "container start c2 local" {
		t.Fatalf("third line %q", got)
	}
	// The client goes: the engine request and every goroutine of the
	// stream end.
	cancel()
	resp.Body.Close()
	waitGoroutines(t)
}

func TestEventsEngineEndEndsStream(t *testing.T) {
	r := newEventsRig(t, true)
	resp := get(t, r.url+"/events")
	<-r.engine.requests
	close(r.engine.live) // the engine ends its stream
	if got := readAll(t, resp); len(got) != 0 {
		t.Fatalf("lines %v", got)
	}
	waitGoroutines(t)
}

func TestEventsSinceThenLive(t *testing.T) {
	r := newEventsRig(t, true)
	t0 := time.Now()
	r.createSecret(t, "old")
	r.engine.history = []string{engineLine("c-old", t0)}
	resp := get(t, r.url+"/v1.41/events?since="+unixNano(t0.Add(-time.Second)))
	defer resp.Body.Close()
	first, second := <-r.engine.requests, <-r.engine.requests
	hUntil, _ := hushevents.ParseTime(first.Get("until"))
	lSince, _ := hushevents.ParseTime(second.Get("since"))
	if first.Get("since") != unixNano(t0.Add(-time.Second)) || hUntil.IsZero() || second.Get("until") != "" ||
		!lSince.Equal(hUntil.Add(time.Nanosecond)) {
		t.Fatalf("engine asked %v then %v", first, second)
	}
	nextLine := lineReader(t, resp)
	got := []string{nextLine(), nextLine()}
	r.createSecret(t, "new")
	got = append(got, nextLine())
	want := []string{"container start c-old local", "secret create old swarm", "secret create new swarm"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestEventsWithoutEngine(t *testing.T) {
	r := newEventsRig(t, false)
	r.createSecret(t, "solo")
	resp := get(t, r.url+"/events?since=0&until="+unixNano(time.Now()))
	if resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("content type %q", resp.Header.Get("Content-Type"))
	}
	if got := readAll(t, resp); strings.Join(got, ",") != "secret create solo swarm" {
		t.Fatalf("got %v", got)
	}
}

func TestEventsEngineDown(t *testing.T) {
	r := newEventsRig(t, false)
	srv := httptest.NewServer(New(Config{Events: r.src, EngineEvents: newUnixStreamer(filepath.Join(t.TempDir(), "missing.sock"))}))
	defer srv.Close()
	resp := get(t, srv.URL+"/events")
	defer resp.Body.Close()
	var e errorBody
	_ = json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(e.Message, "is not reachable") {
		t.Fatalf("%d %q", resp.StatusCode, e.Message)
	}
}

func TestEventsBadRequests(t *testing.T) {
	r := newEventsRig(t, true)
	tests := []struct{ query, want string }{
		{"since=abc", `strconv.ParseInt: parsing "abc": invalid syntax`},
		{"until=1.5x", `strconv.ParseUint: parsing "5x": invalid syntax`},
		{"since=5&until=3", "`since` time (5) cannot be after `until` time (3)"},
		{"filters=xx", "invalid character 'x' looking for beginning of value"},
		{"filters=" + url.QueryEscape(`{"foo":{"bar":true}}`), "Invalid filter 'foo'"},
	}
	for _, tt := range tests {
		resp := get(t, r.url+"/v1.41/events?"+tt.query)
		var e errorBody
		_ = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || e.Message != tt.want {
			t.Errorf("%s: %d %q, want 400 %q", tt.query, resp.StatusCode, e.Message, tt.want)
		}
	}
	select {
	case q := <-r.engine.requests:
		t.Fatalf("a refused request reached the engine: %v", q)
	default:
	}
}

// waitGoroutines waits (bounded) until no goroutine of the events handler
// is left (idle keep-alive connections of the HTTP clients may stay; they
// are not the handler's): a leak fails the test with the stacks.
func waitGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var left []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "api.(*Server).events") || strings.Contains(g, "api.readLines") {
				left = append(left, g)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of the events handler left:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
