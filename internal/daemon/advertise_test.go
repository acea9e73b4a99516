package daemon

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/moby/moby/api/types/swarm"
)

// A manager given a listen IP and no advertise address advertises the
// listen IP, as Swarm does: before, hushd's default 127.0.0.1 was
// advertised, and a manager on another host was told to dial it.
func TestAdvertiseDefaultsToListenIP(t *testing.T) {
	port := strconv.Itoa(freeLoopbackPort(t))
	listen := net.JoinHostPort("127.0.0.9", port)
	tests := []struct {
		name      string
		cfg       Config
		init      *swarm.InitRequest
		wantHost  string
		wantCAddr string
	}{
		{name: "first start from hushd's flags", cfg: Config{ListenAddr: listen}, wantHost: "127.0.0.9"},
		{name: "docker swarm init --listen-addr", cfg: Config{NoInit: true},
			init: &swarm.InitRequest{ListenAddr: listen}, wantHost: "127.0.0.9"},
		{name: "hushd's --advertise-addr still wins", cfg: Config{ListenAddr: listen, AdvertiseAddr: "127.0.0.8"}, wantHost: "127.0.0.8"},
		{name: "the request's advertise address wins", cfg: Config{NoInit: true, AdvertiseAddr: "127.0.0.8"},
			init: &swarm.InitRequest{ListenAddr: listen, AdvertiseAddr: "127.0.0.7"}, wantHost: "127.0.0.7"},
		{name: "hushd's listen port with the request's advertise IP", cfg: Config{NoInit: true, ListenAddr: listen},
			init: &swarm.InitRequest{ListenAddr: cliDefaultListen, AdvertiseAddr: "127.0.0.7"}, wantHost: "127.0.0.7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.DataDir = t.TempDir()
			d := startWith(t, cfg)
			if tc.init != nil {
				if _, err := d.Init(context.Background(), *tc.init); err != nil {
					t.Fatal(err)
				}
			}
			want := net.JoinHostPort(tc.wantHost, port)
			if d.listen.Advertise != want {
				t.Errorf("advertised %q, want %q", d.listen.Advertise, want)
			}
			if got := getCluster(t, d).Network.AdvertiseAddr; got != want {
				t.Errorf("the cluster records %q as the advertise address, want %q", got, want)
			}
			list, err := d.store.Members().List(context.Background())
			if err != nil || len(list) != 1 || list[0].PeerURLs[0] != "https://"+nextPort(want) {
				t.Errorf("members %+v (%v), want the peer URL https://%s", list, err, nextPort(want))
			}
			d.Close()
		})
	}
}

// An advertised port other than the listen port is refused by name:
// hush's peers dial the listen port (and the two after it), so a port
// Swarm would advertise (behind a port mapping) cannot be honoured.
func TestAdvertisePortRefused(t *testing.T) {
	port := strconv.Itoa(freeLoopbackPort(t))
	d := startWith(t, Config{DataDir: t.TempDir(), NoInit: true})
	_, err := d.Init(context.Background(), swarm.InitRequest{ListenAddr: net.JoinHostPort("127.0.0.9", port), AdvertiseAddr: "127.0.0.9:2400"})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "AdvertiseAddr 127.0.0.9:2400") {
		t.Fatalf("init: %v, want a bad request naming AdvertiseAddr", err)
	}
	if d.state != swarm.LocalNodeStateInactive {
		t.Fatalf("the refused init left the node %s", d.state)
	}
	if _, err := Start(context.Background(), Config{DataDir: t.TempDir(), ListenAddr: net.JoinHostPort("127.0.0.9", port), AdvertiseAddr: "127.0.0.9:2400"}); err == nil || !strings.Contains(err.Error(), "AdvertiseAddr 127.0.0.9:2400") {
		t.Fatalf("start with --advertise-addr 127.0.0.9:2400: %v, want it refused by name", err)
	}
}

// A manager join between hosts that a loopback address would break is
// refused by name by the manager, whichever side advertises loopback,
// before anything is admitted.
func TestCheckAdvertisedReach(t *testing.T) {
	tests := []struct {
		name, from, own, peerURL string
		want                     error
		text                     string
	}{
		{name: "one host: loopback everywhere", from: "127.0.0.1:5000", own: "127.0.0.1:2377", peerURL: "https://127.0.0.1:2378"},
		{name: "two hosts, real addresses", from: "10.0.0.2:5000", own: "10.0.0.1:2377", peerURL: "https://10.0.0.2:2378"},
		{name: "this manager advertises loopback", from: "10.0.0.2:5000", own: "127.0.0.1:2377", peerURL: "https://10.0.0.2:2378",
			want: errdefs.ErrFailedPrecondition, text: "this manager advertises 127.0.0.1:2377"},
		{name: "the joiner advertises loopback", from: "10.0.0.2:5000", own: "10.0.0.1:2377", peerURL: "https://127.0.0.1:2378",
			want: errdefs.ErrInvalidArgument, text: "the joining node advertises 127.0.0.1:2378"},
		{name: "IPv6 loopback", from: "[fd00::2]:5000", own: "[fd00::1]:2377", peerURL: "https://[::1]:2378",
			want: errdefs.ErrInvalidArgument, text: "[::1]:2378"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkAdvertisedReach(tc.from, tc.own, tc.peerURL)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) || !strings.Contains(err.Error(), "--advertise-addr") {
				t.Fatalf("err = %v, want %v naming %q and --advertise-addr", err, tc.want, tc.text)
			}
		})
	}
}

// hostIPv4 is one of this host's non-loopback IPv4 addresses, for a
// manager that a joiner reaches across "hosts" without a second host.
func hostIPv4(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("this host has no non-loopback IPv4 address")
	return ""
}

// loopbackWorkerAcrossHosts starts a manager on this host's own IPv4
// address (another host, as a joiner on loopback sees it) and joins it a
// worker whose listen plan advertises loopback (0.0.0.0, no advertise
// address). remote is the manager's join address.
func loopbackWorkerAcrossHosts(ctx context.Context, t *testing.T) (m, w *Daemon, c cluster.Cluster, remote string) {
	t.Helper()
	ip := hostIPv4(t)
	remote = net.JoinHostPort(ip, strconv.Itoa(freeLoopbackPort(t)))
	m = startWith(t, Config{DataDir: t.TempDir(), ListenAddr: remote, AdvertiseAddr: ip})
	c = getCluster(t, m)
	w = startWith(t, Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: "0.0.0.0:" + strconv.Itoa(freeLoopbackPort(t))})
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{remote}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	return m, w, c, remote
}

// A worker is dialled by no one, so a worker join across hosts from a
// node whose listen plan would advertise loopback (hushd --listen-addr
// 0.0.0.0:port, no --advertise-addr) is admitted: the joiner cannot tell
// a worker token from a manager one, and only a manager join is refused
// (by the manager, which knows the token's role).
func TestWorkerJoinWithLoopbackAdvertiseAcrossHosts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), joinTimeout)
	defer cancel()
	m, w, c, remote := loopbackWorkerAcrossHosts(ctx, t)
	if w.State() != swarm.LocalNodeStateActive {
		t.Fatalf("worker state after join: %s", w.State())
	}
	// A manager join from it is refused by the manager, by name, before
	// anything is admitted.
	j := startWith(t, Config{DataDir: t.TempDir(), NoInit: true, ListenAddr: "0.0.0.0:" + strconv.Itoa(freeLoopbackPort(t))})
	err := j.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{remote}, JoinToken: c.JoinTokens.Manager})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "127.0.0.1:") || !strings.Contains(err.Error(), "--advertise-addr") {
		t.Fatalf("manager join: %v, want a bad request naming the loopback address", err)
	}
	if j.member != nil || j.state != swarm.LocalNodeStateInactive {
		t.Fatalf("the refused join changed the node: member %v, state %s", j.member != nil, j.state)
	}
	if list, _ := m.store.Members().List(ctx); len(list) != 1 {
		t.Fatalf("the refused manager join added a member: %+v", list)
	}
}

// A worker admitted with a loopback advertise on another host is refused
// a promotion by name, as a manager join from it is, before anything is
// signed or admitted: its etcd peers would dial 127.0.0.1.
func TestPromotionRefusesLoopbackAcrossHosts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), joinTimeout)
	defer cancel()
	m, w, _, _ := loopbackWorkerAcrossHosts(ctx, t)
	if err := setRole(ctx, m, w.nodeID, swarm.NodeRoleManager); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	v, ok := w.syncViewLocked()
	w.mu.Unlock()
	if !ok {
		t.Fatal("the worker has no sync view")
	}
	err := w.promoteSelf(ctx, v)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "127.0.0.1:") || !strings.Contains(err.Error(), "--advertise-addr") {
		t.Fatalf("promotion: %v, want a bad request naming the loopback address", err)
	}
	if list, _ := m.store.Members().List(ctx); len(list) != 1 {
		t.Fatalf("the refused promotion added a member: %+v", list)
	}
}

// --force-new-cluster --advertise-addr naming the node's own IP without a
// port is not a move: the port ValidateInit supplies (the CLI's 2377) is
// not compared with a listen port of another number.
func TestForceNewClusterOwnAdvertiseIP(t *testing.T) {
	d := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t)})
	req := swarm.InitRequest{ListenAddr: cliDefaultListen, AdvertiseAddr: "127.0.0.1", ForceNewCluster: true}
	if _, err := d.InitWithKey(context.Background(), req, nil); err != nil {
		t.Fatalf("force-new-cluster with the node's own advertise IP: %v", err)
	}
	req.AdvertiseAddr = "127.0.0.3"
	if _, err := d.InitWithKey(context.Background(), req, nil); err == nil || !strings.Contains(err.Error(), "AdvertiseAddr 127.0.0.3") {
		t.Fatalf("force-new-cluster with another advertise IP: %v, want it refused by name", err)
	}
}
