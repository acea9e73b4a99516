package e2e

import (
	"slices"
	"strings"
	"testing"
)

// TestClusterNetns runs issue 9's cluster tests on one shared cluster of
// three managers and one worker, each hushd in a network namespace of its
// own (see netns_test.go). The subtests run in order and each leaves the
// cluster healthy for the next but the last, which stops it.
func TestClusterNetns(t *testing.T) {
	c := newLabCluster(t)
	for _, st := range []struct {
		name string
		run  func(*testing.T, *labCluster)
	}{
		{"NodeLsAgrees", testLabNodeLs},
		{"WorkerGetsOnlyItsSecrets", testLabWorkerSecrets},
		{"GlobalService", testLabGlobalService},
		{"WorkerCutOff", testLabWorkerCutOff},
		{"MinorityCutOff", testLabMinorityCutOff},
		{"WorkerManagerCutOff", testLabWorkerManagerCutOff},
		{"KillLeaderLinearizable", testLabKillLeader},
		{"WholeClusterRestart", testLabRestartAll},
		{"NoQuorumServesPing", testLabNoQuorumPing},
		{"StopWithoutQuorum", testLabStopWithoutQuorum},
	} {
		t.Run(st.name, func(t *testing.T) {
			c.bind(t)
			st.run(t, c)
		})
	}
}

// Every manager lists the same four nodes with the same roles.
func testLabNodeLs(t *testing.T, c *labCluster) {
	want := [][]string{c.managerIDs(), {c.ids["w1"]}}
	slices.Sort(want[0])
	for i, m := range c.managers {
		for j, role := range []string{"manager", "worker"} {
			got := strings.Fields(m.MustDocker("node", "ls", "-q", "--filter", "role="+role))
			slices.Sort(got)
			if !slices.Equal(got, want[j]) {
				t.Errorf("node ls --filter role=%s on m%d: %v, want %v", role, i+1, got, want[j])
			}
		}
	}
}
