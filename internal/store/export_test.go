package store

import (
	"context"
	"fmt"
	"os"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Client is the store's etcd client, for this package's tests.
func (s *Store) Client() *clientv3.Client { return s.cli }

// ExpireForTest revokes the leadership's lease as its expiry would (the
// leader stalled past its TTL), without telling the leader.
func (l *Leadership) ExpireForTest(ctx context.Context) error {
	_, err := l.s.cli.Revoke(ctx, l.session.Lease())
	return err
}

// MemberTLSFileForTest reads the in-memory file etcd reads the member's
// certificate (0), key (1) or CA bundle (2) from, by the path etcd uses.
func MemberTLSFileForTest(s *Store, i int) ([]byte, error) {
	return os.ReadFile(fmt.Sprintf("/proc/self/fd/%d", s.members.files[i].Fd()))
}

// MemberTLSFdsForTest returns the descriptors of the member's in-memory
// TLS files (certificate, key, CA bundle).
func MemberTLSFdsForTest(s *Store) []int {
	fds := make([]int, len(s.members.files))
	for i, f := range s.members.files {
		fds[i] = int(f.Fd())
	}
	return fds
}

// CrashForTest stops renewing the presence's lease without revoking it, as
// a crash or a cut-off would: its claims live out the lease's TTL.
func (p *Presence) CrashForTest() { p.crashed.Store(true) }

// LeaseForTest is the presence's current lease (0: none).
func (p *Presence) LeaseForTest() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return int64(p.lease)
}

// RevokeLeaseForTest revokes a lease as its expiry would.
func RevokeLeaseForTest(ctx context.Context, s *Store, lease int64) error {
	_, err := s.cli.Revoke(ctx, clientv3.LeaseID(lease))
	return err
}

// LeaseBoundForTest reports whether key is one a rewrite leaves alone.
func LeaseBoundForTest(key string) bool { return leaseBound(key) }

// PutPerValueSealedForTest writes val under key sealed as hush wrote
// values before one data key served a whole write (keyring.Seal: a data
// key per value), bypassing the store's write path.
func PutPerValueSealedForTest(ctx context.Context, s *Store, key string, val []byte) error {
	kr, err := s.keyring()
	if err != nil {
		return err
	}
	sv, err := kr.Seal(val, valueAAD(key))
	if err != nil {
		return err
	}
	v, err := encodeSealed(sv)
	if err != nil {
		return err
	}
	_, err = s.cli.Put(ctx, key, v)
	return err
}
