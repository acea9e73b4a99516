package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
)

func TestErrorTable(t *testing.T) {
	const opaque = "" // the message is replaced by an ID'd generic text
	tests := []struct {
		err  error
		code int
		msg  string
	}{
		{errdefs.InvalidArgument("bad %s", "x"), 400, "rpc error: code = InvalidArgument desc = bad x"},
		{errdefs.AlreadyExists("dup"), 409, "rpc error: code = AlreadyExists desc = dup"},
		{errdefs.NotFound("secret a not found"), 404, "secret a not found"},
		// A stale version is the client's conflict, with Swarm's text.
		{errdefs.OutOfSequence(), 409, "rpc error: code = Unknown desc = update out of sequence"},
		{fmt.Errorf("services: %w", errdefs.OutOfSequence()), 409, "rpc error: code = Unknown desc = update out of sequence"},
		{errdefs.Unknown("attempting to demote the last manager of the swarm"), 500, "rpc error: code = Unknown desc = attempting to demote the last manager of the swarm"},
		{errdefs.Unauthorized("nope"), 401, "nope"},
		{errdefs.Unavailable("locked"), 503, "locked"},
		{errdefs.NoSpace("store full: limit 10 bytes"), 507, "store full: limit 10 bytes"},
		{fmt.Errorf("store: etcd: %w: %w", errdefs.ErrUnavailable, errors.New("/var/lib/hush/member")), 503, "rpc error: code = Unavailable desc = the cluster store is unavailable, try again"},
		{store.ErrNotFound, 404, store.ErrNotFound.Error()},
		// No quorum: dockerd's own text (no rpc prefix), whatever etcd said.
		{fmt.Errorf("store: etcd: %w: %w", errdefs.ErrNoLeader, errors.New("etcdserver: request timed out")), 503, "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online."},
		{fmt.Errorf("create: %w", store.ErrNoLeader), 503, errdefs.NoLeaderMessage},
		{errdefs.FailedPrecondition("can't remove member from the raft: this would result in a loss of quorum"), 400, "rpc error: code = FailedPrecondition desc = can't remove member from the raft: this would result in a loss of quorum"},
		{errors.New("open /var/lib/hush/key: permission denied"), 500, opaque},
		{errors.Join(errdefs.ErrInternal, errors.New("/path/secret")), 500, opaque},
		{fmt.Errorf("decode: %w: %w", errdefs.ErrInternal, errors.New("json: bad")), 500, opaque},
	}
	for _, tt := range tests {
		if c := statusOf(tt.err); c != tt.code {
			t.Errorf("%v: status %d want %d", tt.err, c, tt.code)
		}
		m, ok := message(tt.err)
		if tt.msg == opaque {
			if ok {
				t.Errorf("%v: message %q reaches the client", tt.err, m)
			}
			continue
		}
		if !ok || m != tt.msg {
			t.Errorf("%v: message %q (%v) want %q", tt.err, m, ok, tt.msg)
		}
	}
}

// TestOpaqueErrorLogged: an uncategorised error answers 500 with a generic
// text and an ID, and the log carries the full cause under that ID.
func TestOpaqueErrorLogged(t *testing.T) {
	var logBuf bytes.Buffer
	s := &Server{log: slog.New(slog.NewJSONHandler(&logBuf, nil))}
	cause := errors.New("open /var/lib/hush/data/member/wal: input/output error")
	rec := httptest.NewRecorder()
	s.writeError(rec, httptest.NewRequest("GET", "/secrets", nil), fmt.Errorf("list secrets: %w", cause))
	if rec.Code != 500 {
		t.Fatalf("status %d", rec.Code)
	}
	var body errorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`^internal error \(ID ([0-9a-f]{16})\): see hushd's log$`).FindStringSubmatch(body.Message)
	if m == nil {
		t.Fatalf("message %q", body.Message)
	}
	if strings.Contains(rec.Body.String(), "/var/lib") || strings.Contains(rec.Body.String(), "input/output") {
		t.Fatalf("cause leaked: %s", rec.Body.String())
	}
	var entry struct {
		ErrorID string `json:"error_id"`
		Err     string `json:"err"`
	}
	if err := json.Unmarshal(logBuf.Bytes(), &entry); err != nil {
		t.Fatalf("log %q: %v", logBuf.String(), err)
	}
	if entry.ErrorID != m[1] || !strings.Contains(entry.Err, cause.Error()) {
		t.Fatalf("log entry %+v, want ID %s and the cause", entry, m[1])
	}
	// Two failures get two IDs.
	rec2 := httptest.NewRecorder()
	s.writeError(rec2, httptest.NewRequest("GET", "/secrets", nil), cause)
	if rec2.Body.String() == rec.Body.String() {
		t.Fatal("same error ID twice")
	}
}
