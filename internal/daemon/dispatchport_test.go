package daemon

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/moby/moby/api/types/swarm"
)

// occupyDispatchPort listens on listen's port + 2 until the test ends (or
// the returned func frees it).
func occupyDispatchPort(t *testing.T, listen string) (addr string, free func()) {
	t.Helper()
	h, p, _ := net.SplitHostPort(listen)
	n, _ := strconv.Atoi(p)
	addr = net.JoinHostPort(h, strconv.Itoa(n+2))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return addr, func() { ln.Close() }
}

// wantDispatchRefusal checks that err names the dispatcher's address and
// the port's role.
func wantDispatchRefusal(t *testing.T, err error, addr string) {
	t.Helper()
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "dispatcher port") {
		t.Fatalf("got %v, want a refusal naming the dispatcher port %s", err, addr)
	}
}

// A taken dispatcher port (listen port + 2) fails `docker swarm init
// --listen-addr` by name, with nothing done: the same init succeeds once
// the port is free.
func TestInitRefusesTakenDispatchPort(t *testing.T) {
	ctx := context.Background()
	listen := loopbackListen(t)
	addr, free := occupyDispatchPort(t, listen)
	d := startWith(t, Config{DataDir: t.TempDir(), NoInit: true})
	_, err := d.Init(ctx, swarm.InitRequest{ListenAddr: listen})
	wantDispatchRefusal(t, err, addr)
	if s := d.State(); s != swarm.LocalNodeStateInactive {
		t.Fatalf("after the refused init the node is %s", s)
	}
	if ok, err := cluster.Exists(ctx, d.curStore()); err != nil || ok {
		t.Fatalf("a cluster exists after the refused init (%v)", err)
	}
	if d.plainKey.Exists() {
		t.Fatal("a master key was written by the refused init")
	}
	free()
	if _, err := d.Init(ctx, swarm.InitRequest{ListenAddr: listen}); err != nil {
		t.Fatalf("init once the port is free: %v", err)
	}
	// The dispatcher serves from the runtime's goroutine.
	waitUntil(t, "the dispatcher serves after the init", func() bool { return d.dispatch.Load() != nil })
}

// hushd's first start with --listen-addr and a taken dispatcher port
// fails, leaving nothing a start with the port free trips over.
func TestFirstStartRefusesTakenDispatchPort(t *testing.T) {
	listen := loopbackListen(t)
	addr, free := occupyDispatchPort(t, listen)
	dir := t.TempDir()
	d, err := Start(context.Background(), Config{DataDir: dir, ListenAddr: listen,
		Socket: filepath.Join(dir, "s.sock"), SecretsDir: filepath.Join(dir, "run")})
	if err == nil {
		d.Close()
	}
	wantDispatchRefusal(t, err, addr)
	free()
	d = startWith(t, Config{DataDir: dir, ListenAddr: listen})
	if s := d.State(); s != swarm.LocalNodeStateActive {
		t.Fatalf("the start with the port free: %s", s)
	}
	waitUntil(t, "the dispatcher serves after the start", func() bool { return d.dispatch.Load() != nil })
}

// A manager join whose dispatcher port is taken is refused by the joining
// node before it sends anything: the manager records no node and no
// member.
func TestJoinRefusesTakenDispatchPort(t *testing.T) {
	ctx := context.Background()
	m := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t)})
	c := getCluster(t, m)
	before, err := nodes.List(ctx, m.store)
	if err != nil {
		t.Fatal(err)
	}
	listen := loopbackListen(t)
	addr, _ := occupyDispatchPort(t, listen)
	j := startWith(t, Config{DataDir: t.TempDir(), NoInit: true})
	err = j.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{m.cfg.ListenAddr}, JoinToken: c.JoinTokens.Manager, ListenAddr: listen})
	wantDispatchRefusal(t, err, addr)
	if s := j.State(); s != swarm.LocalNodeStateInactive {
		t.Fatalf("after the refused join the node is %s", s)
	}
	after, err := nodes.List(ctx, m.store)
	if err != nil || len(after) != len(before) {
		t.Fatalf("the manager records %d nodes after the refused join, %d before (%v)", len(after), len(before), err)
	}
}

// A manager restarted while its dispatcher port is taken starts (its
// store and API serve the cluster), says so in docker info's swarm Error,
// and serves the dispatcher once the port is free.
func TestRestartRetriesTakenDispatchPort(t *testing.T) {
	dir := t.TempDir()
	listen := loopbackListen(t)
	d := startWith(t, Config{DataDir: dir, ListenAddr: listen})
	d.Close()
	addr, free := occupyDispatchPort(t, listen)
	d = startWith(t, Config{DataDir: dir, ListenAddr: listen})
	waitUntil(t, "docker info names the taken dispatcher port", func() bool {
		p := d.CertProblem()
		return strings.Contains(p, addr) && strings.Contains(p, "dispatcher port")
	})
	free()
	waitUntil(t, "the dispatcher serves once its port is free", func() bool {
		return d.dispatch.Load() != nil && d.CertProblem() == ""
	})
}

// The listen port and the etcd peer port taken refuse an init with the
// same care: checked before anything is done, by name, and the init
// succeeds once the port is free.
func TestInitRefusesTakenListenPorts(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		offset int
		role   string
	}{{0, "join/CA port"}, {1, "etcd peer port"}} {
		t.Run(tc.role, func(t *testing.T) {
			listen := loopbackListen(t)
			h, p, _ := net.SplitHostPort(listen)
			n, _ := strconv.Atoi(p)
			addr := net.JoinHostPort(h, strconv.Itoa(n+tc.offset))
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			d := startWith(t, Config{DataDir: t.TempDir(), NoInit: true})
			_, err = d.Init(ctx, swarm.InitRequest{ListenAddr: listen})
			if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), tc.role) {
				t.Fatalf("got %v, want a refusal naming the %s %s", err, tc.role, addr)
			}
			if ok, err := cluster.Exists(ctx, d.curStore()); err != nil || ok || d.State() != swarm.LocalNodeStateInactive || d.plainKey.Exists() {
				t.Fatalf("the refused init left a cluster (%v, %v), state %s or a master key", ok, err, d.State())
			}
			ln.Close()
			if _, err := d.Init(ctx, swarm.InitRequest{ListenAddr: listen}); err != nil {
				t.Fatalf("init once the port is free: %v", err)
			}
		})
	}
}
