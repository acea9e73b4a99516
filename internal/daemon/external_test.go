package daemon

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/testutil/etcdtest"
	"github.com/moby/moby/api/types/swarm"
)

func externalCfg(srv *etcdtest.Server, dir, prefix string) Config {
	return Config{DataDir: dir, External: &store.ExternalConfig{Endpoints: []string{srv.Endpoint},
		CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Prefix: prefix}}
}

func startErr(t *testing.T, cfg Config) error {
	t.Helper()
	cfg.Socket = filepath.Join(cfg.DataDir, "s.sock")
	cfg.SecretsDir = filepath.Join(cfg.DataDir, "run")
	d, err := Start(context.Background(), cfg)
	if err == nil {
		d.Close()
	}
	return err
}

func TestExternalDaemon(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	if _, err := raw.Put(ctx, "/users-own/key", "theirs"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	d := startWith(t, externalCfg(srv, dir, ""))
	if d.State() != swarm.LocalNodeStateActive {
		t.Fatalf("state %s", d.State())
	}
	c := getCluster(t, d)
	if n, err := srv.Count(ctx, "/hush/v1/"); err != nil || n == 0 {
		t.Fatalf("nothing of hush's in the external etcd: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "etcd")); !os.IsNotExist(err) {
		t.Fatalf("an embedded store was made beside the external one: %v", err)
	}

	t.Run("backup refused", func(t *testing.T) {
		err := d.acfg.Backup.Backup(ctx, []byte("key"), io.Discard)
		if !errdefs.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "backup is not supported with --external-etcd") {
			t.Fatalf("backup: %v", err)
		}
	})
	t.Run("second hushd on the same prefix refused", func(t *testing.T) {
		if err := startErr(t, externalCfg(srv, t.TempDir(), "")); err == nil || !strings.Contains(err.Error(), "already holds a hush cluster under this prefix") {
			t.Fatalf("%v", err)
		}
		// With --no-init it waits, inactive, to join that cluster; its
		// init is refused.
		cfg := externalCfg(srv, t.TempDir(), "")
		cfg.NoInit = true
		joiner := startWith(t, cfg)
		if joiner.State() != swarm.LocalNodeStateInactive {
			t.Fatalf("state with --no-init: %s", joiner.State())
		}
		_, err := joiner.swarmController().InitWithKey(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen}, nil)
		if !errdefs.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "already holds a hush cluster under this prefix") {
			t.Fatalf("init: %v", err)
		}
		joiner.Close()
	})
	t.Run("init refused once another hushd made its cluster", func(t *testing.T) {
		cfg := externalCfg(srv, t.TempDir(), "/late")
		cfg.NoInit = true
		waiting := startWith(t, cfg)
		if waiting.State() != swarm.LocalNodeStateInactive {
			t.Fatalf("state with --no-init: %s", waiting.State())
		}
		first := startWith(t, externalCfg(srv, t.TempDir(), "/late"))
		_, err := waiting.swarmController().InitWithKey(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen}, nil)
		if !errdefs.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "already holds a hush cluster under this prefix") {
			t.Fatalf("init beside another hushd's cluster: %v", err)
		}
		if getCluster(t, first).ID == "" {
			t.Fatal("the first cluster went")
		}
		waiting.Close()
		first.Close()
	})
	t.Run("second hushd under its own prefix", func(t *testing.T) {
		d2 := startWith(t, externalCfg(srv, t.TempDir(), "/team-b"))
		if getCluster(t, d2).ID == c.ID {
			t.Fatal("same cluster under another prefix")
		}
		n, err := srv.Count(ctx, "/team-b/hush/v1/")
		if err != nil || n == 0 {
			t.Fatalf("nothing under the prefix: %v", err)
		}
		d2.Close()
	})
	t.Run("data dir bound to its store", func(t *testing.T) {
		d.Close()
		if err := startErr(t, Config{DataDir: dir}); err == nil || !strings.Contains(err.Error(), "holds a cluster kept in an external etcd: start hushd with --external-etcd") {
			t.Fatalf("without --external-etcd: %v", err)
		}
		if err := startErr(t, externalCfg(srv, dir, "/other")); err == nil || !strings.Contains(err.Error(), `the data dir `+dir+` was used with prefix ""`) {
			t.Fatalf("another prefix: %v", err)
		}
		embedded := t.TempDir()
		start(t, embedded).Close()
		if err := startErr(t, externalCfg(srv, embedded, "/emb")); err == nil || !strings.Contains(err.Error(), "holds an embedded store") {
			t.Fatalf("an embedded data dir: %v", err)
		}
	})
	t.Run("restart keeps the cluster, leave erases only hush's keys", func(t *testing.T) {
		d := startWith(t, externalCfg(srv, dir, ""))
		if got := getCluster(t, d).ID; got != c.ID {
			t.Fatalf("cluster after restart: %s, want %s", got, c.ID)
		}
		if err := d.Leave(ctx, true); err != nil {
			t.Fatal(err)
		}
		for k := range srv.Dump(t) {
			if strings.HasPrefix(k, "/hush/") {
				t.Fatalf("left after leave: %q", k)
			}
		}
		if n, err := srv.Count(ctx, "/team-b/hush/v1/"); err != nil || n == 0 {
			t.Fatalf("another hush cluster's keys went: %v", err)
		}
		if resp, err := raw.Get(ctx, "/users-own/key"); err != nil || resp.Count != 1 {
			t.Fatalf("the user's own key went: %v", err)
		}
		if ok, err := cluster.Exists(ctx, d.store); err != nil || ok {
			t.Fatalf("cluster after leave: %v %v", ok, err)
		}
		if _, err := d.swarmController().InitWithKey(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(d.plainKey.Path); err != nil {
			t.Fatal(err)
		}
	})
}

// Autolock and master-key rotation work unchanged on an external store:
// they change key files beside the data dir and re-seal what is in etcd.
func TestExternalDaemonKeys(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	d := startWith(t, externalCfg(srv, dir, "/keys"))
	id := getCluster(t, d).ID
	if _, err := d.RotateMaster(ctx); err != nil {
		t.Fatalf("rotation: %v", err)
	}
	key := enableAutolock(t, d)
	d.Close()
	d = startWith(t, externalCfg(srv, dir, "/keys"))
	if d.State() != swarm.LocalNodeStateLocked {
		t.Fatalf("state after restart with autolock: %s", d.State())
	}
	if err := d.Unlock(ctx, key); err != nil {
		t.Fatal(err)
	}
	if got := getCluster(t, d).ID; got != id {
		t.Fatalf("cluster after unlock: %s, want %s", got, id)
	}
	checkKeyFiles(t, d, true)
}

// A start refused before this data dir made a cluster (another hushd's
// cluster under the prefix) binds nothing: the retry the refusal advises,
// under a prefix of its own, must start.
func TestExternalRefusedStartBindsNothing(t *testing.T) {
	srv := etcdtest.Start(t)
	startWith(t, externalCfg(srv, t.TempDir(), "/taken"))
	dir := t.TempDir()
	if err := startErr(t, externalCfg(srv, dir, "/taken")); err == nil || !strings.Contains(err.Error(), "already holds a hush cluster under this prefix") {
		t.Fatalf("start beside another hushd's cluster: %v", err)
	}
	d := startWith(t, externalCfg(srv, dir, "/own"))
	if d.State() != swarm.LocalNodeStateActive {
		t.Fatalf("state under its own prefix: %s", d.State())
	}
}

// A restart pointed at another etcd (a changed --external-etcd) that does
// not hold the data dir's cluster must change nothing: not remove the
// autolocked master key, and not make a new cluster there.
func TestExternalRestartOnAnotherEtcd(t *testing.T) {
	ctx := context.Background()
	srv, other := etcdtest.Start(t), etcdtest.Start(t)
	dir := t.TempDir()
	d := startWith(t, externalCfg(srv, dir, "/x"))
	id := getCluster(t, d).ID
	key := enableAutolock(t, d)
	d.Close()
	if err := startErr(t, externalCfg(other, dir, "/x")); err == nil || !strings.Contains(err.Error(), "does not hold this data dir's cluster") {
		t.Fatalf("start on another etcd: %v", err)
	}
	for k := range other.Dump(t) {
		if strings.Contains(k, "/hush/") {
			t.Fatalf("written into the other etcd: %q", k)
		}
	}
	d = startWith(t, externalCfg(srv, dir, "/x"))
	if err := d.Unlock(ctx, key); err != nil {
		t.Fatalf("unlock after the refused start: %v", err)
	}
	if got := getCluster(t, d).ID; got != id {
		t.Fatalf("cluster %s, want %s", got, id)
	}
}

// Two hushds racing to init one prefix both pass the check for another
// cluster; cluster.Create lets one win. The loser must keep no master key
// (it sealed nothing that was written), so that its restart is refused by
// name instead of taking the winner's cluster for its own.
func TestExternalInitRaceLoser(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	cfg := externalCfg(srv, t.TempDir(), "/race")
	cfg.NoInit = true
	loser := startWith(t, cfg)
	startWith(t, externalCfg(srv, t.TempDir(), "/race"))
	// The daemon's own init: the external check before it passed earlier.
	_, err := loser.InitWithKey(ctx, swarm.InitRequest{ListenAddr: cliDefaultListen}, nil)
	if !errdefs.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "already holds a hush cluster under this prefix") {
		t.Fatalf("init that lost the race: %v", err)
	}
	if loser.plainKey.Exists() {
		t.Fatal("the loser kept a master key that sealed nothing")
	}
	loser.Close()
	cfg.NoInit = false
	if err := startErr(t, cfg); err == nil || !strings.Contains(err.Error(), "already holds a hush cluster under this prefix") {
		t.Fatalf("restart of the loser: %v", err)
	}
}

// The same without autolock: the plain master key must not be used to
// make a new cluster in an etcd that does not hold the data dir's one.
func TestExternalRestartOnAnotherEtcdPlainKey(t *testing.T) {
	srv, other := etcdtest.Start(t), etcdtest.Start(t)
	dir := t.TempDir()
	d := startWith(t, externalCfg(srv, dir, ""))
	id := getCluster(t, d).ID
	d.Close()
	if err := startErr(t, externalCfg(other, dir, "")); err == nil || !strings.Contains(err.Error(), "does not hold this data dir's cluster") {
		t.Fatalf("start on another etcd: %v", err)
	}
	for k := range other.Dump(t) {
		if strings.Contains(k, "/hush/") {
			t.Fatalf("written into the other etcd: %q", k)
		}
	}
	d = startWith(t, externalCfg(srv, dir, ""))
	if got := getCluster(t, d).ID; got != id {
		t.Fatalf("cluster %s, want %s", got, id)
	}
}
