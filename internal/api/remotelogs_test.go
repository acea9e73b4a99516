package api

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// remoteCalls is a RemoteLogSource that records what it was asked and
// answers one multiplexed stdout frame.
type remoteCalls struct{ asked *[]string }

func (r remoteCalls) TaskLogs(_ context.Context, nodeID, taskID string, follow bool, tail string, ts bool, since string) (io.ReadCloser, error) {
	*r.asked = append(*r.asked, nodeID+"/"+taskID+" tail="+tail)
	line := []byte("remote line\n")
	hdr := []byte{1, 0, 0, 0, 0, 0, 0, byte(len(line))}
	return io.NopCloser(bytes.NewReader(append(hdr, line...))), nil
}

// A task placed on another node is read from that node (RemoteLogs, with
// its node and task, never a container ID), this node's own task from the
// local engine.
func TestLogsOfRemoteTask(t *testing.T) {
	_, svcs := newServicesServer(t)
	local := 0
	var asked []string
	srv := New(Config{Services: svcs, Node: Node{ID: "node1"}, Version: "test", Logs: countingLogs{&local},
		RemoteLogs: remoteCalls{&asked}})
	for _, tc := range []struct{ id, node string }{{"task1", "node1"}, {"task2", "node2"}} {
		task := model.Task{}
		task.ID, task.ServiceID, task.NodeID = tc.id, "svc1", tc.node
		task.Status.ContainerStatus = &swarm.ContainerStatus{ContainerID: "c-" + tc.id}
		b, _ := json.Marshal(&task)
		if _, err := svcs.Store().Table(model.TasksTable).Create(context.Background(), task.ID, "", b); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		task         string
		local, asked int
		body         string
	}{
		{"task1", 1, 0, ""},
		{"task2", 0, 1, "remote line"},
	} {
		local, asked = 0, nil
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1.41/tasks/"+tc.task+"/logs?stdout=1&tail=3", nil))
		if rec.Code != 200 || local != tc.local || len(asked) != tc.asked || !strings.Contains(rec.Body.String(), tc.body) {
			t.Fatalf("%s: %d, local %d, remote %v, body %q", tc.task, rec.Code, local, asked, rec.Body)
		}
		if tc.asked == 1 && asked[0] != "node2/task2 tail=3" {
			t.Fatalf("remote asked %v", asked)
		}
	}
}

// movingRemote is a RemoteLogSource whose node's dispatcher session moves
// to another manager after each stream: every stream ends early (the relay
// broke), the first after two lines; the second stream's call marks the
// task complete in the store, so the follower has no reason to go on.
type movingRemote struct {
	t     *testing.T
	svcs  interface{ Store() *store.Store }
	calls *[]string
}

func (m movingRemote) TaskLogs(ctx context.Context, nodeID, taskID string, follow bool, tail string, ts bool, since string) (io.ReadCloser, error) {
	*m.calls = append(*m.calls, fmt.Sprintf("follow=%v ts=%v tail=%s since=%s", follow, ts, tail, since))
	frame := func(line string) []byte {
		hdr := []byte{1, 0, 0, 0, 0, 0, 0, byte(len(line))}
		return append(hdr, line...)
	}
	var out []byte
	switch len(*m.calls) {
	case 1:
		out = append(frame("2026-01-01T00:00:01.000000001Z line 1\n"), frame("2026-01-01T00:00:02.000000002Z line 2\n")...)
	case 2:
		out = frame("2026-01-01T00:00:03.000000003Z line 3\n")
		setTaskState(ctx, m.t, m.svcs.Store(), taskID, swarm.TaskStateComplete)
	default:
		return nil, errors.New("asked again after the task ended")
	}
	return io.NopCloser(bytes.NewReader(out)), nil
}

func setTaskState(ctx context.Context, t *testing.T, st *store.Store, id string, state swarm.TaskState) {
	t.Helper()
	tbl := st.Table(model.TasksTable)
	o, err := tbl.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := model.Decode[model.Task](o.Value)
	if err != nil {
		t.Fatal(err)
	}
	task.Status.State = state
	b, _ := json.Marshal(task)
	if _, err := tbl.Update(ctx, id, o.ModRev, b); err != nil {
		t.Fatal(err)
	}
}

// TestLogsFollowAcrossSessionMove: `service logs -f` of a task on another
// node goes on when the node's stream breaks while the task still runs
// (its dispatcher session moved to another manager, or the manager relaying
// it went away): the stream is asked for again from just after the last
// line's time, so no line is lost or repeated, and the timestamps hush asks
// for to know that time are not shown unless the client asked for them.
// Swarm's follow survives a node's move between managers; hush's ended,
// and the docker CLI exited 0 while the task ran on.
func TestLogsFollowAcrossSessionMove(t *testing.T) {
	for _, tc := range []struct {
		name   string
		query  string
		prefix string
	}{
		{"plain", "", ""},
		{"timestamps", "&timestamps=1", "2026-01-01T00:00:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, svcs := newServicesServer(t)
			ctx := context.Background()
			var calls []string
			srv := New(Config{Services: svcs, Node: Node{ID: "node1"}, Version: "test", Logs: countingLogs{new(int)},
				RemoteLogs: movingRemote{t: t, svcs: svcs, calls: &calls}})
			task := model.Task{}
			task.ID, task.ServiceID, task.NodeID = "task2", "svc1", "node2"
			task.DesiredState, task.Status.State = swarm.TaskStateRunning, swarm.TaskStateRunning
			task.Status.ContainerStatus = &swarm.ContainerStatus{ContainerID: "c-task2"}
			b, _ := json.Marshal(&task)
			if _, err := svcs.Store().Table(model.TasksTable).Create(ctx, task.ID, "", b); err != nil {
				t.Fatal(err)
			}
			// The bound only keeps a follower that never ends from hanging the test.
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1.41/tasks/task2/logs?follow=1&stdout=1&tail=5"+tc.query, nil).WithContext(rctx))
			if rctx.Err() != nil {
				t.Fatal("the follower did not end once the task was complete")
			}
			var lines []string
			for body := rec.Body.Bytes(); len(body) >= 8; {
				n := int(binary.BigEndian.Uint32(body[4:8]))
				lines = append(lines, string(body[8:8+n]))
				body = body[8+n:]
			}
			want := []string{"line 1\n", "line 2\n", "line 3\n"}
			if len(lines) != len(want) {
				t.Fatalf("lines %q, want %q (calls %q)", lines, want, calls)
			}
			for i, l := range lines {
				if !strings.HasPrefix(l, tc.prefix) || !strings.HasSuffix(l, want[i]) || tc.prefix == "" && l != want[i] {
					t.Fatalf("line %d: %q, want %q with prefix %q", i, l, want[i], tc.prefix)
				}
			}
			wantCalls := []string{
				"follow=true ts=true tail=5 since=",
				"follow=true ts=true tail=all since=1767225602.000000003",
			}
			if strings.Join(calls, "|") != strings.Join(wantCalls, "|") {
				t.Fatalf("calls %q, want %q", calls, wantCalls)
			}
		})
	}
}

// downNodes is a RemoteLogSource whose nodes named "down…" hold no
// dispatcher session with any manager; the others answer one line.
type downNodes struct{}

func (downNodes) TaskLogs(_ context.Context, nodeID, taskID string, _ bool, _ string, _ bool, _ string) (io.ReadCloser, error) {
	if strings.HasPrefix(nodeID, "down") {
		return nil, fmt.Errorf("%w: node %s holds no dispatcher session with any manager", ErrNodeNotConnected, nodeID)
	}
	line := "line of " + taskID + "\n"
	return io.NopCloser(bytes.NewReader(append([]byte{1, 0, 0, 0, 0, 0, 0, byte(len(line))}, line...))), nil
}

// TestLogsOfDownNodeSaySo: `service logs` of a service with tasks on nodes
// that no manager can reach ends, after the lines it could get, with
// Swarm's system-error frame naming each such node once (the docker CLI
// prints `error from daemon in stream: Error grabbing logs: …` and exits
// 1); hush left those tasks out without a word, so the CLI printed
// nothing and exited 0. A followed stream has no end to say it at, as in
// Swarm.
func TestLogsOfDownNodeSaySo(t *testing.T) {
	srv, svcs := newServicesServer(t)
	ctx := context.Background()
	srv = New(Config{Services: svcs, Cluster: srv.Cluster, Node: srv.Node, Version: "test", Logs: countingLogs{new(int)}, RemoteLogs: downNodes{}})
	code, out := do(t, srv, "POST", "/v1.41/services/create", `{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}}`)
	if code != 201 {
		t.Fatalf("create: %d %s", code, out)
	}
	var created swarm.ServiceCreateResponse
	if err := json.Unmarshal([]byte(out), &created); err != nil {
		t.Fatal(err)
	}
	for i, node := range []string{"down2", "up1", "down1", "down2"} {
		task := model.Task{}
		task.ID, task.ServiceID, task.NodeID, task.Slot = fmt.Sprintf("task%d", i), created.ID, node, i+1
		task.DesiredState, task.Status.State = swarm.TaskStateRunning, swarm.TaskStateRunning
		task.Status.ContainerStatus = &swarm.ContainerStatus{ContainerID: "c" + task.ID}
		b, _ := json.Marshal(&task)
		if _, err := svcs.Store().Table(model.TasksTable).Create(ctx, task.ID, "", b); err != nil {
			t.Fatal(err)
		}
	}
	const want = "Error grabbing logs: rpc error: code = Unknown desc = warning: incomplete log stream. some logs could not be retrieved for the following reasons: node down1 is not available, node down2 is not available\n"
	for _, tc := range []struct {
		query  string
		frames []string
	}{
		{"stdout=1", []string{"1:line of task1\n", "3:" + want}},
		{"stdout=1&stderr=1&details=1", []string{"1:com.docker.swarm.node.id=up1,com.docker.swarm.service.id=" + created.ID + ",com.docker.swarm.task.id=task1 line of task1\n", "3:" + want}},
	} {
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1.41/services/web/logs?"+tc.query, nil))
		var frames []string
		for body := rec.Body.Bytes(); len(body) >= 8; {
			n := int(binary.BigEndian.Uint32(body[4:8]))
			frames = append(frames, fmt.Sprintf("%d:%s", body[0], body[8:8+n]))
			body = body[8+n:]
		}
		if rec.Code != 200 || strings.Join(frames, "|") != strings.Join(tc.frames, "|") {
			t.Fatalf("%s: %d, frames %q, want %q", tc.query, rec.Code, frames, tc.frames)
		}
	}
}
