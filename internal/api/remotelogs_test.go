package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/model"
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
