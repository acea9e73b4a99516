package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/enginehost"
	"github.com/hush-secrets/hush/internal/testutil"
)

// shortDir is a temp dir with a path short enough for unix sockets.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "hushp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// serveUnix serves h on a fresh unix socket and returns its path.
func serveUnix(t testing.TB, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(shortDir(t), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

// syncBuffer collects log output from many goroutines.
type syncBuffer = testutil.SyncBuffer

// rig is a fake engine behind a proxy.
type rig struct {
	engine string // engine socket
	proxy  string // proxy socket
	p      *Proxy
	logs   *syncBuffer
	client *http.Client
}

func newRig(t testing.TB, engine http.Handler) *rig {
	t.Helper()
	r := &rig{logs: &syncBuffer{}}
	if engine != nil {
		r.engine = serveUnix(t, engine)
	} else {
		r.engine = filepath.Join(shortDir(t), "missing.sock")
	}
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.p = New(enginehost.Host{Path: r.engine}, r.engine, log)
	t.Cleanup(func() { _ = r.p.Close() })
	r.proxy = serveUnix(t, r.p)
	r.client = unixClient(r.proxy)
	t.Cleanup(r.client.CloseIdleConnections)
	return r
}

func unixClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableCompression: true,
	}}
}

func TestPassThrough(t *testing.T) {
	type seen struct {
		method, uri, host, ua, auth, hop, custom string
		body                                     []byte
	}
	got := make(chan seen, 1)
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.RequestURI, r.Host, r.UserAgent(), r.Header.Get("X-Registry-Auth"),
			r.Header.Get("X-Hop"), r.Header.Get("X-Custom"), b}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Docker-Experimental", "false")
		w.Header().Set("Ostype", "linux")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"Id":"abc","Warnings":[]}`)
	}))

	body := `{"Image":"busybox","Env":["PASSWORD=s3cret-value"]}`
	const uri = "/v1.41/containers/create?name=web&platform=linux%2Famd64&x=a+b"
	req, _ := http.NewRequest(http.MethodPost, "http://api.moby.localhost"+uri, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Docker-Client/28.2.2 (linux)")
	req.Header.Set("X-Registry-Auth", "eyJhdXRoIjoieCJ9")
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "dropped")
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)

	s := <-got
	if s.method != http.MethodPost || s.uri != uri {
		t.Errorf("engine saw %s %s, want POST %s", s.method, s.uri, uri)
	}
	if s.host != "api.moby.localhost" {
		t.Errorf("Host = %q", s.host)
	}
	if s.ua != "Docker-Client/28.2.2 (linux)" || s.auth != "eyJhdXRoIjoieCJ9" || s.custom != "kept" {
		t.Errorf("headers not passed: %+v", s)
	}
	if s.hop != "" {
		t.Errorf("hop-by-hop header X-Hop reached the engine: %q", s.hop)
	}
	if string(s.body) != body {
		t.Errorf("engine body = %q", s.body)
	}
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("Ostype") != "linux" ||
		resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Docker-Experimental") != "false" {
		t.Errorf("response = %d %v", resp.StatusCode, resp.Header)
	}
	if string(rb) != `{"Id":"abc","Warnings":[]}` {
		t.Errorf("response body = %q", rb)
	}
	if l := r.logs.String(); strings.Contains(l, "s3cret") || strings.Contains(l, "eyJhdXRo") || strings.Contains(l, "platform") {
		t.Errorf("log carries request data:\n%s", l)
	}
	// The proxy logs once the body is relayed, which may be just after the
	// client has read it.
	deadline := time.Now().Add(5 * time.Second)
	for l := r.logs.String(); !strings.Contains(l, "method=POST path=/v1.41/containers/create status=201"); l = r.logs.String() {
		if time.Now().After(deadline) {
			t.Fatalf("log lacks method/path/status:\n%s", l)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if l := r.logs.String(); strings.Contains(l, "s3cret") || strings.Contains(l, "eyJhdXRo") || strings.Contains(l, "platform") {
		t.Errorf("log carries request data:\n%s", l)
	}
}

func TestHeadAndNoBody(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 || len(r.TransferEncoding) != 0 {
			t.Errorf("bodyless request arrived with length %d, TE %v", r.ContentLength, r.TransferEncoding)
		}
		w.Header().Set("Api-Version", "1.41")
		w.Header().Set("Content-Length", "2")
		if r.Method != http.MethodHead {
			io.WriteString(w, "OK")
		}
	}))
	for _, m := range []string{http.MethodHead, http.MethodGet} {
		req, _ := http.NewRequest(m, "http://docker/_ping", nil)
		resp, err := r.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Api-Version") != "1.41" || resp.ContentLength != 2 {
			t.Errorf("%s: %d %v len %d", m, resp.StatusCode, resp.Header, resp.ContentLength)
		}
		if want := map[string]string{"HEAD": "", "GET": "OK"}[m]; string(b) != want {
			t.Errorf("%s body %q", m, b)
		}
	}
}

// TestRequestBodyStreams proves the request body reaches the engine while
// the client is still sending it: the client sends the rest only after
// the engine has seen the first part.
func TestRequestBodyStreams(t *testing.T) {
	firstSeen := make(chan struct{})
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(r.Body, buf); err != nil || string(buf) != "first" {
			t.Errorf("first part: %q %v", buf, err)
		}
		close(firstSeen)
		rest, _ := io.ReadAll(r.Body)
		io.WriteString(w, "got "+string(buf)+string(rest))
	}))
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("first"))
		select {
		case <-firstSeen:
			pw.Write([]byte(" second"))
			pw.Close()
		case <-time.After(5 * time.Second):
			pw.CloseWithError(errors.New("engine never saw the first part: request body buffered"))
		}
	}()
	resp, err := r.client.Post("http://docker/v1.41/images/load", "application/x-tar", pr)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "got first second" {
		t.Fatalf("body %q", b)
	}
}

// TestResponseStreams proves each chunk is flushed to the client as the
// engine writes it (docker logs -f, events, pull progress).
func TestResponseStreams(t *testing.T) {
	next := make(chan struct{})
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		for i := range 3 {
			io.WriteString(w, `{"status":"line`+string(rune('0'+i))+`"}`+"\n")
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-time.After(5 * time.Second):
				return
			}
		}
	}))
	resp, err := r.client.Get("http://docker/v1.41/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan string)
	go func() {
		br := bufio.NewReader(resp.Body)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				close(lines)
				return
			}
			lines <- l
		}
	}()
	for i := range 3 {
		select {
		case l := <-lines:
			if want := `{"status":"line` + string(rune('0'+i)) + `"}` + "\n"; l != want {
				t.Fatalf("line %d = %q", i, l)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("line %d not delivered while the stream is open", i)
		}
		next <- struct{}{}
	}
	if _, ok := <-lines; ok {
		t.Fatal("extra data")
	}
}

func TestClientCancelPropagates(t *testing.T) {
	started := make(chan struct{})
	cancelled := make(chan struct{})
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		close(started)
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-time.After(10 * time.Second):
		}
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/v1.41/containers/x/logs?follow=1&stdout=1", nil)
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-started
	cancel()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("client cancellation did not reach the engine")
	}
}

func TestCloseEndsStreams(t *testing.T) {
	started := make(chan struct{})
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
	}))
	resp, err := r.client.Get("http://docker/v1.41/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-started
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, resp.Body); close(done) }()
	r.p.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the stream")
	}
}

// fakeAttach is an engine attach endpoint: after the 101 it writes a
// greeting, echoes stdin until the client half-closes, then says bye and
// closes, as dockerd does when the container ends.
func fakeAttach(t testing.TB, greeting string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "tcp" || !strings.EqualFold(r.Header.Get("Connection"), "Upgrade") {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"+greeting)
		if _, err := io.Copy(conn, brw.Reader); err != nil {
			t.Errorf("engine echo: %v", err)
		}
		// EOF from the client's half-close.
		io.WriteString(conn, "bye")
	}
}

func TestUpgradeHalfClose(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v1.41/containers/c1/attach" || req.URL.RawQuery != "stream=1&stdin=1&stdout=1" {
			t.Errorf("engine saw %s", req.RequestURI)
		}
		fakeAttach(t, "hello ")(w, req)
	}))
	c, err := net.Dial("unix", r.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// Stdin sent together with the request lands in the server's read
	// buffer; it must reach the engine too.
	io.WriteString(c, "POST /v1.41/containers/c1/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: Docker-Client/28.2.2 (linux)\r\nContent-Type: text/plain\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nearly ")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Status != "101 UPGRADED" || resp.Header.Get("Upgrade") != "tcp" ||
		resp.Header.Get("Content-Type") != "application/vnd.docker.raw-stream" {
		t.Fatalf("head: %s %v", resp.Status, resp.Header)
	}
	io.WriteString(c, "ping")
	if err := c.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("read: %v (got %q)", err, out)
	}
	if string(out) != "hello early pingbye" {
		t.Fatalf("stream = %q", out)
	}
}

// TestUpgradeEngineEndsFirst: the engine closes (container exited) while
// the client still holds stdin open; the client must see EOF at once.
func TestUpgradeEngineEndsFirst(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		io.WriteString(conn, "HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
		io.WriteString(conn, "\x01\x00\x00\x00\x00\x00\x00\x03hi\n")
		conn.Close()
	}))
	c, err := net.Dial("unix", r.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(closeGrace / 2))
	io.WriteString(c, "POST /v1.44/exec/e1/start HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: 28\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n{\"Detach\":false,\"Tty\":false}")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("%v %v", resp, err)
	}
	out, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("no EOF after the engine ended: %v", err)
	}
	if string(out) != "\x01\x00\x00\x00\x00\x00\x00\x03hi\n" {
		t.Fatalf("stream = %q", out)
	}
}

// TestUpgradeRefused: an attach the engine answers with an ordinary error
// is relayed as such, and the client's connection stays usable.
func TestUpgradeRefused(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.HasSuffix(req.URL.Path, "/attach") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"message":"No such container: nope"}`)
			return
		}
		io.WriteString(w, "OK")
	}))
	c, err := net.Dial("unix", r.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /v1.41/containers/nope/attach?stream=1 HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 404 || string(b) != `{"message":"No such container: nope"}` {
		t.Fatalf("%d %q", resp.StatusCode, b)
	}
	io.WriteString(c, "GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "OK" {
		t.Fatalf("second request: %d %q", resp.StatusCode, b)
	}
}

// TestLegacyHijack: an attach without Upgrade headers, answered with a
// length-less 200 raw stream (old API versions), is tunnelled too.
func TestLegacyHijack(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n")
		io.Copy(conn, brw.Reader)
	}))
	c, err := net.Dial("unix", r.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /v1.20/containers/c1/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: docker\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	io.WriteString(c, "echo me")
	c.(*net.UnixConn).CloseWrite()
	out, err := io.ReadAll(br)
	if err != nil || string(out) != "echo me" {
		t.Fatalf("%q %v", out, err)
	}
}

func TestEngineDown(t *testing.T) {
	r := newRig(t, nil)
	check := func(resp *http.Response) {
		t.Helper()
		defer resp.Body.Close()
		var e struct{ Message string }
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatal(err)
		}
		want := "hush: the Docker Engine at " + r.engine + " is not reachable: "
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Content-Type") != "application/json" ||
			!strings.HasPrefix(e.Message, want) || !strings.Contains(e.Message, "no such file or directory") {
			t.Fatalf("%d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), e.Message)
		}
	}

	resp, err := r.client.Get("http://docker/v1.41/containers/json")
	if err != nil {
		t.Fatal(err)
	}
	check(resp)

	req, _ := http.NewRequest(http.MethodPost, "http://docker/v1.41/exec/e1/start", strings.NewReader(`{}`))
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "tcp")
	resp, err = r.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	check(resp)

	if _, err := r.p.Ping(context.Background()); err == nil || !strings.Contains(err.Error(), "is not reachable") {
		t.Fatalf("Ping: %v", err)
	}
}

func TestEngineRefuses(t *testing.T) {
	// A socket file nobody listens on: connection refused.
	sock := filepath.Join(shortDir(t), "dead.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	p := New(enginehost.Host{Path: sock}, sock, nil)
	defer p.Close()
	front := serveUnix(t, p)
	resp, err := unixClient(front).Get("http://docker/v1.41/info")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), "is not reachable") || !strings.Contains(string(b), "refused") {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}

func TestPing(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/_ping" {
			w.WriteHeader(404)
			return
		}
		w.Header().Set("API-Version", "1.41")
		io.WriteString(w, "OK")
	}))
	v, err := r.p.Ping(context.Background())
	if err != nil || v != "1.41" {
		t.Fatalf("Ping = %q, %v", v, err)
	}
}

func TestWantsHijack(t *testing.T) {
	for _, c := range []struct {
		method, path, conn string
		want               bool
	}{
		{"POST", "/v1.41/containers/x/attach", "Upgrade", true},
		{"POST", "/containers/x/attach", "", true},
		{"POST", "/v1.20/exec/x/start", "", true},
		{"POST", "/session", "Upgrade", true},
		{"POST", "/grpc", "keep-alive, upgrade", true},
		{"GET", "/v1.41/containers/x/attach/ws", "", false},
		{"POST", "/v1.41/containers/x/start", "", false},
		{"GET", "/v1.41/containers/json", "keep-alive", false},
		{"POST", "/vx/exec/x/start", "", false},
	} {
		r, _ := http.NewRequest(c.method, "http://docker"+c.path, nil)
		if c.conn != "" {
			r.Header.Set("Connection", c.conn)
		}
		if got := wantsHijack(r); got != c.want {
			t.Errorf("%s %s (%q) = %v", c.method, c.path, c.conn, got)
		}
	}
}
