package daemon

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/swarm"
)

// socketCall calls d's API socket; it returns the status, the Swarm
// header and the body.
func socketCall(t *testing.T, d *Daemon, method, path string) (int, string, string) {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.cfg.Socket)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(method, "http://hush"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, resp.Header.Get("Swarm"), string(b)
}

// A manager restarted while its cluster has no quorum (the other of two
// managers is down) starts at once as pending: /_ping answers, every swarm
// call gets Swarm's no-leader 503, init and join are refused alike. When
// the other manager comes back it activates without a restart; a pending
// manager closes promptly.
func TestStartWithoutQuorum(t *testing.T) {
	ctx := context.Background()
	dir1, dir2 := t.TempDir(), t.TempDir()
	l1, l2 := loopbackListen(t), loopbackListen(t)
	m1 := startWith(t, Config{DataDir: dir1, ListenAddr: l1, RoleSyncPeriod: fastSync})
	c := getCluster(t, m1)
	m2 := startWith(t, Config{DataDir: dir2, NoInit: true, ListenAddr: l2, RoleSyncPeriod: fastSync})
	if err := m2.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{l1}, JoinToken: c.JoinTokens.Manager}); err != nil {
		t.Fatalf("manager join: %v", err)
	}
	m2.Close()
	m1.Close()

	m1 = startWith(t, Config{DataDir: dir1, ListenAddr: l1, RoleSyncPeriod: fastSync})
	if st := m1.State(); st != swarm.LocalNodeStatePending {
		t.Fatalf("state without quorum %q, want pending", st)
	}
	for _, tc := range []struct {
		method, path string
		code         int
		swarmHdr     string
		body         string
	}{
		{"GET", "/_ping", http.StatusOK, "pending", "OK"},
		{"HEAD", "/v1.41/_ping", http.StatusOK, "pending", ""},
		{"GET", "/v1.41/info", http.StatusOK, "", `"LocalNodeState":"pending"`},
		{"GET", "/v1.41/secrets", http.StatusServiceUnavailable, "", errdefs.NoLeaderMessage},
		{"GET", "/v1.41/nodes", http.StatusServiceUnavailable, "", errdefs.NoLeaderMessage},
		{"GET", "/v1.41/swarm", http.StatusServiceUnavailable, "", errdefs.NoLeaderMessage},
		{"POST", "/v1.41/swarm/init", http.StatusServiceUnavailable, "", errdefs.NoLeaderMessage},
		{"POST", "/v1.41/swarm/join", http.StatusServiceUnavailable, "", errdefs.NoLeaderMessage},
		{"POST", "/v1.41/swarm/leave", http.StatusServiceUnavailable, "", errdefs.NoLeaderMessage},
	} {
		code, hdr, body := socketCall(t, m1, tc.method, tc.path)
		if code != tc.code || (tc.swarmHdr != "" && hdr != tc.swarmHdr) || !strings.Contains(body, tc.body) {
			t.Errorf("%s %s without quorum: %d, Swarm %q, %q; want %d, %q, %q", tc.method, tc.path, code, hdr, body, tc.code, tc.swarmHdr, tc.body)
		}
	}

	m2 = startWith(t, Config{DataDir: dir2, NoInit: true, ListenAddr: l2, RoleSyncPeriod: fastSync})
	for _, m := range []*Daemon{m1, m2} {
		waitUntil(t, "the managers are active with their quorum back", func() bool { return m.State() == swarm.LocalNodeStateActive })
		if code, _, body := socketCall(t, m, "GET", "/v1.41/secrets"); code != http.StatusOK {
			t.Errorf("secret ls with the quorum back: %d, %q", code, body)
		} else if _, hdr, _ := socketCall(t, m, "GET", "/_ping"); hdr != "active/manager" {
			t.Errorf("/_ping's Swarm header with the quorum back: %q", hdr)
		}
	}
	if err := m1.CheckServing(); err != nil {
		t.Fatalf("the manager does not serve with its quorum back: %v", err)
	}
	if m1.joinSvc == nil {
		t.Fatal("the join/CA service did not start with the quorum")
	}

	// Without quorum again, a pending manager closes (its wait ends).
	m2.Close()
	m1.Close()
	m1 = startWith(t, Config{DataDir: dir1, ListenAddr: l1, RoleSyncPeriod: fastSync})
	if st := m1.State(); st != swarm.LocalNodeStatePending {
		t.Fatalf("state without quorum %q, want pending", st)
	}
	m1.Close()
}

// Close ends the runtime's context before it takes mu: a loop that holds
// mu over a store call which cannot finish (a linearizable read of a
// cluster without quorum; the hook stands for it and returns only when
// its context ends) must not hold Close behind it. Before, the rotation
// follower's read kept a manager without quorum from exiting on SIGTERM.
func TestCloseEndsLoopsHoldingMu(t *testing.T) {
	m := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t)})
	if m.store.Members() == nil {
		t.Fatal("a manager with a listen address runs no etcd member")
	}
	held, release := holdRotationSteps(m, func(context.Context) bool { return true })
	select {
	case <-held:
	case <-time.After(time.Minute):
		t.Fatal("the rotation follower never ran a step")
	}
	closeDespiteHeldStep(t, m, release, "a loop's")
}

// holdRotationSteps makes each step of m's rotation follower (and of its
// driver) that match accepts hold mu until its context ends, as a store
// call of a cluster without quorum does, or until release is closed (the
// test failed: the cleanup's Close must end). held is closed once the
// first such step holds mu.
func holdRotationSteps(m *Daemon, match func(context.Context) bool) (held, release chan struct{}) {
	held, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	m.mu.Lock()
	defer m.mu.Unlock()
	m.followRotationHook = func(ctx context.Context) {
		if !match(ctx) {
			return
		}
		once.Do(func() { close(held) })
		select {
		case <-ctx.Done():
		case <-release:
		}
	}
	return held, release
}

// closeDespiteHeldStep fails the test unless m.Close returns while a
// rotation step holds mu (holdRotationSteps); whose names the step.
func closeDespiteHeldStep(t *testing.T, m *Daemon, release chan struct{}, whose string) {
	t.Helper()
	closed := make(chan struct{})
	go func() {
		m.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(time.Minute):
		close(release)
		<-closed
		t.Fatalf("Close waited on mu behind %s store call that ends only with its context", whose)
	}
}
