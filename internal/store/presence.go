package store

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// presenceRoot holds the presence claims, outside every table:
// presenceRoot + <node ID> + "/" + <owner>.
const presenceRoot = root + "presence/"

// Presence is one manager vouching that nodes are alive: itself, and the
// nodes whose dispatcher sessions it hears heartbeats from. Each claim is
// a key under one etcd lease of the manager's, so a claim lives only
// while its manager renews the lease, which takes a quorum: a manager
// that crashed, stalled or was cut off into a minority loses every claim
// it made when the lease expires (TTL later), and a node it alone vouched
// for stops being present unless another manager claims it.
//
// Presence is no replication scheme of hush's own: it is etcd's leases
// and keys, read by whoever decides liveness (see Store.Present).
type Presence struct {
	s     *Store
	owner string
	ttl   int64 // seconds
	log   *slog.Logger

	// mu serialises the claims' writes with the lease's changes, so that
	// a re-granted lease re-puts exactly the claims still wanted and a
	// release never races a re-put of the same claim.
	mu     sync.Mutex
	lease  clientv3.LeaseID // 0 while none is held
	claims map[string]bool
	// crashed stops renewing without revoking (tests: a crash).
	crashed atomic.Bool
	// renewedAt is when the quorum last granted or renewed the lease held
	// (Unix nanoseconds; 0 while none is held). Apart from mu, so that
	// Fresh never waits for a claim's write.
	renewedAt atomic.Int64
	// granted is the lease's TTL as etcd granted it (seconds): etcd raises
	// a short TTL to its minimum, and renewals come every third of it.
	granted atomic.Int64
}

// presenceOpTimeout bounds each write of a claim.
const presenceOpTimeout = 5 * time.Second

// NewPresence returns owner's presence (owner: the manager's node ID);
// its claims exist only while Run holds a lease of ttl (rounded up to
// whole seconds, at least 1; etcd may raise it to its minimum).
func (s *Store) NewPresence(owner string, ttl time.Duration, log *slog.Logger) (*Presence, error) {
	if err := checkPresenceID(owner); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	secs := max(int64((ttl+time.Second-1)/time.Second), 1)
	return &Presence{s: s, owner: owner, ttl: secs, log: log, claims: map[string]bool{}}, nil
}

// Run holds the lease until ctx ends: it grants one, puts every claim
// under it, and renews it; when the lease is lost (expired while the
// member had no quorum, or revoked) it grants a new one and puts the
// claims again. On return the lease is revoked, so the claims vanish at
// once rather than a TTL later.
func (p *Presence) Run(ctx context.Context) {
	for ctx.Err() == nil && !p.crashed.Load() {
		lease, err := p.grant(ctx)
		if err != nil {
			if ctx.Err() == nil {
				p.log.Debug("presence: lease", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		kctx, cancel := context.WithCancel(ctx)
		ka, err := p.s.cli.KeepAlive(kctx, lease)
		if err == nil {
			// The channel closes when the lease is gone (no renewal within
			// its TTL, or revoked) or ctx ends.
			for r := range ka {
				if p.crashed.Load() {
					break
				}
				p.granted.Store(r.TTL)
				// Only Run changes the lease: it is still this one.
				p.renewedAt.Store(time.Now().UnixNano())
			}
		}
		cancel()
		p.mu.Lock()
		if p.lease == lease {
			p.lease = 0
			p.renewedAt.Store(0)
		}
		p.mu.Unlock()
		if ctx.Err() != nil || p.crashed.Load() {
			if !p.crashed.Load() {
				rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				_, _ = p.s.cli.Revoke(rctx, lease)
				rcancel()
			}
			return
		}
		p.log.Info("presence: lease lost, granting another", "owner", p.owner)
	}
}

// grant takes a new lease and puts the wanted claims under it.
func (p *Presence) grant(ctx context.Context) (clientv3.LeaseID, error) {
	if p.s.awaitLeader != nil && !p.s.awaitLeader(ctx) {
		return 0, fmt.Errorf("store: presence lease: %w: %w", ErrNoLeader, errNoLeaderHere)
	}
	gctx, cancel := context.WithTimeout(ctx, presenceOpTimeout)
	defer cancel()
	resp, err := p.s.cli.Grant(gctx, p.ttl)
	if err != nil {
		return 0, fmt.Errorf("store: presence lease: %w", wrapEtcd(err))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ops := make([]clientv3.Op, 0, len(p.claims))
	for id := range p.claims {
		ops = append(ops, clientv3.OpPut(p.key(id), p.owner, clientv3.WithLease(resp.ID)))
	}
	// etcd bounds a transaction's operations (128 by default).
	for len(ops) > 0 {
		n := min(len(ops), 100)
		if _, err := p.s.cli.Txn(gctx).Then(ops[:n]...).Commit(); err != nil {
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_, _ = p.s.cli.Revoke(rctx, resp.ID)
			rcancel()
			return 0, fmt.Errorf("store: presence claims: %w", wrapEtcd(err))
		}
		ops = ops[n:]
	}
	p.lease = resp.ID
	p.granted.Store(resp.TTL)
	p.renewedAt.Store(time.Now().UnixNano())
	return resp.ID, nil
}

// TTL is the lease's time to live as asked (whole seconds).
func (p *Presence) TTL() time.Duration { return time.Duration(p.ttl) * time.Second }

// Held reports whether a lease is held now (its claims are put).
func (p *Presence) Held() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lease != 0
}

// Fresh reports whether a lease is held and the quorum renewed it within
// the last within, or within two renewals of the lease as granted when
// that is longer (a lease etcd raised to its minimum TTL is renewed less
// often than within may assume). A manager cut off from the quorum keeps its lease
// locally until the TTL passes, but its renewals stop at once: its claims
// are about to lapse for the other managers, so it had better not keep
// vouching for nodes (they should move to a manager that can).
func (p *Presence) Fresh(within time.Duration) bool {
	at := p.renewedAt.Load()
	within = max(within, time.Duration(p.granted.Load())*time.Second*2/3)
	return at != 0 && time.Since(time.Unix(0, at)) <= within
}

func (p *Presence) key(nodeID string) string { return presenceRoot + nodeID + "/" + p.owner }

// SelfClaimKey is the key of the claim a manager makes for itself (its
// presence while it is active), for a write guarded on its absence.
func SelfClaimKey(nodeID string) string { return presenceRoot + nodeID + "/" + nodeID }

// Claim vouches for nodeID. Without a lease (Run not started, or between
// leases) the claim is remembered and put with the next lease; a put that
// fails leaves it unclaimed (Claims no longer lists it).
func (p *Presence) Claim(ctx context.Context, nodeID string) error {
	if err := checkPresenceID(nodeID); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.claims[nodeID] = true
	if p.lease == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, presenceOpTimeout)
	defer cancel()
	if _, err := p.s.cli.Put(cctx, p.key(nodeID), p.owner, clientv3.WithLease(p.lease)); err != nil {
		// Not claimed: forgotten, so that the caller's next Claim tries
		// again (a lease that was lost is Run's to replace).
		delete(p.claims, nodeID)
		return fmt.Errorf("store: presence claim: %w", wrapEtcd(err))
	}
	return nil
}

// Release withdraws this owner's claim on nodeID; another manager's
// claim on the same node stays. Only a key held by this presence's
// current lease is deleted (a key left by an earlier lease dies with it).
func (p *Presence) Release(ctx context.Context, nodeID string) error {
	if err := checkPresenceID(nodeID); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.claims, nodeID)
	if p.lease == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, presenceOpTimeout)
	defer cancel()
	k := p.key(nodeID)
	_, err := p.s.cli.Txn(cctx).If(clientv3.Compare(clientv3.LeaseValue(k), "=", p.lease)).
		Then(clientv3.OpDelete(k)).Commit()
	if err != nil {
		// Still claimed: kept, so that Claims shows it and the caller's
		// next Release tries again.
		p.claims[nodeID] = true
		return fmt.Errorf("store: presence release: %w", wrapEtcd(err))
	}
	return nil
}

// Claims lists the nodes this presence vouches for.
func (p *Presence) Claims() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.claims))
	for id := range p.claims {
		out = append(out, id)
	}
	return out
}

// Present reads (linearizably) which nodes some manager vouches for: node
// ID → the owners of its claims.
func (s *Store) Present(ctx context.Context) (map[string][]string, error) {
	resp, err := s.cli.Get(ctx, presenceRoot, clientv3.WithPrefix())
	if err != nil {
		return nil, wrapEtcd(err)
	}
	out := map[string][]string{}
	for _, kv := range resp.Kvs {
		node, owner, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), presenceRoot), "/")
		if !ok || node == "" || owner == "" {
			continue
		}
		out[node] = append(out[node], owner)
	}
	return out, nil
}

// checkPresenceID refuses IDs that would break the key layout.
func checkPresenceID(id string) error {
	if id == "" || strings.ContainsAny(id, "/\x00") || len(id) > 128 {
		return errdefs.InvalidArgument("presence: node ID %q: must be 1-128 bytes without '/'", id)
	}
	return nil
}

// WatchPresence calls fn after each change of any manager's claims (a
// claim put, released or expired with its lease), so that whoever decides
// liveness can act on a new claim at once instead of at its next timed
// pass. It returns as Watch does: when ctx ends or the watch breaks.
func (s *Store) WatchPresence(ctx context.Context, fn func()) error {
	return s.Watch(ctx, presenceRoot, 0, func(evs []Event, _ int64) {
		if len(evs) > 0 {
			fn()
		}
	})
}
