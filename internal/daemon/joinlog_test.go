package daemon

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/swarm"
)

// TestJoinRefusalLogBounded: the join endpoint is served to anyone (a
// joiner has no certificate), and a refused join is logged with the node
// ID the request names before that ID is checked: a 64 KiB ID went into
// the manager's log whole, per request. The log keeps a bounded prefix.
func TestJoinRefusalLogBounded(t *testing.T) {
	var logged bytes.Buffer
	d := &Daemon{log: slog.New(slog.NewTextHandler(&logged, nil)), state: swarm.LocalNodeStateInactive}
	body, err := json.Marshal(joinRequest{Token: "SWMTKN-1-x", NodeID: strings.Repeat("n", 60<<10)})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	d.serveJoin(rec, httptest.NewRequest(http.MethodPost, joinPath, bytes.NewReader(body)))
	if rec.Code == http.StatusOK {
		t.Fatal("a join to an inactive node was admitted")
	}
	if !strings.Contains(logged.String(), "join refused") {
		t.Fatalf("no refusal logged: %q", logged.String())
	}
	if n := logged.Len(); n > 1024 {
		t.Fatalf("a refused join logged %d bytes", n)
	}
}
