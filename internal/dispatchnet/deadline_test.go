package dispatchnet

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/pki"
)

// TestCallBodyDeadline: a node that starts a call's body and never ends it
// (a stalled or hostile peer) gets an answer once the call's deadline has
// passed, rather than holding the manager's handler, and its buffers, for
// as long as it keeps the connection open: the bodies are bounded in size,
// and must be in time too. The session's own body (the description) is
// held to the same deadline.
func TestCallBodyDeadline(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	m := serve(t, c, f, nil, func(sc *ServerConfig) { sc.WriteTimeout = 300 * time.Millisecond })
	s := open(t, connector(t, c, w, []string{m.addr}, nil))
	next(t, s)
	for _, path := range []string{pathStatus, pathTask, pathHeartbeat, pathRegistryAuth, pathSession} {
		t.Run(path, func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pw.Close()
			go func() { _, _ = pw.Write([]byte(`{"TaskID":`)) }()
			// The bound is the test's, far past the call's deadline: the
			// answer must come, not come fast.
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+path, pr)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set(SessionHeader, s.id)
			resp, err := s.hc.Do(req)
			if err != nil {
				t.Fatalf("no answer to a stalled body: %v", err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d, want 400", resp.StatusCode)
			}
		})
	}
}
