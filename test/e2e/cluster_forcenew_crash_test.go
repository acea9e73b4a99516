package e2e

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// `docker swarm init --force-new-cluster` killed with -9 at each step of
// its sequence (the hushd hangs at the failpoint, built with the tag
// hushfailpoints): restarted, the manager is either as before (pending,
// and its old cluster comes back whole with the other manager) or as
// after (the lone active manager with every secret, writes working).
// Two managers on loopback ports, no engine: the other manager killed
// takes the quorum.
func TestClusterForceNewKill9(t *testing.T) {
	requireDockerCLI(t)
	for _, tc := range []struct {
		point string
		after bool
	}{
		{"forcenew-mark", false},
		{"forcenew-restart", true},
		{"forcenew-record", true},
		{"forcenew-unmark", true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			p1, p2 := freePortPair(t, "127.0.0.1"), 0
			m1 := startHushd(t, withSecretsDir(t), withArgs("--no-init"), withListen("127.0.0.1", p1),
				withEnv("HUSH_TEST_FAILPOINTS="+tc.point+"=hang"))
			if b, _ := os.ReadFile(m1.LogPath); strings.Contains(string(b), "HUSH_TEST_FAILPOINTS ignored") {
				t.Fatal("this hushd has no failpoints: build it with -tags hushfailpoints (HUSH_E2E_HUSHD)")
			}
			m1.MustDocker("swarm", "init")
			mtok := strings.TrimSpace(m1.MustDocker("swarm", "join-token", "-q", "manager"))
			for p2 == 0 || p2 == p1 || p2 == p1+1 || p2 == p1+2 || p2+1 == p1 || p2+2 == p1 {
				p2 = freePortPair(t, "127.0.0.1")
			}
			m2 := startHushd(t, withSecretsDir(t), withArgs("--no-init"), withListen("127.0.0.1", p2))
			m2.MustDocker("swarm", "join", "--token", mtok, net.JoinHostPort("127.0.0.1", fmt.Sprint(p1)))
			sec := "crash-" + randHex(t, 3)
			m2.MustDockerStdin("v", "secret", "create", sec, "-")
			m2.Kill()

			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _, _, _ = tryDocker(m1, 60*time.Second, "", "swarm", "init", "--force-new-cluster")
			}()
			waitFor(t, 60*time.Second, "hushd hanging at "+tc.point, func() bool {
				b, _ := os.ReadFile(m1.LogPath)
				return strings.Contains(string(b), "failpoint reached") && strings.Contains(string(b), tc.point)
			})
			m1.Kill()
			<-done
			m1.env = nil
			m1.start()
			state := func() string {
				return strings.TrimSpace(m1.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}"))
			}
			if !tc.after {
				if st := state(); st != "pending" {
					t.Fatalf("restarted before the commit point: %q, want pending", st)
				}
				m2.start()
				waitFor(t, 60*time.Second, "the old cluster back", func() bool { return state() == "active" })
				if n := len(strings.Fields(m1.MustDocker("node", "ls", "-q", "--filter", "role=manager"))); n != 2 {
					t.Errorf("managers: %d, want 2", n)
				}
			} else if st := state(); st != "active" {
				t.Fatalf("restarted after the commit point: %q, want active", st)
			}
			if !strings.Contains(m1.MustDocker("secret", "ls", "--format", "{{.Name}}"), sec) {
				t.Errorf("secret %s lost", sec)
			}
			m1.MustDockerStdin("v", "secret", "create", sec+"-after", "-")
			if tc.after {
				st, _ := nodeStates(m1)
				if st[m1.nodeID()] != "Leader|Ready" || st[m2.nodeID()] == "" || strings.HasPrefix(st[m2.nodeID()], "Reachable") {
					t.Errorf("node ls after the recovery: %v", st)
				}
			}
		})
	}
}
