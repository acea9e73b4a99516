package api

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// pipeLogs is a LogSource whose one container's output is a pipe the test
// writes to; like the engine's, the stream ends with the request.
type pipeLogs struct{ r *io.PipeReader }

func (p pipeLogs) Logs(ctx context.Context, _ string, _ bool, _ string, _ bool, _ string) (io.ReadCloser, error) {
	context.AfterFunc(ctx, func() { p.r.CloseWithError(ctx.Err()) })
	return p.r, nil
}

// TestLogsFollowFlushed: `service logs -f` through the server's own
// ResponseWriter wrapper gets each line while the workload still runs
// (nothing more is written, and the stream stays open, until the client has
// read the line).
func TestLogsFollowFlushed(t *testing.T) {
	srv, svcs := newServicesServer(t)
	ctx := context.Background()
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	srv = New(Config{Services: svcs, Cluster: srv.Cluster, Node: srv.Node, Version: "test", Logs: pipeLogs{pr}})

	task := model.Task{}
	task.ID, task.ServiceID, task.NodeID = "task1", "svc1", "node1"
	task.Status.ContainerStatus = &swarm.ContainerStatus{ContainerID: "c1"}
	b, err := json.Marshal(&task)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svcs.Store().Table(model.TasksTable).Create(ctx, task.ID, "", b); err != nil {
		t.Fatal(err)
	}

	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	// The bound only keeps a broken server from hanging the test.
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, ts.URL+"/v1.47/tasks/task1/logs?follow=1&stdout=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- err
			return
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		var hdr [8]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			got <- err
			return
		}
		line := make([]byte, binary.BigEndian.Uint32(hdr[4:]))
		if _, err := io.ReadFull(br, line); err != nil {
			got <- err
			return
		}
		if string(line) != "first\n" {
			t.Errorf("line %q", line)
		}
		got <- nil
	}()
	var h [8]byte
	h[0] = 1
	binary.BigEndian.PutUint32(h[4:], uint32(len("first\n")))
	if _, err := pw.Write(append(h[:], "first\n"...)); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the followed line never reached the client while the stream was open: %v", err)
	}
}

// TestStatusRecorderInterfaces: the server's wrapper passes on Flush, and
// Unwrap lets http.ResponseController reach the connection (Hijack,
// deadlines) for any handler behind it.
func TestStatusRecorderInterfaces(t *testing.T) {
	rec := httptest.NewRecorder()
	var w http.ResponseWriter = &statusRecorder{ResponseWriter: rec, code: http.StatusOK}
	f, ok := w.(http.Flusher)
	if !ok {
		t.Fatal("statusRecorder is not an http.Flusher")
	}
	f.Flush()
	if !rec.Flushed {
		t.Fatal("Flush did not reach the underlying writer")
	}
	if u, ok := w.(interface{ Unwrap() http.ResponseWriter }); !ok || u.Unwrap() != rec {
		t.Fatal("statusRecorder does not unwrap to the underlying writer")
	}

	hijacked := make(chan error, 1)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sr := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		c, brw, err := http.NewResponseController(sr).Hijack()
		if err == nil {
			_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nraw")
			_ = brw.Flush()
			c.Close()
		}
		hijacked <- err
	}))
	defer ts.Close()
	resp, err := http.Get(ts.URL)
	if err == nil {
		resp.Body.Close()
	}
	if err := <-hijacked; err != nil {
		t.Fatalf("Hijack through statusRecorder: %v", err)
	}
	if !strings.Contains(resp.Header.Get("Upgrade"), "tcp") {
		t.Fatalf("hijacked answer: %v", resp.Header)
	}
}

// countingLogs is a LogSource that records whether the engine was asked.
type countingLogs struct{ calls *int }

func (c countingLogs) Logs(context.Context, string, bool, string, bool, string) (io.ReadCloser, error) {
	*c.calls++
	return io.NopCloser(strings.NewReader("")), nil
}

// TestLogsParamsRefused: a tail or since the logs cannot honour is refused
// with Swarm's text before anything is streamed (hush answered 200 with
// no lines, as if the workload had printed nothing), and the engine is not
// asked.
func TestLogsParamsRefused(t *testing.T) {
	_, svcs := newServicesServer(t)
	calls := 0
	srv := New(Config{Services: svcs, Node: Node{ID: "node1"}, Version: "test", Logs: countingLogs{&calls}})
	task := model.Task{}
	task.ID, task.ServiceID, task.NodeID = "task1", "svc1", "node1"
	task.Status.ContainerStatus = &swarm.ContainerStatus{ContainerID: "c1"}
	b, _ := json.Marshal(&task)
	if _, err := svcs.Store().Table(model.TasksTable).Create(context.Background(), task.ID, "", b); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		query string
		code  int
		msg   string
	}{
		{"tail=foo", 400, `tail value must be a positive integer or "all"`},
		{"tail=1.5", 400, `tail value must be a positive integer or "all"`},
		{"tail=-1", 400, "negative tail values not supported"},
		{"since=2020-01-01", 400, `could not parse since timestamp: strconv.ParseInt: parsing "2020-01-01": invalid syntax`},
		{"since=1.x", 400, `could not parse since timestamp: strconv.ParseInt: parsing "x": invalid syntax`},
		{"tail=0", 200, ""},
		{"tail=all", 200, ""},
		{"tail=", 200, ""},
		{"since=1.5", 200, ""},
		{"since=-3", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			calls = 0
			req := httptest.NewRequest(http.MethodGet, "/v1.41/tasks/task1/logs?stdout=1&"+tt.query, nil)
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			if rec.Code != tt.code {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.code, rec.Body)
			}
			if tt.code != 200 {
				var e errorBody
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Message != tt.msg {
					t.Fatalf("body %s, want message %q", rec.Body, tt.msg)
				}
				if calls != 0 {
					t.Fatal("the engine was asked for logs after a refusal")
				}
			} else if calls != 1 {
				t.Fatalf("engine asked %d times", calls)
			}
		})
	}
}

// containerLogs is a LogSource that, followed, sends one line per container
// ("line of <container>") and then keeps the stream open until the request
// ends, as the engine does for a running container.
type containerLogs struct{}

func (containerLogs) Logs(ctx context.Context, id string, follow bool, _ string, _ bool, _ string) (io.ReadCloser, error) {
	line := "line of " + id + "\n"
	hdr := []byte{1, 0, 0, 0, 0, 0, 0, byte(len(line))}
	pr, pw := io.Pipe()
	go func() {
		if _, err := pw.Write(append(hdr, line...)); err != nil {
			return
		}
		if !follow {
			pw.Close()
			return
		}
		<-ctx.Done()
		pw.CloseWithError(ctx.Err())
	}()
	return pr, nil
}

// TestServiceLogsFollowNewTasks: `service logs -f` also follows the
// service's tasks that start after it began (an update, a restart, a
// scale-up), from their first line, as Swarm's does; hush followed only
// the containers that existed when the request came.
func TestServiceLogsFollowNewTasks(t *testing.T) {
	srv, svcs := newServicesServer(t)
	ctx := context.Background()
	srv = New(Config{Services: svcs, Cluster: srv.Cluster, Node: srv.Node, Version: "test", Logs: containerLogs{}})
	code, out := do(t, srv, "POST", "/v1.41/services/create", `{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}}`)
	if code != 201 {
		t.Fatalf("create: %d %s", code, out)
	}
	var created swarm.ServiceCreateResponse
	if err := json.Unmarshal([]byte(out), &created); err != nil {
		t.Fatal(err)
	}
	addTask := func(id string) {
		task := model.Task{}
		task.ID, task.ServiceID, task.NodeID, task.Slot = id, created.ID, "node1", 1
		task.DesiredState, task.Status.State = swarm.TaskStateRunning, swarm.TaskStateRunning
		task.Status.ContainerStatus = &swarm.ContainerStatus{ContainerID: "c-" + id}
		b, _ := json.Marshal(&task)
		if _, err := svcs.Store().Table(model.TasksTable).Create(ctx, task.ID, "", b); err != nil {
			t.Fatal(err)
		}
	}
	addTask("task1")

	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	// The bound only keeps a follower that misses the new task from
	// hanging the test.
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, ts.URL+"/v1.41/services/web/logs?follow=1&stdout=1&tail=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	next := func() string {
		var hdr [8]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		line := make([]byte, binary.BigEndian.Uint32(hdr[4:]))
		if _, err := io.ReadFull(br, line); err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		return string(line)
	}
	if l := next(); l != "line of c-task1\n" {
		t.Fatalf("first line %q", l)
	}
	addTask("task2")
	if l := next(); l != "line of c-task2\n" {
		t.Fatalf("second line %q, want the new task's", l)
	}
}
