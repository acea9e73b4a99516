package store

import "context"

// ExpireForTest revokes the leadership's lease as its expiry would (the
// leader stalled past its TTL), without telling the leader.
func (l *Leadership) ExpireForTest(ctx context.Context) error {
	_, err := l.s.cli.Revoke(ctx, l.session.Lease())
	return err
}
