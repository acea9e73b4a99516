package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// A member's configuration is refused by name before etcd starts: no
// plaintext socket, no member without its TLS material, no join without
// the member list.
func TestMemberConfigRefusals(t *testing.T) {
	tlsm := newTestCA(t).issue(t, pki.RoleManager)
	peers := []store.Peer{{Name: "m1", PeerURL: "https://127.0.0.1:1"}}
	tests := []struct {
		name string
		cfg  store.MemberConfig
		want string
	}{
		{"no peer URL", store.MemberConfig{TLS: tlsm}, "needs a peer URL"},
		{"plaintext peer", store.MemberConfig{PeerURL: "http://127.0.0.1:2380", TLS: tlsm}, "must use https"},
		{"plaintext listener", store.MemberConfig{PeerURL: "https://127.0.0.1:2380", ListenPeerURL: "http://0.0.0.0:2380", TLS: tlsm}, "must use https"},
		{"plaintext client", store.MemberConfig{PeerURL: "https://127.0.0.1:2380", ClientURL: "http://127.0.0.1:2379", TLS: tlsm}, "must use https"},
		{"no port", store.MemberConfig{PeerURL: "https://127.0.0.1", TLS: tlsm}, "needs host:port"},
		{"no key", store.MemberConfig{PeerURL: "https://127.0.0.1:2380", TLS: store.MemberTLS{CertPEM: tlsm.CertPEM, CAPEM: tlsm.CAPEM}}, "certificate, key and the cluster CA"},
		{"no CA", store.MemberConfig{PeerURL: "https://127.0.0.1:2380", TLS: store.MemberTLS{CertPEM: tlsm.CertPEM, KeyPEM: tlsm.KeyPEM}}, "certificate, key and the cluster CA"},
		{"join without members", store.MemberConfig{PeerURL: "https://127.0.0.1:2380", TLS: tlsm, Join: true}, "member list"},
		{"join and force", store.MemberConfig{PeerURL: "https://127.0.0.1:2380", TLS: tlsm, Join: true, InitialCluster: peers, ForceNewCluster: true}, "both join"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			s, err := store.OpenEmbedded(context.Background(), store.EmbeddedConfig{Dir: t.TempDir(), Name: "m", EtcdLogLevel: "error", Keys: storetest.NewKeys(t), Member: &cfg})
			if err == nil {
				_ = s.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
		})
	}
}

// A lone member is unchanged: ready when Open returns, always led, and no
// membership to manage.
func TestLoneMemberReady(t *testing.T) {
	s := storetest.New(t)
	select {
	case <-s.Ready():
	default:
		t.Fatal("lone member not ready after Open")
	}
	if !s.HasLeader() || s.Members() != nil {
		t.Fatalf("lone member: leader %v members %v", s.HasLeader(), s.Members())
	}
}

// TestElectionNames: a name with '/' (whose key prefix would take in
// another election's candidates) or an empty one is refused by name,
// before anything is written.
func TestElectionNames(t *testing.T) {
	s := storetest.New(t)
	ctx := context.Background()
	for _, name := range []string{"", "a/b", "orchestrator/"} {
		if _, err := s.Campaign(ctx, name, "v", time.Second); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Campaign(%q): %v, want invalid argument", name, err)
		}
		if _, err := s.Leader(ctx, name); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Leader(%q): %v, want invalid argument", name, err)
		}
	}
	l, err := s.Campaign(ctx, "orchestrator", "v", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Resign(ctx) }()
	if v, err := s.Leader(ctx, "orchestrator"); err != nil || v != "v" {
		t.Fatalf("Leader = %q, %v", v, err)
	}
}
