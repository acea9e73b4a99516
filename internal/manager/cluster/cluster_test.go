package cluster

import (
	"context"
	"errors"
	"regexp"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

var tokenRE = regexp.MustCompile(`^SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}$`)

func newCluster(t *testing.T) (Cluster, *keyring.Keyring) {
	t.Helper()
	mk, _ := keyring.GenerateMasterKey()
	kr, _ := keyring.New(mk)
	c, err := Init(context.Background(), storetest.New(t), kr, DefaultSpec())
	if err != nil {
		t.Fatal(err)
	}
	return c, kr
}

func TestJoinTokens(t *testing.T) {
	c, _ := newCluster(t)
	w, m := c.JoinTokens.Worker, c.JoinTokens.Manager
	for _, tok := range []string{w, m} {
		if !tokenRE.MatchString(tok) {
			t.Fatalf("token %q is not in Swarm's format", tok)
		}
	}
	// Both tokens pin the same CA digest.
	if w[:59] != m[:59] || w == m {
		t.Fatal("worker and manager tokens must share the CA digest and differ in secret")
	}
	if role, ok := c.ValidateJoinToken(w); !ok || role != "worker" {
		t.Fatalf("worker token: %s %v", role, ok)
	}
	if role, ok := c.ValidateJoinToken(m); !ok || role != "manager" {
		t.Fatalf("manager token: %s %v", role, ok)
	}
	if err := c.RotateToken("worker"); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.ValidateJoinToken(w); ok {
		t.Fatal("old worker token still validates after rotation")
	}
	if role, ok := c.ValidateJoinToken(c.JoinTokens.Worker); !ok || role != "worker" {
		t.Fatal("new worker token does not validate")
	}
	if _, ok := c.ValidateJoinToken(m); !ok {
		t.Fatal("rotating the worker token must not change the manager token")
	}
	if _, ok := c.ValidateJoinToken(""); ok {
		t.Fatal("empty token validates")
	}
}

func TestUnlockKeySealed(t *testing.T) {
	c, kr := newCluster(t)
	if k, err := c.UnlockKey(kr); err != nil || k != "" {
		t.Fatalf("no unlock key yet: %q %v", k, err)
	}
	key, err := keyring.GenerateUnlockKey()
	if err != nil || key == "" {
		t.Fatalf("GenerateUnlockKey: %q, %v", key, err)
	}
	if err := c.SetUnlockKey(kr, key); err != nil {
		t.Fatal(err)
	}
	if got, err := c.UnlockKey(kr); err != nil || got != key {
		t.Fatalf("round trip: %v", err)
	}
	info := c.Info()
	if info.TLSInfo.TrustRoot == "" || len(info.TLSInfo.CertIssuerPublicKey) == 0 {
		t.Fatal("TLSInfo missing")
	}
}

func newStore(t *testing.T) *store.Store { return storetest.New(t) }

// hush's own writes keep the version the API shows; a client's write
// moves it above every earlier one; a write from a stale read is refused.
func TestVersionMovesOnlyWithClientWrites(t *testing.T) {
	ctx := context.Background()
	mk, _ := keyring.GenerateMasterKey()
	kr, _ := keyring.New(mk)
	st := newStore(t)
	c, err := Init(ctx, st, kr, DefaultSpec())
	if err != nil {
		t.Fatal(err)
	}
	v0 := c.Version
	if v0 == 0 || c.Shown != v0 {
		t.Fatalf("created with version %d (stored %d)", v0, c.Shown)
	}
	c.UnlockKeyFetched = true
	if err := PutInternal(ctx, st, &c); err != nil {
		t.Fatal(err)
	}
	got, _ := Get(ctx, st)
	if got.Version != v0 || !got.UnlockKeyFetched {
		t.Fatalf("after an internal write: version %d, want %d", got.Version, v0)
	}
	stale := got
	got.Spec.Labels = map[string]string{"a": "b"}
	if err := Put(ctx, st, &got); err != nil {
		t.Fatal(err)
	}
	after, _ := Get(ctx, st)
	if after.Version <= v0 {
		t.Fatalf("a client's write: version %d, want above %d", after.Version, v0)
	}
	if err := Put(ctx, st, &stale); !errors.Is(err, errdefs.ErrOutOfSequence) {
		t.Fatalf("write from a stale read: %v", err)
	}
	if err := PutInternal(ctx, st, &stale); !errors.Is(err, errdefs.ErrOutOfSequence) {
		t.Fatalf("internal write from a stale read: %v", err)
	}
}
