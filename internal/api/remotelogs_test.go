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
