package daemon

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/moby/moby/api/types/swarm"
)

// The join request's own fields (docker swarm join --listen-addr,
// --advertise-addr, --availability) reach the joiner's record and, for a
// manager, its etcd member.
func TestJoinRequestFields(t *testing.T) {
	ctx := context.Background()
	m := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t)})
	c := getCluster(t, m)
	// Listening on every address lets the joiner advertise a loopback IP
	// it does not listen on by name, so that the record can only have
	// come from AdvertiseAddr.
	port := freeLoopbackPort(t)
	tests := []struct {
		name     string
		req      swarm.JoinRequest
		wantAddr string
		wantPeer string
	}{
		{name: "manager, listen and advertise addresses, pause",
			req: swarm.JoinRequest{JoinToken: c.JoinTokens.Manager, ListenAddr: net.JoinHostPort("0.0.0.0", strconv.Itoa(port)),
				AdvertiseAddr: "127.0.0.6", Availability: swarm.NodeAvailabilityPause},
			wantAddr: net.JoinHostPort("127.0.0.6", strconv.Itoa(port)), wantPeer: "https://" + net.JoinHostPort("127.0.0.6", strconv.Itoa(port+1))},
		{name: "manager, drain", req: swarm.JoinRequest{JoinToken: c.JoinTokens.Manager, Availability: swarm.NodeAvailabilityDrain}},
		// A worker without a listen address records its advertised IP
		// (no port: it listens on none).
		{name: "worker, advertise address, drain", req: swarm.JoinRequest{JoinToken: c.JoinTokens.Worker, AdvertiseAddr: "127.0.0.7",
			Availability: swarm.NodeAvailabilityDrain}, wantAddr: "127.0.0.7:0"},
		// Swarm's daemon takes the availability in any case.
		{name: "worker, PAUSE", req: swarm.JoinRequest{JoinToken: c.JoinTokens.Worker, Availability: "PAUSE"}},
	}
	outer := t
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			req.RemoteAddrs = []string{m.cfg.ListenAddr}
			if req.JoinToken == c.JoinTokens.Manager && req.ListenAddr == "" {
				req.ListenAddr = loopbackListen(t)
			}
			// Kept until the whole test ends: a joined manager closed at
			// its subtest's end would leave the next join without quorum.
			j := startWith(outer, Config{DataDir: outer.TempDir(), NoInit: true})
			if err := j.Join(ctx, req); err != nil {
				t.Fatalf("join: %v", err)
			}
			n, err := nodes.Get(ctx, m.store, j.nodeID)
			if err != nil {
				t.Fatal(err)
			}
			if n.Spec.Availability != swarm.NodeAvailability(strings.ToLower(string(req.Availability))) {
				t.Errorf("recorded availability %q, want %q", n.Spec.Availability, req.Availability)
			}
			if tc.wantAddr != "" && n.Addr != tc.wantAddr {
				t.Errorf("recorded address %q, want %q", n.Addr, tc.wantAddr)
			}
			if tc.wantPeer == "" {
				return
			}
			list, err := m.store.Members().List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, mb := range list {
				if mb.Name == j.nodeID {
					found = len(mb.PeerURLs) == 1 && mb.PeerURLs[0] == tc.wantPeer
					if !found {
						t.Errorf("member %s has peer URLs %v, want [%s]", mb.Name, mb.PeerURLs, tc.wantPeer)
					}
				}
			}
			if !found && !t.Failed() {
				t.Errorf("no etcd member named %s in %+v", j.nodeID, list)
			}
		})
	}
}

// A join refused on the request's own terms changes nothing, on either
// side, and says so with Swarm's text.
func TestJoinRefusals(t *testing.T) {
	ctx := context.Background()
	m := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: loopbackListen(t)})
	old := getCluster(t, m)
	if err := m.Update(ctx, old.Version, old.Spec, api.SwarmUpdateFlags{RotateWorkerToken: true, RotateManagerToken: true}); err != nil {
		t.Fatal(err)
	}
	c := getCluster(t, m)
	tests := []struct {
		name string
		req  swarm.JoinRequest
		want error
		text string
	}{
		{name: "rotated worker token", req: swarm.JoinRequest{JoinToken: old.JoinTokens.Worker},
			want: errdefs.ErrInvalidArgument, text: "A valid join token is necessary to join this cluster"},
		{name: "rotated manager token", req: swarm.JoinRequest{JoinToken: old.JoinTokens.Manager, ListenAddr: loopbackListen(t)},
			want: errdefs.ErrInvalidArgument, text: "A valid join token is necessary to join this cluster"},
		{name: "empty token", req: swarm.JoinRequest{},
			want: errdefs.ErrInvalidArgument, text: "A valid join token is necessary to join this cluster"},
		{name: "data path address", req: swarm.JoinRequest{JoinToken: c.JoinTokens.Worker, DataPathAddr: "127.0.0.1"},
			want: errdefs.ErrInvalidArgument, text: "DataPathAddr"},
		{name: "invalid availability", req: swarm.JoinRequest{JoinToken: c.JoinTokens.Worker, Availability: "sleep"},
			want: errdefs.ErrInvalidArgument, text: `invalid Availability: "sleep"`},
		{name: "invalid availability of a manager", req: swarm.JoinRequest{JoinToken: c.JoinTokens.Manager, ListenAddr: loopbackListen(t), Availability: "sleep"},
			want: errdefs.ErrInvalidArgument, text: `invalid Availability: "sleep"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, err := nodes.List(ctx, m.store)
			if err != nil {
				t.Fatal(err)
			}
			members, err := m.store.Members().List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			j := startWith(t, Config{DataDir: t.TempDir(), NoInit: true})
			req := tc.req
			req.RemoteAddrs = []string{m.cfg.ListenAddr}
			err = j.Join(ctx, req)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("join: %v, want %v naming %q", err, tc.want, tc.text)
			}
			if s := j.State(); s != swarm.LocalNodeStateInactive {
				t.Errorf("the refused node is %s", s)
			}
			if _, err := os.Stat(j.joinKeyPath()); !errors.Is(err, os.ErrNotExist) && !strings.Contains(tc.name, "rotated") {
				// A refusal the node knows of itself comes before the
				// join key is made; the manager's refusal of a token
				// comes after (the key is kept for the next try).
				t.Errorf("a join key was written for a join refused before anything was sent (%v)", err)
			}
			after, err := nodes.List(ctx, m.store)
			if err != nil {
				t.Fatal(err)
			}
			if len(after) != len(before) {
				t.Errorf("the manager records %d nodes after the refusal, %d before", len(after), len(before))
			}
			membersAfter, err := m.store.Members().List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(membersAfter) != len(members) {
				t.Errorf("%d etcd members after the refusal, %d before", len(membersAfter), len(members))
			}
		})
	}
}
