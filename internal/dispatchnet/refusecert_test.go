package dispatchnet

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
)

// A certificate the role's refusal hook refuses (RefuseWorker for a
// worker's, RefuseManager for a manager's: an old certificate of a node
// whose role changed since) opens no session, and a session opened under
// it before ends at its first refused call, not at the heartbeats' grace:
// its assignments carry its tasks' secrets. The node's session opened
// under another certificate of it is not ended by that refusal, and the
// other role's hook is never asked.
func TestRefusedCertificateEndsItsSession(t *testing.T) {
	for _, role := range []pki.Role{pki.RoleWorker, pki.RoleManager} {
		t.Run(string(role), func(t *testing.T) {
			c := newCluster(t)
			var mu sync.Mutex
			refused := map[string]bool{}
			var wrongHook bool
			hook := func(want pki.Role) func(context.Context, string, *x509.Certificate) error {
				return func(_ context.Context, id string, leaf *x509.Certificate) error {
					mu.Lock()
					defer mu.Unlock()
					if want != role {
						wrongHook = true
					}
					if refused[leaf.SerialNumber.Text(16)] {
						return errdefs.Unauthorized("node %s's certificate is superseded", id)
					}
					return nil
				}
			}
			m := serve(t, c, newFixture(), nil, func(sc *ServerConfig) {
				sc.RefuseWorker, sc.RefuseManager = hook(pki.RoleWorker), hook(pki.RoleManager)
				// Only a refusal ends the session within the test.
				sc.HeartbeatPeriod = func() time.Duration { return time.Hour }
			})
			old := c.issue(t, role)
			current := issueAs(t, c, old.id, role, c.Cluster)
			refuse := func(n node) {
				mu.Lock()
				refused[n.cert.Leaf.SerialNumber.Text(16)] = true
				mu.Unlock()
			}

			s := open(t, connector(t, c, old, []string{m.addr}, nil))
			next(t, s)
			refuse(old)
			code, we := rawPost(t, s, pathHeartbeat, map[string]string{SessionHeader: s.id}, struct{}{})
			if code != http.StatusUnauthorized {
				t.Fatalf("a heartbeat under a refused certificate: %d %+v, want 401", code, we)
			}
			if m.h.current(old.id) {
				t.Fatal("the session opened under the refused certificate outlived its refusal")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := connector(t, c, old, []string{m.addr}, nil).Open(ctx); !errors.Is(err, errdefs.ErrUnauthorized) {
				t.Fatalf("a session under a refused certificate: %v, want it refused", err)
			}

			s2 := open(t, connector(t, c, current, []string{m.addr}, nil))
			next(t, s2)
			if _, err := connector(t, c, old, []string{m.addr}, nil).Open(ctx); !errors.Is(err, errdefs.ErrUnauthorized) {
				t.Fatalf("a session under a refused certificate: %v, want it refused", err)
			}
			if !m.h.current(current.id) {
				t.Fatal("the refusal of an old certificate ended the session of the node's current one")
			}
			if code, we := rawPost(t, s2, pathHeartbeat, map[string]string{SessionHeader: s2.id}, struct{}{}); code != http.StatusOK {
				t.Fatalf("a heartbeat under the current certificate: %d %+v", code, we)
			}
			mu.Lock()
			defer mu.Unlock()
			if wrongHook {
				t.Fatal("the other role's refusal hook was asked")
			}
		})
	}
}

// issueAs certifies a fresh key for node id in role, of clusterID.
func issueAs(t *testing.T, c cluster, id string, role pki.Role, clusterID string) node {
	t.Helper()
	n := c.CA.IssueAs(t, id, role, clusterID)
	return node{id: n.ID, cert: n.Cert}
}
