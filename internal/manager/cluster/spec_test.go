package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

func ptr[T any](v T) *T { return &v }

func TestSpecValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*swarm.Spec)
		want string // "" accepts
		ctrl bool   // a control-API (rpc-prefixed) error, as in Swarm
	}{
		{"defaults", func(*swarm.Spec) {}, "", false},
		{"empty name is default", func(s *swarm.Spec) { s.Name = "" }, "", false},
		{"other name", func(s *swarm.Spec) { s.Name = "prod" }, `swarm spec must be named "default"`, false},
		{"cert expiry under 1h", func(s *swarm.Spec) { s.CAConfig.NodeCertExpiry = 30 * time.Minute }, "minimum certificate expiry time is: 1h0m0s", true},
		{"negative cert expiry", func(s *swarm.Spec) { s.CAConfig.NodeCertExpiry = -time.Hour }, "minimum certificate expiry time is: 1h0m0s", true},
		{"cert expiry 1h", func(s *swarm.Spec) { s.CAConfig.NodeCertExpiry = time.Hour }, "", false},
		{"zero cert expiry is unset", func(s *swarm.Spec) { s.CAConfig.NodeCertExpiry = 0 }, "", false},
		{"negative heartbeat", func(s *swarm.Spec) { s.Dispatcher.HeartbeatPeriod = -time.Second }, "heartbeat time period cannot be a negative duration", true},
		{"external CA protocol", func(s *swarm.Spec) {
			s.CAConfig.ExternalCAs = []*swarm.ExternalCA{{Protocol: "acme", URL: "https://ca"}}
		}, `invalid protocol: "acme"`, false},
		{"external CA cfssl any case", func(s *swarm.Spec) {
			s.CAConfig.ExternalCAs = []*swarm.ExternalCA{{Protocol: "CFSSL", URL: "https://ca"}}
		}, "", false},
		{"election tick under 5 heartbeats", func(s *swarm.Spec) { s.Raft.ElectionTick, s.Raft.HeartbeatTick = 4, 1 }, "Raft.ElectionTick 4 must be at least 5 times Raft.HeartbeatTick 1", false},
		{"election tick too large", func(s *swarm.Spec) { s.Raft.ElectionTick = 501 }, "Raft.ElectionTick 501 is too large", false},
		{"heartbeat tick too large", func(s *swarm.Spec) { s.Raft.HeartbeatTick = 1 << 40 }, "Raft.HeartbeatTick 1099511627776 is too large", false},
		{"negative election tick", func(s *swarm.Spec) { s.Raft.ElectionTick = -1 }, "Raft.ElectionTick must not be negative", false},
		{"negative heartbeat tick", func(s *swarm.Spec) { s.Raft.HeartbeatTick = -3 }, "Raft.HeartbeatTick must not be negative", false},
		{"zero ticks keep etcd's defaults", func(s *swarm.Spec) { s.Raft.ElectionTick, s.Raft.HeartbeatTick = 0, 0 }, "", false},
		{"negative history keeps all", func(s *swarm.Spec) { s.Orchestration.TaskHistoryRetentionLimit = ptr(int64(-1)) }, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := DefaultSpec()
			tc.edit(&s)
			err := ValidateSpec(&s)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if s.Name != "default" || s.Labels == nil {
					t.Fatalf("not normalised: name %q labels %v", s.Name, s.Labels)
				}
				return
			}
			var e *errdefs.Error
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want 400 %q", err, tc.want)
			}
			if !errorAs(err, &e) || e.Control != tc.ctrl {
				t.Fatalf("%v: control=%v, want %v", err, e != nil && e.Control, tc.ctrl)
			}
		})
	}
}

func errorAs(err error, e **errdefs.Error) bool {
	x, ok := err.(*errdefs.Error)
	*e = x
	return ok
}

func TestValidateSpecNormalisesProtocol(t *testing.T) {
	s := DefaultSpec()
	s.CAConfig.ExternalCAs = []*swarm.ExternalCA{{Protocol: "CfSsL", URL: "https://ca.example:8888"}}
	if err := ValidateSpec(&s); err != nil {
		t.Fatal(err)
	}
	if s.CAConfig.ExternalCAs[0].Protocol != swarm.ExternalCAProtocolCFSSL {
		t.Fatalf("protocol %q, want Swarm's lower-case cfssl", s.CAConfig.ExternalCAs[0].Protocol)
	}
}

func TestInitValidation(t *testing.T) {
	pool := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range s {
			out = append(out, netip.MustParsePrefix(p))
		}
		return out
	}
	for _, tc := range []struct {
		name string
		req  swarm.InitRequest
		want string
		net  Network
	}{
		{"cli defaults", swarm.InitRequest{ListenAddr: "0.0.0.0:2377"}, "",
			Network{ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "127.0.0.1:2377", DataPathPort: 4789}},
		{"listen host only", swarm.InitRequest{ListenAddr: "127.0.0.1"}, "",
			Network{ListenAddr: "127.0.0.1:2377", AdvertiseAddr: "127.0.0.1:2377", DataPathPort: 4789}},
		{"listen port only", swarm.InitRequest{ListenAddr: ":4000", AdvertiseAddr: "10.1.2.3"}, "",
			Network{ListenAddr: "0.0.0.0:4000", AdvertiseAddr: "10.1.2.3:4000", DataPathPort: 4789}},
		{"interface name", swarm.InitRequest{ListenAddr: "lo:2377", AdvertiseAddr: "lo", DataPathAddr: "lo"}, "",
			Network{ListenAddr: "127.0.0.1:2377", AdvertiseAddr: "127.0.0.1:2377", DataPathAddr: "127.0.0.1", DataPathPort: 4789}},
		{"empty listen", swarm.InitRequest{}, `invalid ListenAddr "": invalid empty address`, Network{}},
		{"bad listen", swarm.InitRequest{ListenAddr: "nosuch-if0:2377"}, "listen address must be an IP address or network interface (with optional port number)", Network{}},
		{"not default", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", Spec: swarm.Spec{Annotations: swarm.Annotations{Name: "x"}}}, `swarm spec must be named "default"`, Network{}},
		{"unspecified advertise", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "0.0.0.0"}, "advertise address must be a non-zero IP address or network interface (with optional port number)", Network{}},
		{"data path addr with port", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", DataPathAddr: "127.0.0.1:4789"}, "data path address must be a non-zero IP address or network interface (without a port number)", Network{}},
		{"pool default size", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", DefaultAddrPool: pool("10.20.0.0/16")}, "",
			Network{ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "127.0.0.1:2377", DataPathPort: 4789, DefaultAddrPool: pool("10.20.0.0/16"), SubnetSize: 24}},
		{"pool and size", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", DefaultAddrPool: pool("10.20.0.0/16", "10.30.0.0/16"), SubnetSize: 26}, "",
			Network{ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "127.0.0.1:2377", DataPathPort: 4789, DefaultAddrPool: pool("10.20.0.0/16", "10.30.0.0/16"), SubnetSize: 26}},
		{"size without pool has no use", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", SubnetSize: 26}, "",
			Network{ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "127.0.0.1:2377", DataPathPort: 4789}},
		{"size over 29", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", DefaultAddrPool: pool("10.20.0.0/16"), SubnetSize: 30}, "subnet size is out of range: 30", Network{}},
		{"size under pool", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", DefaultAddrPool: pool("10.20.0.0/16"), SubnetSize: 8}, `invalid CIDR: "10.20.0.0/16". Subnet size is too small for pool: 8`, Network{}},
		{"ipv6 pool", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", DefaultAddrPool: pool("fd00::/48"), SubnetSize: 29}, "DefaultAddrPool fd00::/48: IPv6 default address pools are not supported by hush", Network{}},
		{"data path port low", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", DataPathPort: 1023}, "Datapath port number is not in valid range (1024-49151) : 1023", Network{}},
		{"data path port high", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", DataPathPort: 49152}, "Datapath port number is not in valid range (1024-49151) : 49152", Network{}},
		{"data path port", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", DataPathPort: 7789}, "",
			Network{ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "127.0.0.1:2377", DataPathPort: 7789}},
		{"availability", swarm.InitRequest{ListenAddr: "0.0.0.0:2377", Availability: "sideways"}, `invalid Availability: "sideways"`, Network{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			n, err := ValidateInit(&req, "127.0.0.1")
			if tc.want != "" {
				if err == nil || err.Error() != tc.want || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("got %v, want 400 %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(n, tc.net) {
				t.Fatalf("got %+v\nwant %+v", n, tc.net)
			}
			if req.Availability == "" {
				t.Fatal("availability not defaulted")
			}
		})
	}
}

func TestParseAddrPools(t *testing.T) {
	got, err := ParseAddrPools([]string{" 10.20.0.0/16", "10.30.1.0/16 "})
	if err != nil {
		t.Fatal(err)
	}
	// Kept as written, as Swarm shows them.
	if got[0].String() != "10.20.0.0/16" || got[1].String() != "10.30.1.0/16" {
		t.Fatalf("pools %v", got)
	}
	for in, want := range map[string]string{
		"10.20.0.0/33": "invalid base pool 10.20.0.0/33: invalid CIDR address: 10.20.0.0/33",
		"10.20.0.0":    "invalid base pool 10.20.0.0: invalid CIDR address: 10.20.0.0",
		"banana":       "invalid base pool banana: invalid CIDR address: banana",
	} {
		if _, err := ParseAddrPools([]string{in}); err == nil || err.Error() != want || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%q: got %v, want %q", in, err, want)
		}
	}
	many := make([]string, MaxAddrPools+1)
	for i := range many {
		many[i] = "10.0.0.0/16"
	}
	if _, err := ParseAddrPools(many); err == nil {
		t.Fatal("an unbounded pool list was accepted")
	}
}

func TestMergeSpecKeepsDefaultsForUnsetFields(t *testing.T) {
	var req swarm.Spec
	req.Orchestration.TaskHistoryRetentionLimit = ptr(int64(3))
	req.Raft.SnapshotInterval = 5000
	req.Raft.KeepOldSnapshots = ptr(uint64(2))
	req.Dispatcher.HeartbeatPeriod = 7 * time.Second
	req.CAConfig.NodeCertExpiry = 48 * time.Hour
	req.Labels = map[string]string{"team": "infra"}
	req.TaskDefaults.LogDriver = &swarm.Driver{Name: "json-file"}
	got := MergeSpec(DefaultSpec(), req)
	want := DefaultSpec()
	want.Orchestration.TaskHistoryRetentionLimit = ptr(int64(3))
	want.Raft.SnapshotInterval = 5000
	want.Raft.KeepOldSnapshots = ptr(uint64(2))
	want.Dispatcher.HeartbeatPeriod = 7 * time.Second
	want.CAConfig.NodeCertExpiry = 48 * time.Hour
	want.Labels = map[string]string{"team": "infra"}
	want.TaskDefaults.LogDriver = &swarm.Driver{Name: "json-file"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	req.Labels["team"] = "changed"
	if got.Labels["team"] != "infra" {
		t.Fatal("merged spec shares the request's labels")
	}
	if d := MergeSpec(DefaultSpec(), swarm.Spec{}); !reflect.DeepEqual(d, DefaultSpec()) {
		t.Fatalf("an empty init spec changed the defaults: %+v", d)
	}
}

func TestEtcdTuning(t *testing.T) {
	got, err := EtcdTuningFor(DefaultSpec().Raft)
	if err != nil {
		t.Fatal(err)
	}
	// Swarm's defaults are etcd's defaults, apart from the snapshot
	// retention and catch-up entries Swarm sets lower.
	want := store.Tuning{SnapshotCount: 10000, MaxSnapFiles: 1, SnapshotCatchUpEntries: 500, Heartbeat: 100 * time.Millisecond, ElectionTimeout: time.Second}
	if got != want {
		t.Fatalf("defaults map to %+v, want %+v", got, want)
	}
	r := swarm.RaftConfig{SnapshotInterval: 5000, KeepOldSnapshots: ptr(uint64(2)), LogEntriesForSlowFollowers: 800, HeartbeatTick: 2, ElectionTick: 20}
	got, _ = EtcdTuningFor(r)
	want = store.Tuning{SnapshotCount: 5000, MaxSnapFiles: 3, SnapshotCatchUpEntries: 800, Heartbeat: 200 * time.Millisecond, ElectionTimeout: 2 * time.Second}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	got, _ = EtcdTuningFor(swarm.RaftConfig{KeepOldSnapshots: ptr(uint64(1) << 40)})
	if got.MaxSnapFiles != 0 {
		t.Fatalf("a retention past any disk should be etcd's unlimited (0), got %d", got.MaxSnapFiles)
	}
}

// The spec and the init-time settings are stored and returned as given.
func TestSpecRoundTrip(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	mk, _ := keyring.GenerateMasterKey()
	kr, _ := keyring.New(mk)
	var req swarm.Spec
	req.Orchestration.TaskHistoryRetentionLimit = ptr(int64(3))
	req.Raft.SnapshotInterval = 5000
	req.Raft.KeepOldSnapshots = ptr(uint64(2))
	req.Dispatcher.HeartbeatPeriod = 7 * time.Second
	req.CAConfig.NodeCertExpiry = 48 * time.Hour
	req.CAConfig.ExternalCAs = []*swarm.ExternalCA{{Protocol: "cfssl", URL: "https://ca.example:8888", Options: map[string]string{"k": "v"}}}
	req.TaskDefaults.LogDriver = &swarm.Driver{Name: "json-file", Options: map[string]string{"max-size": "1m"}}
	req.Labels = map[string]string{"team": "infra"}
	spec := MergeSpec(DefaultSpec(), req)
	if err := ValidateSpec(&spec); err != nil {
		t.Fatal(err)
	}
	netw := Network{ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "127.0.0.1:2377", DataPathAddr: "127.0.0.1", DataPathPort: 7789,
		DefaultAddrPool: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}, SubnetSize: 26}
	if _, err := Create(ctx, st, kr, Params{Spec: spec, Network: netw}); err != nil {
		t.Fatal(err)
	}
	c, err := Get(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	info := c.Info()
	if !reflect.DeepEqual(info.Spec, spec) {
		t.Fatalf("spec changed in the store:\n got %+v\nwant %+v", info.Spec, spec)
	}
	if !reflect.DeepEqual(c.Network, netw) {
		t.Fatalf("network settings %+v, want %+v", c.Network, netw)
	}
	if info.SubnetSize != 26 || info.DataPathPort != 7789 || len(info.DefaultAddrPool) != 1 || info.DefaultAddrPool[0].String() != "10.20.0.0/16" {
		t.Fatalf("info %+v", info)
	}
	// What the client gets back decodes to the same.
	b, _ := json.Marshal(info)
	var back swarm.ClusterInfo
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back.Spec, spec) {
		t.Fatalf("wire round trip: %v\n%s", err, b)
	}
}

func TestInfoDefaultsAsSwarm(t *testing.T) {
	c, _ := newCluster(t)
	info := c.Info()
	if info.SubnetSize != 24 || info.DataPathPort != 4789 || info.DefaultAddrPool != nil {
		t.Fatalf("defaults: pool %v size %d port %d; Swarm shows null, 24, 4789", info.DefaultAddrPool, info.SubnetSize, info.DataPathPort)
	}
}

// Join reads its addresses as init does: an interface's name is its IP, a
// name that is neither is refused with dockerd's text, an advertise port
// is kept only when given.
func TestResolveJoinAddrs(t *testing.T) {
	for _, tc := range []struct {
		listen, advertise         string
		wantListen, wantAdvertise string
		err                       string
	}{
		{listen: "", advertise: "", wantListen: "", wantAdvertise: ""},
		{listen: "0.0.0.0:2377", wantListen: "0.0.0.0:2377"},
		{listen: "tcp://127.0.0.5:4000", advertise: "127.0.0.6", wantListen: "127.0.0.5:4000", wantAdvertise: "127.0.0.6"},
		{listen: "lo:4000", advertise: "lo:4000", wantListen: "127.0.0.1:4000", wantAdvertise: "127.0.0.1:4000"},
		{listen: "127.0.0.5", wantListen: "127.0.0.5:2377"},
		{listen: "nosuchif0:4000", err: msgBadListenAddr},
		{listen: "127.0.0.5:4000", advertise: "nosuchif0", err: msgBadAdvertiseAddr},
		{listen: "127.0.0.5:4000", advertise: "0.0.0.0", err: msgBadAdvertiseAddr},
	} {
		l, a, err := ResolveJoinAddrs(tc.listen, tc.advertise)
		if tc.err != "" {
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ResolveJoinAddrs(%q, %q): %v, want a bad request %q", tc.listen, tc.advertise, err, tc.err)
			}
			continue
		}
		if err != nil || l != tc.wantListen || a != tc.wantAdvertise {
			t.Errorf("ResolveJoinAddrs(%q, %q) = %q, %q, %v; want %q, %q", tc.listen, tc.advertise, l, a, err, tc.wantListen, tc.wantAdvertise)
		}
	}
}
