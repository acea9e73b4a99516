package store

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// RequestProgress asks etcd to tell the store's watches (those made under
// clientv3.WithRequireLeader, as the mirror's and the events source's) its
// current revision. etcd's revision is global: under a prefix of an external
// etcd that others write to, a watch of hush's keys sees no event for their
// writes, and a wait for the revision of a read made after them would
// otherwise end only at its timeout. Best effort: a lost request is asked
// again by the waiter (see AskProgress).
func (s *Store) RequestProgress(ctx context.Context) {
	if err := s.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
		s.log.Debug("store: watch progress request failed", "err", err)
	}
}

// progressRepeat is how often a waiter still behind asks again.
const progressRepeat = 500 * time.Millisecond

// AskProgress requests watch progress now and returns a ticker on which a
// waiter still behind asks again (a request is lost when the watch is
// being re-established); the caller stops it.
func (s *Store) AskProgress(ctx context.Context) *time.Ticker {
	s.RequestProgress(ctx)
	return time.NewTicker(progressRepeat)
}
