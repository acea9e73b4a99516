package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
)

func TestRenewAt(t *testing.T) {
	now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	ca := newTestCA(t, now.Add(-time.Hour))
	leaf := issueNode(t, ca.CA, newID(t), RoleWorker, 0, now).cert.Leaf
	life := leaf.NotAfter.Sub(leaf.NotBefore) // 90 days and the backdated hour
	for _, tc := range []struct {
		name  string
		randN func(int64) int64
		want  time.Duration // after NotBefore
	}{
		{"lowest draw: half its life", func(int64) int64 { return 0 }, life / 2},
		{"highest draw: a minute short of 80%", func(n int64) int64 { return n - 1 }, life*8/10 - time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := RenewAt(leaf, tc.randN).Sub(leaf.NotBefore); got != tc.want {
				t.Fatalf("renew %v after NotBefore, want %v", got, tc.want)
			}
		})
	}
	// With a real random source every point falls in the window, and the
	// points spread (no thundering herd).
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[time.Time]bool{}
	for range 1000 {
		at := RenewAt(leaf, r.Int64N)
		if at.Before(leaf.NotBefore.Add(life/2)) || !at.Before(leaf.NotBefore.Add(life*8/10)) {
			t.Fatalf("renewal at %v is outside [50%%, 80%%)", at)
		}
		seen[at] = true
	}
	if len(seen) < 900 {
		t.Fatalf("only %d distinct renewal points in 1000", len(seen))
	}
	// A one-minute life has no window to draw from.
	short := *leaf
	short.NotAfter = short.NotBefore.Add(time.Minute)
	if got := RenewAt(&short, func(int64) int64 { t.Fatal("drew from an empty window"); return 0 }); !got.Equal(short.NotBefore) {
		t.Fatalf("got %v", got)
	}
}

func TestNeedsReissue(t *testing.T) {
	now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	ca := newTestCA(t, now.Add(-time.Hour))
	rotated := newTestCA(t, now.Add(-time.Hour))
	leaf := issueNode(t, ca.CA, newID(t), RoleWorker, 0, now).cert.Leaf
	renewAt := RenewAt(leaf, func(int64) int64 { return 0 })
	for _, tc := range []struct {
		name string
		role Role
		root *x509.Certificate
		now  time.Time
		want Reason
	}{
		{"fresh", RoleWorker, ca.Root(), now, ReasonNone},
		{"a minute before renewal", RoleWorker, ca.Root(), renewAt.Add(-time.Minute), ReasonNone},
		{"at renewal", RoleWorker, ca.Root(), renewAt, ReasonDue},
		{"promoted", RoleManager, ca.Root(), now, ReasonRole},
		{"root rotated (same subject, new key)", RoleWorker, rotated.Root(), now, ReasonRoot},
		{"expired", RoleWorker, ca.Root(), leaf.NotAfter, ReasonExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := NeedsReissue(leaf, tc.role, tc.root, renewAt, tc.now); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	// Reissued with the new role, the node is content again.
	mgr := issueNode(t, ca.CA, newID(t), RoleManager, 0, now).cert.Leaf
	if got := NeedsReissue(mgr, RoleManager, ca.Root(), RenewAt(mgr, rand.Int64N), now); got != ReasonNone {
		t.Fatalf("after reissue: %q", got)
	}
}

func TestRefusalsSurviveRestart(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	gone := issueNode(t, ca.CA, newID(t), RoleWorker, 0, now)
	stays := issueNode(t, ca.CA, newID(t), RoleWorker, 0, now)
	var r Refusals
	if err := r.Remove(gone.id, now); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove("../etc", now); err == nil {
		t.Fatal("a non-ID removed")
	}
	stored, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	var after Refusals // a restarted daemon
	if err := json.Unmarshal(stored, &after); err != nil {
		t.Fatal(err)
	}
	for _, rr := range []*Refusals{&r, &after} {
		if err := rr.Check(gone.id, gone.cert.Leaf); !errdefs.Is(err, errdefs.ErrUnauthorized) {
			t.Fatalf("removed node let in: %v", err)
		}
		if err := rr.Check(stays.id, stays.cert.Leaf); err != nil {
			t.Fatalf("a member refused: %v", err)
		}
	}
	if err := json.Unmarshal([]byte(`{"removed":{"NOT AN ID":"2027-01-01T00:00:00Z"}}`), &after); err == nil {
		t.Fatal("a corrupt list accepted")
	}
	if err := after.Check(gone.id, gone.cert.Leaf); err == nil {
		t.Fatal("a refused load changed the list")
	}
}

func TestRefuseIssuedBefore(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now.Add(-48*time.Hour))
	old := issueNode(t, ca.CA, newID(t), RoleWorker, 0, now.Add(-24*time.Hour))
	fresh := issueNode(t, ca.CA, newID(t), RoleWorker, 0, now)
	var r Refusals
	r.RefuseIssuedBefore(now.Add(-time.Minute))
	r.RefuseIssuedBefore(now.Add(-30 * 24 * time.Hour)) // never moves back
	if err := r.Check(old.id, old.cert.Leaf); err == nil {
		t.Fatal("a certificate from before the rotation let in")
	}
	if err := r.Check(fresh.id, fresh.cert.Leaf); err != nil {
		t.Fatalf("a certificate issued after the cut-off refused: %v", err)
	}
}

func TestNodeKeySealed(t *testing.T) {
	ctx := context.Background()
	mk, _ := keyring.GenerateMasterKey()
	kr, err := keyring.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	id := newID(t)
	key, _ := NewNodeKey()
	var (
		stored keyring.Sealed
		handed []byte
	)
	seal := func(_ context.Context, der []byte) error {
		handed = der
		s, err := kr.Seal(der, NodeKeyAAD(id))
		stored = s
		return err
	}
	if err := SaveNodeKey(ctx, seal, key); err != nil {
		t.Fatal(err)
	}
	if len(handed) == 0 || !allZero(handed) {
		t.Fatal("the DER handed to seal was not wiped")
	}
	var opened []byte
	open := func(aad []byte) OpenKeyFunc {
		return func(context.Context) ([]byte, error) {
			b, err := kr.Open(stored, aad)
			opened = b
			return b, err
		}
	}
	got, err := LoadNodeKey(ctx, open(NodeKeyAAD(id)))
	if err != nil || !got.Equal(key) {
		t.Fatalf("load: %v", err)
	}
	if !allZero(opened) {
		t.Fatal("the opened DER was not wiped")
	}
	if _, err := LoadNodeKey(ctx, open(NodeKeyAAD(newID(t)))); err == nil {
		t.Fatal("a node key opened for another node")
	}
	// A key that is not P-256, or not a key, is refused.
	garbage := func(context.Context) ([]byte, error) { return []byte("not a key"), nil }
	if _, err := LoadNodeKey(ctx, garbage); !errdefs.Is(err, errdefs.ErrInternal) {
		t.Fatalf("garbage key: %v", err)
	}
	p384 := func(context.Context) ([]byte, error) {
		k, _ := ecdsa.GenerateKey(elliptic.P384(), crand.Reader)
		return x509.MarshalPKCS8PrivateKey(k)
	}
	if _, err := LoadNodeKey(ctx, p384); err == nil {
		t.Fatal("a P-384 node key accepted")
	}
	sealErr := errors.New("disk full")
	if err := SaveNodeKey(ctx, func(context.Context, []byte) error { return sealErr }, key); !errors.Is(err, sealErr) {
		t.Fatalf("seal error lost: %v", err)
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
