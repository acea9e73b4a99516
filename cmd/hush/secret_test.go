package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/moby/moby/api/types/swarm"
)

// TestRotationContracts: what hushd sends decodes into the CLI's copies
// with nothing lost, and what the CLI sends is what hushd reads.
func TestRotationContracts(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	srv := api.VersionsResponse{ID: "id1", Name: "pw", Version: swarm.Version{Index: 9}, DataVersion: 2,
		Versions: []api.VersionEntry{{Version: 2, CreatedAt: at, Fingerprint: "ab", Current: true,
			HeldBy: []api.Holder{{Task: "t", TaskName: "web.1", Service: "web", ContainerID: "c", State: "running", DesiredState: "running"},
				{Kind: "container", ContainerName: "app", ContainerID: "d"}}}},
		Services: []api.ServiceRollout{{ID: "s", Name: "web", UpdateState: "updating", UpdateMessage: "m"}}}
	b, _ := json.Marshal(srv)
	var cli versionsResponse
	if err := json.Unmarshal(b, &cli); err != nil {
		t.Fatal(err)
	}
	want := versionsResponse{ID: "id1", Name: "pw", DataVersion: 2,
		Versions: []versionEntry{{Version: 2, CreatedAt: at, Fingerprint: "ab", Current: true,
			HeldBy: []holder{{Task: "t", TaskName: "web.1", Service: "web", ContainerID: "c", State: "running", DesiredState: "running"},
				{Kind: "container", ContainerName: "app", ContainerID: "d"}}}},
		Services: []serviceRollout{{ID: "s", Name: "web", UpdateState: "updating", UpdateMessage: "m"}}}
	if !reflect.DeepEqual(cli, want) {
		t.Errorf("versions response decodes as %+v", cli)
	}
	for _, pair := range [][2]any{
		{rotateRequest{Data: []byte("v")}, api.RotateRequest{Data: []byte("v")}},
		{rollbackRequest{To: 3}, api.RollbackRequest{To: 3}},
		{rotateResponse{DataVersion: 4, Changed: true}, api.RotateResponse{DataVersion: 4, Changed: true}},
	} {
		a, _ := json.Marshal(pair[0])
		b, _ := json.Marshal(pair[1])
		if !bytes.Equal(a, b) {
			t.Errorf("%T %s, hushd's %s", pair[0], a, b)
		}
	}
}

func TestPrintVersions(t *testing.T) {
	vr := &versionsResponse{Versions: []versionEntry{
		{Version: 1, CreatedAt: time.Unix(0, 0), Fingerprint: "", Destroyed: true},
		{Version: 2, CreatedAt: time.Unix(0, 0), Fingerprint: "f2", Current: true, HeldBy: []holder{
			{Task: "t1", TaskName: "web.1", ContainerID: "0123456789abcdef"}, {Task: "t2"},
			{Kind: "container", ContainerName: "app", ContainerID: "fedcba9876543210"}}},
	}}
	tests := []struct {
		format  string
		want    []string // substrings, in order
		wantErr bool
	}{
		{"", []string{"VERSION", "CREATED", "FINGERPRINT", "HELD BY", "\n1 ", "(destroyed)", "-", "\n2 *", "f2", "web.1 (0123456789ab), t2, container app (fedcba987654)"}, false},
		{"{{.Version}}:{{.Fingerprint}}", []string{"1:(destroyed)\n2 *:f2\n"}, false},
		{"table {{.Version}}\t{{.HeldBy}}", []string{"VERSION", "HELD BY", "2 *", "web.1"}, false},
		{"json", []string{`"Version":"1"`, `"Destroyed":true`, `"Current":true`, `"Kind":"container","ContainerName":"app"`}, false},
		{"{{.Nope}}", nil, true},
		{"{{", nil, true},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		err := printVersions(&buf, tt.format, vr)
		if (err != nil) != tt.wantErr {
			t.Errorf("%q: err %v", tt.format, err)
			continue
		}
		out := buf.String()
		for _, w := range tt.want {
			i := strings.Index(out, w)
			if i < 0 {
				t.Errorf("%q: output lacks %q:\n%s", tt.format, w, out)
				break
			}
			out = out[i+len(w):]
		}
	}
}

// TestRotateCalls: rotate, rollback and destroy call hushd's endpoints
// with the name escaped, and report the answer.
func TestRotateCalls(t *testing.T) {
	var got []string
	host := fakeHushd(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.EscapedPath())
		switch {
		case r.Method == http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		case strings.HasSuffix(r.URL.Path, "/rollback"):
			var req api.RollbackRequest
			_ = json.NewDecoder(r.Body).Decode(&req)
			_ = json.NewEncoder(w).Encode(api.RotateResponse{DataVersion: 5, Changed: req.To == 2})
		default:
			_ = json.NewEncoder(w).Encode(api.RotateResponse{DataVersion: 3, Changed: true})
		}
	}))
	env := map[string]string{"DOCKER_HOST": host}
	file := t.TempDir() + "/v"
	if err := os.WriteFile(file, []byte("value"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"secret", "rotate", "pw", file}, 0, "secret pw: version 3 is current"},
		{[]string{"config", "rollback", "--to", "2", "cf"}, 0, "config cf: version 5 is current"},
		{[]string{"secret", "rollback", "pw"}, 0, "unchanged"},
		{[]string{"secret", "destroy", "--version", "1", "pw"}, 0, "version 1 destroyed"},
		{[]string{"secret", "destroy", "pw"}, 2, ""},
		{[]string{"secret", "rotate", "pw"}, 2, ""},
		{[]string{"secret", "rotate", "pw", file + ".missing"}, 1, ""},
	} {
		r := runHush(t, env, tt.args...)
		if r.code != tt.code || !strings.Contains(r.stdout, tt.out) {
			t.Errorf("%v: exit %d\n%s\n%s", tt.args, r.code, r.stdout, r.stderr)
		}
	}
	want := []string{"POST /hush/v1/secrets/pw/rotate", "POST /hush/v1/configs/cf/rollback", "POST /hush/v1/secrets/pw/rollback", "DELETE /hush/v1/secrets/pw/versions/1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
}

func TestRolloutState(t *testing.T) {
	cur := func(state, msg string, holders ...holder) *versionsResponse {
		return &versionsResponse{DataVersion: 2,
			Versions: []versionEntry{{Version: 1}, {Version: 2, Current: true, HeldBy: holders}},
			Services: []serviceRollout{{Name: "web", UpdateState: state, UpdateMessage: msg}}}
	}
	running := holder{Task: "t", State: "running", DesiredState: "running"}
	for _, tt := range []struct {
		name       string
		vr         *versionsResponse
		done, stop bool
	}{
		{"done", cur("completed", "update completed", running), true, false},
		{"updating", cur("updating", "rotation in progress: secret pw version 2", running), false, false},
		{"starting", cur("completed", "", holder{Task: "t", State: "starting", DesiredState: "running"}), false, false},
		{"old holder", &versionsResponse{DataVersion: 2, Versions: []versionEntry{{Version: 1, HeldBy: []holder{running}}, {Version: 2, Current: true}}}, false, false},
		{"paused", cur("paused", "update paused", running), true, true},
		{"rotation rolled back", cur("rollback_completed", "rotation rolled back: task t failed", running), true, true},
		{"earlier service rollback", cur("rollback_completed", "rollback completed", running), true, false},
		{"container catching up", &versionsResponse{DataVersion: 2, Versions: []versionEntry{{Version: 1, HeldBy: []holder{{Kind: "container", ContainerName: "app", DeliveryAttempts: 2, DeliveryError: "swap: busy"}}}, {Version: 2, Current: true}}}, false, false},
		{"container unreachable", &versionsResponse{DataVersion: 2, Versions: []versionEntry{{Version: 1, HeldBy: []holder{{Kind: "container", ContainerName: "app", DeliveryAttempts: 3, DeliveryError: "swap: busy"}}}, {Version: 2, Current: true}}}, false, true},
	} {
		if got := rolledOut(tt.vr); got != tt.done {
			t.Errorf("%s: rolledOut %v", tt.name, got)
		}
		if got := stuck(tt.vr) != nil; got != tt.stop {
			t.Errorf("%s: stuck %v", tt.name, got)
		}
	}
}
