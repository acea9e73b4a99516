package daemon

import (
	"context"
	"testing"

	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/moby/moby/api/types/swarm"
)

// managerAndWorker is the role, certificate and join tests' cluster: a
// manager initialised with a loopback listen address and a second daemon
// started with --no-init that joined it with the worker token (with a
// listen address of its own, so that it can be promoted), both syncing
// their roles every fastSync. It returns the manager, the worker and the
// cluster record the worker joined with (the manager's listen address is
// m.cfg.ListenAddr). t.Cleanup closes both, the worker first. Start and
// Join are bounded by the daemon's own timeouts (the store's start
// timeout, joinTimeout), so the fixture cannot hang a test.
func managerAndWorker(t *testing.T) (m, w *Daemon, c cluster.Cluster) {
	t.Helper()
	m = startWith(t, Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync})
	c = getCluster(t, m)
	// The worker's ports are chosen once the manager holds its own, so
	// never one of them.
	w = startWith(t, Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync})
	if err := w.Join(context.Background(), swarm.JoinRequest{RemoteAddrs: []string{m.cfg.ListenAddr}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	return m, w, c
}
