package store_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/hush-secrets/hush/internal/testutil/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// awaitReady waits (bounded) for the store's first linearizable read.
func awaitReady(t *testing.T, s *store.Store) {
	t.Helper()
	select {
	case <-s.Ready():
	case <-time.After(60 * time.Second):
		t.Fatal("external store not ready within 60s")
	}
}

func openExternal(t *testing.T, c store.ExternalConfig) *store.Store {
	t.Helper()
	if c.Keys == nil {
		c.Keys = storetest.NewKeys(t)
	}
	s, err := store.OpenExternal(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestOpenExternalRefuses(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := etcdtestFiles(t)
	ok := store.ExternalConfig{Endpoints: []string{"https://127.0.0.1:2379"}, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile}
	with := func(f func(*store.ExternalConfig)) store.ExternalConfig {
		c := ok
		c.Endpoints = append([]string(nil), ok.Endpoints...)
		f(&c)
		return c
	}
	for _, tc := range []struct {
		name string
		cfg  store.ExternalConfig
		want string
	}{
		{"no endpoint", with(func(c *store.ExternalConfig) { c.Endpoints = nil }), "no endpoint"},
		{"http", with(func(c *store.ExternalConfig) { c.Endpoints = []string{"http://127.0.0.1:2379"} }), "scheme http refused, use https"},
		{"http among https", with(func(c *store.ExternalConfig) { c.Endpoints = append(c.Endpoints, "http://10.0.0.2:2379") }), "scheme http refused"},
		{"unix", with(func(c *store.ExternalConfig) { c.Endpoints = []string{"unix:///run/etcd.sock"} }), "scheme unix refused"},
		{"no scheme", with(func(c *store.ExternalConfig) { c.Endpoints = []string{"127.0.0.1:2379"} }), "must be https://host:port"},
		{"no port", with(func(c *store.ExternalConfig) { c.Endpoints = []string{"https://etcd.example"} }), "must be https://host:port"},
		{"path", with(func(c *store.ExternalConfig) { c.Endpoints = []string{"https://etcd.example:2379/v3"} }), "without a path"},
		{"user", with(func(c *store.ExternalConfig) { c.Endpoints = []string{"https://u:p@etcd.example:2379"} }), "without a path, query or user"},
		{"no CA", with(func(c *store.ExternalConfig) { c.CAFile = "" }), "the CA file is required"},
		{"no cert", with(func(c *store.ExternalConfig) { c.CertFile = "" }), "the client certificate file is required"},
		{"no key", with(func(c *store.ExternalConfig) { c.KeyFile = "" }), "the client key file is required"},
		{"missing CA", with(func(c *store.ExternalConfig) { c.CAFile = filepath.Join(dir, "nope.pem") }), "CA file"},
		{"garbage CA", with(func(c *store.ExternalConfig) { c.CAFile = garbage }), "holds no PEM certificate"},
		{"missing key", with(func(c *store.ExternalConfig) { c.KeyFile = filepath.Join(dir, "nope.key") }), "client key pair"},
		{"key of another cert", with(func(c *store.ExternalConfig) { c.KeyFile = garbage }), "client key pair"},
		{"prefix without slash", with(func(c *store.ExternalConfig) { c.Prefix = "team" }), "must start with /"},
		{"prefix ending in slash", with(func(c *store.ExternalConfig) { c.Prefix = "/team/" }), "not end with one"},
		{"prefix with NUL", with(func(c *store.ExternalConfig) { c.Prefix = "/te\x00am" }), "only letters"},
		// Keys under these would be inside another hush cluster's root (the
		// one without a prefix, or /a's): its leave would erase them.
		{"prefix inside hush's root", with(func(c *store.ExternalConfig) { c.Prefix = "/hush/v1/team" }), "inside another hush cluster's keys"},
		{"prefix inside another prefix's root", with(func(c *store.ExternalConfig) { c.Prefix = "/a/hush/v1" }), "inside another hush cluster's keys"},
		{"prefix too long", with(func(c *store.ExternalConfig) { c.Prefix = "/" + strings.Repeat("a", store.MaxExternalPrefix) }), "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Keys = storetest.NewKeys(t)
			s, err := store.OpenExternal(context.Background(), tc.cfg)
			if err == nil {
				s.Close()
				t.Fatal("opened")
			}
			if !errdefs.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an invalid argument containing %q", err, tc.want)
			}
		})
	}
}

// etcdtestFiles is a server's TLS files without its server running.
func etcdtestFiles(t *testing.T) *etcdtest.Server {
	s := etcdtest.Start(t)
	s.Stop()
	return s
}

func TestExternalStore(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	if _, err := raw.Put(ctx, "/users-own/key", "theirs"); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"", "/team-a"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			s := openExternal(t, store.ExternalConfig{Endpoints: []string{srv.Endpoint}, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Prefix: prefix})
			awaitReady(t, s)
			if s.Members() != nil || s.Err() != nil || !s.HasLeader() {
				t.Fatal("an external store has no members, no fatal errors and a leader once ready")
			}
			tb := s.Table("things")
			name, value := "ext-canary-name-"+prefix, "ext-canary-value-"+prefix
			rev, err := tb.Create(ctx, "id1", name, []byte(value))
			if err != nil {
				t.Fatal(err)
			}
			o, err := tb.Resolve(ctx, "thing", name)
			if err != nil || string(o.Value) != value || o.ModRev != rev {
				t.Fatalf("read back: %+v %v", o, err)
			}
			resp, err := raw.Get(ctx, prefix+"/hush/v1/things/id1")
			if err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("raw key under the prefix: %v %v", resp, err)
			}
			for k, v := range srv.Dump(t) {
				if strings.Contains(k, "canary") || bytes.Contains(v, []byte("canary")) {
					t.Fatalf("clear text in etcd at %q", k)
				}
			}
			if _, err := s.Snapshot(ctx); !errdefs.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "backup is not supported with an external etcd") {
				t.Fatalf("snapshot: %v", err)
			}
			if err := s.CompactAll(ctx); err != nil {
				t.Fatal(err)
			}
			l, err := s.Campaign(ctx, "orchestrator", "node-a", time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if v, err := s.Leader(ctx, "orchestrator"); err != nil || v != "node-a" {
				t.Fatalf("leader: %q %v", v, err)
			}
			if err := l.Resign(ctx); err != nil {
				t.Fatal(err)
			}
			// What leave erases: everything under hush's root, and only it.
			if _, err := s.Client().Delete(ctx, "/hush/v1/", clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
			for k := range srv.Dump(t) {
				if strings.HasPrefix(k, prefix+"/hush/") {
					t.Fatalf("left after erase: %q", k)
				}
			}
			if resp, err := raw.Get(ctx, "/users-own/key"); err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("the user's own key went: %v %v", resp, err)
			}
		})
	}
}

func TestExternalStoreSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	keys := storetest.NewKeys(t)
	cfg := store.ExternalConfig{Endpoints: []string{srv.Endpoint}, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Keys: keys, DialTimeout: time.Second}
	s := openExternal(t, cfg)
	awaitReady(t, s)
	if _, err := s.Table("things").Create(ctx, "id1", "one", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	// A cluster that is gone fails requests with the no-leader category
	// once the probe has noticed; the caller's own deadline is far off.
	deadline := time.Now().Add(30 * time.Second)
	for {
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		_, err := s.Table("things").Create(wctx, "id2", "two", []byte("v2"))
		cancel()
		if errors.Is(err, errdefs.ErrNoLeader) {
			break
		}
		if err == nil {
			t.Fatal("write acknowledged by a stopped etcd")
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not the no-leader category: %v", err)
		}
	}
	srv.Restart(t)
	deadline = time.Now().Add(60 * time.Second)
	for {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		o, err := s.Table("things").Get(wctx, "id1")
		cancel()
		if err == nil {
			if string(o.Value) != "v1" {
				t.Fatalf("value after restart: %q", o.Value)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not answering after the etcd restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestExternalUnreachable(t *testing.T) {
	srv := etcdtestFiles(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := openExternal(t, store.ExternalConfig{Endpoints: []string{"https://" + addr}, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, DialTimeout: 500 * time.Millisecond})
	// The caller's deadline is far: the answer must come from the store.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := s.Table("things").Create(ctx, "id1", "one", []byte("v1")); !errors.Is(err, errdefs.ErrNoLeader) {
		t.Fatalf("write to an unreachable etcd: %v, want the no-leader category", err)
	}
	if _, err := s.Revision(ctx); !errors.Is(err, errdefs.ErrNoLeader) {
		t.Fatalf("linearizable read of an unreachable etcd: %v", err)
	}
	select {
	case <-s.Ready():
		t.Fatal("ready without an etcd")
	default:
	}
}

// A renewed key pair is read at the next handshake: hush starts with a
// certificate the server refuses, the files are replaced, and the store
// becomes ready without being reopened.
func TestExternalRenewedKeyPair(t *testing.T) {
	srv := etcdtest.Start(t)
	other := etcdtestFiles(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	for src, dst := range map[string]string{other.CertFile: cert, other.KeyFile: key} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := openExternal(t, store.ExternalConfig{Endpoints: []string{srv.Endpoint}, CAFile: srv.CAFile, CertFile: cert, KeyFile: key, DialTimeout: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.Revision(ctx); !errors.Is(err, errdefs.ErrNoLeader) {
		t.Fatalf("with a refused certificate: %v", err)
	}
	srv.IssueClient(t, cert, key)
	awaitReady(t, s)
	if _, err := s.Revision(ctx); err != nil {
		t.Fatal(err)
	}
}

// A full external cluster (etcd's own NOSPACE alarm: hush keeps no quota
// of its own there) answers writes with the store-full category, and
// deletes still work.
func TestExternalStoreFull(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t, etcdtest.WithQuota(1<<20))
	s := openExternal(t, store.ExternalConfig{Endpoints: []string{srv.Endpoint}, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile})
	awaitReady(t, s)
	tb := s.Table("things")
	val := bytes.Repeat([]byte("x"), 64<<10)
	var err error
	var n int
	for ; n < 200; n++ {
		if _, err = tb.Create(ctx, "id"+strconv.Itoa(n), "", val); err != nil {
			break
		}
	}
	if !errors.Is(err, errdefs.ErrNoSpace) || !strings.Contains(err.Error(), "the cluster store is full") {
		t.Fatalf("after %d writes of 64 KiB into a 1 MiB quota: %v", n, err)
	}
	if n == 0 {
		t.Fatal("the first write was refused")
	}
	if err := tb.Delete(ctx, "id0", "", 0, nil); err != nil {
		t.Fatalf("delete in a full cluster: %v", err)
	}
}

// An external etcd with a smaller request limit than hush's members use
// (etcdtest runs etcd's default, 1.5 MiB) refuses a large object with a
// 400 that names the setting, not a 503 that invites retrying.
func TestExternalRequestTooLarge(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	s := openExternal(t, store.ExternalConfig{Endpoints: []string{srv.Endpoint}, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile})
	awaitReady(t, s)
	tb := s.Table("things")
	if _, err := tb.Create(ctx, "small", "", bytes.Repeat([]byte("x"), 512<<10)); err != nil {
		t.Fatal(err)
	}
	// Past etcd's limit, then past its gRPC allowance too.
	for _, size := range []int{1700 << 10, 2300 << 10} {
		_, err := tb.Create(ctx, "large", "", bytes.Repeat([]byte("x"), size))
		if !errdefs.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "--max-request-bytes of at least") {
			t.Fatalf("a %d-byte object: %v", size, err)
		}
	}
}

// A master-key rotation re-wraps values in batches; on an external etcd
// with its default request limit (1.5 MiB, which etcdtest runs) two
// objects that each fit must not be refused together as one batch.
func TestExternalRewrapBatchesFit(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	keys := storetest.NewKeys(t)
	s := openExternal(t, store.ExternalConfig{Endpoints: []string{srv.Endpoint}, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Keys: keys})
	awaitReady(t, s)
	tb := s.Table("things")
	for _, id := range []string{"a", "b"} {
		if _, err := tb.Create(ctx, id, "", bytes.Repeat([]byte(id), 800<<10)); err != nil {
			t.Fatal(err)
		}
	}
	oldID, _ := rotate(t, keys)
	if _, err := s.Rewrap(ctx, nil); err != nil {
		t.Fatalf("re-wrap: %v", err)
	}
	if left, err := s.Referencing(ctx, oldID); err != nil || left != 0 {
		t.Fatalf("after the re-wrap %d values need the old key (%v)", left, err)
	}
}

// RegisterIf writes the registry entry only while its guard holds: a
// record changed after it was read (a demotion) leaves no entry.
func TestExternalRegisterIf(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	s := openExternal(t, store.ExternalConfig{Endpoints: []string{srv.Endpoint}, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile})
	awaitReady(t, s)
	if err := s.EnableManagers("node1"); err != nil {
		t.Fatal(err)
	}
	tb := s.Table("nodes")
	rev, err := tb.Create(ctx, "node1", "", []byte(`{"role":"manager"}`))
	if err != nil {
		t.Fatal(err)
	}
	guard := store.AtRevision(tb.Key("node1"), rev)
	if _, err := tb.Update(ctx, "node1", rev, []byte(`{"role":"worker"}`)); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Members().RegisterIf(ctx, guard); err != nil || ok {
		t.Fatalf("RegisterIf on a changed record: %v %v", ok, err)
	}
	if ids, err := s.RegisteredManagers(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("registry after a failed guard: %v %v", ids, err)
	}
	o, err := tb.Get(ctx, "node1")
	if err != nil {
		t.Fatal(err)
	}
	guard = store.AtRevision(tb.Key("node1"), o.ModRev)
	if ok, err := s.Members().RegisterIf(ctx, guard); err != nil || !ok {
		t.Fatalf("RegisterIf on an unchanged record: %v %v", ok, err)
	}
	if ids, err := s.RegisteredManagers(ctx); err != nil || len(ids) != 1 || ids[0] != "node1" {
		t.Fatalf("registry: %v %v", ids, err)
	}
}
