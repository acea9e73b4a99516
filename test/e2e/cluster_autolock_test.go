package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/keyring"
)

// keyFiles says which master key files a hushd data dir holds.
func keyFiles(dataDir string) (plain, locked, next bool) {
	ex := func(f string) bool {
		_, err := os.Stat(filepath.Join(dataDir, "keys", f))
		return err == nil
	}
	return ex("master.key"), ex("master.key.locked"), ex("master.key.locked.next")
}

func lockedOnly(dataDir string) bool {
	plain, locked, next := keyFiles(dataDir)
	return !plain && locked && !next
}

// TestClusterAutolockCLI: autolock on a cluster of three managers with the
// real docker CLI. Enabled through one manager, every manager's master key
// file ends wrapped by the unlock key; another manager restarted is
// locked (Swarm's texts), refuses a wrong key and serves once unlocked;
// a manager killed (kill -9) half-way through locking its files finishes
// at its restart;
// the key rotated through a third manager reaches every manager, and
// after a restart the new key unlocks and the old one does not.
func TestClusterAutolockCLI(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	ports := make([]int, len(ips))
	for i, ip := range ips {
		ports[i] = freePortPair(t, ip)
	}
	h1 := startHushd(t, withSecretsDir(t), withArgs("--no-init"), withListen(ips[0], ports[0]))
	h1.MustDocker("swarm", "init")
	remote := net.JoinHostPort(ips[0], fmt.Sprint(ports[0]))
	mtok := strings.TrimSpace(h1.MustDocker("swarm", "join-token", "-q", "manager"))
	h2 := startHushd(t, withSecretsDir(t), withArgs("--no-init"), withListen(ips[1], ports[1]))
	h2.MustDocker("swarm", "join", "--token", mtok, remote)
	// The third manager stops dead (then kill -9) between writing its
	// pending locked key and installing it.
	h3 := startHushd(t, withSecretsDir(t), withArgs("--no-init"), withListen(ips[2], ports[2]),
		withEnv("HUSH_TEST_FAILPOINTS=keysync-install=hang"))
	h3.MustDocker("swarm", "join", "--token", mtok, remote)
	all := []*Hushd{h1, h2, h3}
	h1.MustDockerStdin("cluster-locked", "secret", "create", "e2e-cluster-autolock", "-")

	out := h1.MustDocker("swarm", "update", "--autolock=true")
	key1 := strings.TrimSpace(h1.MustDocker("swarm", "unlock-key", "-q"))
	if !strings.HasPrefix(key1, "SWMKEY-1-") || !strings.Contains(out, key1) {
		t.Fatalf("swarm update --autolock=true printed %q; unlock-key %q", out, key1)
	}
	waitFor(t, 30*time.Second, "the third manager at its failpoint", func() bool {
		b, _ := os.ReadFile(h3.LogPath)
		return strings.Contains(string(b), "failpoint reached")
	})
	if plain, _, next := keyFiles(h3.DataDir); !plain || !next {
		t.Fatalf("the third manager at keysync-install: plain %v, pending %v; want both", plain, next)
	}
	h3.Kill()
	h3.env = nil
	h3.Restart()
	for i, h := range all {
		waitFor(t, 30*time.Second, fmt.Sprintf("manager %d's master key wrapped", i+1), func() bool { return lockedOnly(h.DataDir) })
	}
	if st := strings.TrimSpace(h3.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "active" {
		t.Fatalf("the manager killed before it locked: state %q after its restart, want active (its files now locked)", st)
	}
	if !strings.Contains(h2.MustDocker("info"), "Autolock Managers: true") {
		t.Fatal("docker info on another manager does not show autolock")
	}

	h2.Restart()
	if st := strings.TrimSpace(h2.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "locked" {
		t.Fatalf("restarted manager: state %q, want locked", st)
	}
	const lockedMsg = `Swarm is encrypted and needs to be unlocked before it can be used. Please use "docker swarm unlock" to unlock it.`
	if _, errOut, code := h2.Docker("secret", "ls"); code == 0 || !strings.Contains(errOut, lockedMsg) {
		t.Fatalf("secret ls on the locked manager: exit %d %s", code, errOut)
	}
	// The two others keep the quorum.
	h3.MustDocker("secret", "inspect", "e2e-cluster-autolock")
	bad := "SWMKEY-1-" + strings.Repeat("A", 43)
	if _, errOut, code := h2.DockerStdin(bad+"\n", "swarm", "unlock"); code == 0 || !strings.Contains(errOut, "swarm could not be unlocked: invalid key provided") {
		t.Fatalf("wrong key: exit %d %s", code, errOut)
	}
	h2.MustDockerStdin(key1+"\n", "swarm", "unlock")
	waitFor(t, 30*time.Second, "the unlocked manager serves", func() bool {
		_, _, code := h2.Docker("secret", "inspect", "e2e-cluster-autolock")
		return code == 0
	})

	key2 := strings.TrimSpace(h3.MustDocker("swarm", "unlock-key", "--rotate", "-q"))
	if key2 == key1 || !strings.HasPrefix(key2, "SWMKEY-1-") {
		t.Fatalf("rotated key %q", key2)
	}
	// The file opening with the new key, not merely rewritten: the
	// master-key rotation autolock's enable owed (not run then: the third
	// manager was stopped at its failpoint) runs at this unlock, and
	// rewrites it too, under the key recorded then.
	locked := keyring.LockedKeyStore{Path: filepath.Join(h2.DataDir, "keys", "master.key.locked")}
	waitFor(t, 30*time.Second, "the rotated key reaches the restarted manager", func() bool {
		return lockedOnly(h2.DataDir) && locked.Opens(key2)
	})
	h2.Restart()
	if _, errOut, code := h2.DockerStdin(key1+"\n", "swarm", "unlock"); code == 0 || !strings.Contains(errOut, "invalid key provided") {
		t.Fatalf("old key after rotation: exit %d %s", code, errOut)
	}
	h2.MustDockerStdin(key2+"\n", "swarm", "unlock")
	waitFor(t, 30*time.Second, "the manager unlocked with the rotated key serves", func() bool {
		_, _, code := h2.Docker("secret", "inspect", "e2e-cluster-autolock")
		return code == 0
	})
}
