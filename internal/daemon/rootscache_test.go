package daemon

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

// TestRootsCacheBoundsReads: the dispatcher's and the join/CA service's
// TLS configurations read the cluster's CA as each ClientHello arrives,
// before any certificate is shown, so anyone who can reach those ports
// could make a manager read the store (a linearizable etcd read and a
// decryption) per ClientHello. The roots are read at most once per
// rootsTTL, whatever the outcome: a failed read trusts nothing until the
// next (as one handshake did before), and a rotated root is read once
// the TTL has passed.
func TestRootsCacheBoundsReads(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	reads, fail := 0, false
	pool := x509.NewCertPool()
	c := &rootsCache{ttl: time.Second, now: func() time.Time { return now }, read: func() (*x509.CertPool, error) {
		reads++
		if fail {
			return nil, errors.New("store unreachable")
		}
		return pool, nil
	}}
	for range 1000 {
		if got := c.roots(); got != pool {
			t.Fatal("roots other than the ones read")
		}
	}
	if reads != 1 {
		t.Fatalf("%d reads for 1000 handshakes within the TTL, want 1", reads)
	}
	now = now.Add(time.Second)
	fail = true
	for range 1000 {
		if got := c.roots(); got == pool || got == nil {
			t.Fatalf("a failed read served the stale roots, or nil: %v", got)
		}
	}
	if reads != 2 {
		t.Fatalf("%d reads, want 2", reads)
	}
	now = now.Add(time.Second)
	fail = false
	if got := c.roots(); got != pool || reads != 3 {
		t.Fatalf("after the TTL: %d reads, fresh roots %v", reads, got == pool)
	}
}
