package store

import (
	"context"
	"fmt"
	"os"
)

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
