package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
)

// certSwarm is a node whose certificate expired and cannot be renewed.
type certSwarm struct {
	fakeSwarm
	state   swarm.LocalNodeState
	problem string
}

func (c *certSwarm) State() swarm.LocalNodeState { return c.state }
func (c *certSwarm) CertProblem() string         { return c.problem }

// docker info's Swarm.Error says why the node's certificate cannot be
// renewed wherever the node is in a swarm: on an active node, and on a
// manager waiting for a quorum, which is what a manager whose
// certificate expired with its peers' is (their etcd refuse each other),
// where the problem says the way out.
func TestInfoShowsCertProblem(t *testing.T) {
	const problem = "this node's TLS certificate (node n1) expired at 2026-01-01T00:00:00Z: …"
	st := storetest.New(t)
	mk, _ := keyring.GenerateMasterKey()
	kr, _ := keyring.New(mk)
	if _, err := cluster.Init(context.Background(), st, kr, cluster.DefaultSpec()); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		state    swarm.LocalNodeState
		problem  string
		want     []string // parts of Swarm.Error
		wantNone bool     // Swarm.Error must be empty
	}{
		{swarm.LocalNodeStateActive, problem, []string{problem}, false},
		{swarm.LocalNodeStatePending, problem, []string{errdefs.NoLeaderMessage, problem}, false},
		{swarm.LocalNodeStatePending, "", []string{errdefs.NoLeaderMessage}, false},
		{swarm.LocalNodeStateActive, "", nil, true},
		{swarm.LocalNodeStateInactive, problem, nil, true},
	} {
		t.Run(string(tt.state)+"/"+tt.problem, func(t *testing.T) {
			f := &certSwarm{state: tt.state, problem: tt.problem}
			s := New(Config{Swarm: f, Cluster: stClusterSource{st}, Node: Node{ID: "n1"}, Version: "test"})
			code, b := do(t, s, "GET", "/info", "")
			var info system.Info
			if code != 200 || json.Unmarshal([]byte(b), &info) != nil {
				t.Fatalf("info: %d %s", code, b)
			}
			if tt.wantNone && info.Swarm.Error != "" {
				t.Fatalf("Swarm.Error %q, want none", info.Swarm.Error)
			}
			for _, w := range tt.want {
				if !strings.Contains(info.Swarm.Error, w) {
					t.Fatalf("Swarm.Error %q does not say %q", info.Swarm.Error, w)
				}
			}
		})
	}
}
