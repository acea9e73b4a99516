package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

// pairSetup is what managerAndWorker starts: the two daemons'
// configurations and what is done on the manager before the join.
type pairSetup struct {
	manager, worker Config
	beforeJoin      func(m *Daemon)
	// workerNoListen: the worker joins without a listen address (it can
	// never be promoted).
	workerNoListen bool
}

// pairOption adjusts the fixture of managerAndWorker.
type pairOption func(*pairSetup)

// withWorker changes the worker's configuration (its data directory,
// --no-init and listen address are the fixture's).
func withWorker(f func(*Config)) pairOption { return func(s *pairSetup) { f(&s.worker) } }

// syncEvery sets both daemons' role sync period (0: the daemon's
// default).
func syncEvery(p time.Duration) pairOption {
	return func(s *pairSetup) { s.manager.RoleSyncPeriod, s.worker.RoleSyncPeriod = p, p }
}

// workerWithoutListen makes the worker join without a listen address.
func workerWithoutListen() pairOption { return func(s *pairSetup) { s.workerNoListen = true } }

// beforeJoin runs f on the initialised manager before the worker joins,
// for settings the worker's join must already see (a certificate
// lifetime, the heartbeat period).
func beforeJoin(f func(m *Daemon)) pairOption {
	return func(s *pairSetup) { s.beforeJoin = f }
}

// managerAndWorker is the role, certificate and join tests' cluster: a
// manager initialised with a loopback listen address and a second daemon
// started with --no-init that joined it with the worker token (with a
// listen address of its own, so that it can be promoted, unless
// workerWithoutListen), both syncing their roles every fastSync unless an
// option says otherwise. It returns the manager, the worker and the
// cluster record the worker joined with (the manager's listen address is
// m.cfg.ListenAddr). t.Cleanup closes both, the worker first. Start and
// Join are bounded by the daemon's own timeouts (the store's start
// timeout, joinTimeout), so the fixture cannot hang a test.
func managerAndWorker(t *testing.T, opts ...pairOption) (m, w *Daemon, c cluster.Cluster) {
	t.Helper()
	s := pairSetup{
		manager: Config{ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync},
		worker:  Config{RoleSyncPeriod: fastSync},
	}
	listen := s.manager.ListenAddr
	for _, o := range opts {
		o(&s)
	}
	s.manager.DataDir, s.manager.ListenAddr = t.TempDir(), listen
	m = startWith(t, s.manager)
	if s.beforeJoin != nil {
		s.beforeJoin(m)
	}
	c = getCluster(t, m)
	s.worker.DataDir, s.worker.NoInit, s.worker.ListenAddr = t.TempDir(), true, ""
	if !s.workerNoListen {
		// Chosen once the manager holds its own ports, so never one of
		// them.
		s.worker.ListenAddr = loopbackListen(t)
	}
	w = startWith(t, s.worker)
	if err := w.Join(context.Background(), swarm.JoinRequest{RemoteAddrs: []string{m.cfg.ListenAddr}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	return m, w, c
}

// hourlySyncBurst2 is the issuance-limit tests' setting: no sync round
// but the first, and a manager issuing a node two certificates at once.
func hourlySyncBurst2() pairOption {
	return func(s *pairSetup) {
		s.manager.RoleSyncPeriod, s.manager.IssueBurst, s.manager.IssueEvery = time.Hour, 2, time.Hour
		s.worker.RoleSyncPeriod = time.Hour
	}
}

// promoted is `docker node promote` of w through m; it returns once w
// votes, failing the test with what when it never does.
func promoted(t *testing.T, m, w *Daemon, what string) {
	t.Helper()
	ctx := context.Background()
	if err := setRole(ctx, m, w.nodeID, swarm.NodeRoleManager); err != nil {
		t.Fatalf("promote: %v", err)
	}
	waitUntil(t, what, func() bool { return w.isVoter(ctx) })
}

// demoted is `docker node demote` of w through m; it returns once w is a
// worker, failing the test with what when it never is.
func demoted(t *testing.T, m, w *Daemon, what string) {
	t.Helper()
	if err := setRole(context.Background(), m, w.nodeID, swarm.NodeRoleWorker); err != nil {
		t.Fatalf("demote: %v", err)
	}
	waitUntil(t, what, w.isWorker)
}

// syncViewAndCSR is what w's next sync round would call with, and a CSR
// of w's own key, for a test that calls in its place.
func syncViewAndCSR(t *testing.T, w *Daemon) (syncView, []byte) {
	t.Helper()
	w.mu.Lock()
	v, ok := w.syncViewLocked()
	key := w.nodeKey
	w.mu.Unlock()
	if !ok {
		t.Fatal("the worker has no sync view")
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	return v, csr
}
