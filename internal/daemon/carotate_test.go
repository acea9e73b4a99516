package daemon

import (
	"context"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

// caCluster is two managers and a worker, all with listen addresses.
func caCluster(t *testing.T) (m1, m2, w *Daemon, l1 string) {
	t.Helper()
	ctx := context.Background()
	l1 = loopbackListen(t)
	m1 = startWith(t, Config{DataDir: t.TempDir(), ListenAddr: l1, RoleSyncPeriod: fastSync})
	c := getCluster(t, m1)
	m2 = startWith(t, Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync})
	if err := m2.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{l1}, JoinToken: c.JoinTokens.Manager}); err != nil {
		t.Fatalf("manager join: %v", err)
	}
	waitUntil(t, "the second manager votes", func() bool { return m2.isVoter(ctx) })
	w = startWith(t, Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync})
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{l1}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	return m1, m2, w, l1
}

// A root CA rotation on a cluster whose nodes hold certificates is
// refused by name (hush has no staged rotation: the one-step swap left
// every node's sync refused with "unknown certificate authority" and
// joins with the new tokens failing on the managers' old certificates),
// and nothing changes: afterwards every node still renews and reaches
// the managers, a join with the tokens works, and the managers' etcd
// peers accept each other.
func TestRootRotationRefusedOnCluster(t *testing.T) {
	ctx := context.Background()
	m1, m2, w, l1 := caCluster(t)
	before := getCluster(t, m1)
	certPEM, keyDER, err := pki.NewRootCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	for _, tt := range []struct {
		name  string
		spec  func(*swarm.Spec)
		key   []byte
		field string
	}{
		{"--rotate", func(s *swarm.Spec) { s.CAConfig.ForceRotate++ }, nil, "CAConfig.ForceRotate"},
		{"--ca-cert --ca-key", func(s *swarm.Spec) { s.CAConfig.SigningCACert = string(certPEM) }, keyPEM, "CAConfig.SigningCACert"},
	} {
		c := getCluster(t, m1)
		spec := c.Spec
		tt.spec(&spec)
		err := m1.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{SigningCAKey: append([]byte(nil), tt.key...)})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), tt.field+": ") || !strings.Contains(err.Error(), "Nothing was changed") {
			t.Fatalf("%s: %v, want a 400 naming %s", tt.name, err, tt.field)
		}
	}
	after := getCluster(t, m1)
	if after.CACert != before.CACert || after.JoinTokens != before.JoinTokens || after.Spec.CAConfig.ForceRotate != before.Spec.CAConfig.ForceRotate {
		t.Fatal("a refused rotation changed the root CA, the tokens or the counter")
	}
	for _, d := range []*Daemon{m1, m2, w} {
		old := d.cert.Load()
		d.skew.Store(int64(renewSkew(old)))
		waitUntil(t, "node "+d.nodeID+" renews", func() bool { return d.cert.Load().Leaf.SerialNumber.Cmp(old.Leaf.SerialNumber) != 0 })
		d.skew.Store(0)
		d.mu.Lock()
		v, ok := d.syncViewLocked()
		d.mu.Unlock()
		if !ok {
			t.Fatalf("node %s has no sync view", d.nodeID)
		}
		if _, err := d.callSync(ctx, v, &syncRequest{}); err != nil {
			t.Fatalf("node %s cannot reach the managers after its renewal: %v", d.nodeID, err)
		}
	}
	if err := peerGet(t, m1, *m2.cert.Load()); err != nil {
		t.Fatalf("m1's etcd refuses m2's renewed certificate: %v", err)
	}
	if err := peerGet(t, m2, *m1.cert.Load()); err != nil {
		t.Fatalf("m2's etcd refuses m1's renewed certificate: %v", err)
	}
	j := startWith(t, Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync})
	if err := j.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{l1}, JoinToken: after.JoinTokens.Worker}); err != nil {
		t.Fatalf("a join after the refused rotation: %v", err)
	}
}

// `swarm init --force-new-cluster` from the CLI sends CAConfig.ForceRotate
// 0. On a cluster whose counter is not (its root was rotated while it was
// a lone node, before it listened), that was taken for a rotation and
// refused by name on a manager of a cluster, so the way out of a lost
// quorum or expired certificates failed there. Such a request keeps the
// root and the counter; a request naming another counter is still
// refused.
func TestForceNewClusterKeepsRotationCounter(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	lone := startWith(t, Config{DataDir: dir})
	c := getCluster(t, lone)
	spec := c.Spec
	spec.CAConfig.ForceRotate++
	if err := lone.Update(ctx, c.Version, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatalf("rotation on a lone node: %v", err)
	}
	lone.Close()
	m := startWith(t, Config{DataDir: dir, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync})
	before := getCluster(t, m)
	if before.Spec.CAConfig.ForceRotate != 1 {
		t.Fatalf("counter %d after the lone rotation, want 1", before.Spec.CAConfig.ForceRotate)
	}
	if _, err := m.Init(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen, ForceNewCluster: true}); err != nil {
		t.Fatalf("init --force-new-cluster as the CLI sends it: %v", err)
	}
	after := getCluster(t, m)
	if after.CACert != before.CACert || after.Spec.CAConfig.ForceRotate != 1 {
		t.Fatalf("force-new-cluster changed the root or the counter (%d)", after.Spec.CAConfig.ForceRotate)
	}
	req := swarm.InitRequest{ListenAddr: cliDefaultListen, ForceNewCluster: true}
	req.Spec.CAConfig.ForceRotate = 2
	if _, err := m.Init(ctx, req); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "CAConfig.ForceRotate: ") {
		t.Fatalf("force-new-cluster asking a rotation: %v, want it refused by name", err)
	}
}
