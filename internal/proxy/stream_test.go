package proxy

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
)

func TestOpen(t *testing.T) {
	got := make(chan *http.Request, 1)
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		got <- req
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("{\"a\":1}\n"))
		w.(http.Flusher).Flush()
		<-req.Context().Done() // an endless stream, until the caller closes
	}))
	ctx := context.Background()
	resp, err := r.p.Open(ctx, http.MethodGet, "/v1.41/events?since=1&filters=%7B%7D", http.Header{"Accept": {"application/json"}, "Connection": {"x"}})
	if err != nil {
		t.Fatal(err)
	}
	req := <-got
	if req.URL.Path != "/v1.41/events" || req.URL.RawQuery != "since=1&filters=%7B%7D" || req.Header.Get("Accept") != "application/json" || req.Header.Get("Connection") != "" {
		t.Fatalf("engine saw %s %s?%s %v", req.Method, req.URL.Path, req.URL.RawQuery, req.Header)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "{\"a\":1}\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	// Closing the body ends the engine request.
	if err := resp.Body.Close(); err != nil {
		t.Fatal(err)
	}
	<-req.Context().Done()
}

func TestOpenEngineDown(t *testing.T) {
	r := newRig(t, nil)
	_, err := r.p.Open(context.Background(), http.MethodGet, "/events", nil)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.HasPrefix(err.Error(), "hush: the Docker Engine at "+r.engine+" is not reachable: ") {
		t.Fatalf("Open with no engine: %v", err)
	}
}

func TestOpenAbortedByClose(t *testing.T) {
	started := make(chan struct{})
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		close(started)
		<-req.Context().Done()
	}))
	resp, err := r.p.Open(context.Background(), http.MethodGet, "/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-started
	_ = r.p.Close()
	var buf [16]byte
	if _, err := resp.Body.Read(buf[:]); err == nil {
		t.Fatal("read after Close succeeded")
	}
}
