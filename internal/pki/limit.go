package pki

import (
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// IssueLimiter bounds how many certificates one node may be issued: a
// token bucket per node ID (the ID of the certificate the node called
// with, never a request field). A node legitimately asks for one
// certificate per renewal (half its life at the earliest) and one per
// role change, plus retries of answers it lost: a burst covers those,
// and a node asking more often (a loop, a stolen certificate used to
// mint keys) is refused with a FailedPrecondition that says when to
// retry. Safe for concurrent use; the caller supplies the clock.
type IssueLimiter struct {
	// Burst is how many issues a node may have at once; Every is how
	// long it takes to earn one more.
	Burst int
	Every time.Duration
	// MaxNodes bounds the buckets kept; full buckets (idle nodes) are
	// dropped first when it is reached.
	MaxNodes int

	mu      sync.Mutex
	buckets map[string]bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// Defaults of NewIssueLimiter: 10 issues at once, then one a minute, for
// at most 65,536 nodes' buckets.
const (
	DefaultIssueBurst = 10
	DefaultIssueEvery = time.Minute
	defaultMaxNodes   = 1 << 16
)

// NewIssueLimiter makes a limiter with the defaults.
func NewIssueLimiter() *IssueLimiter {
	return &IssueLimiter{Burst: DefaultIssueBurst, Every: DefaultIssueEvery, MaxNodes: defaultMaxNodes}
}

// Allow takes one issue from nodeID's bucket at now, or refuses with the
// time the node must wait.
func (l *IssueLimiter) Allow(nodeID string, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buckets == nil {
		l.buckets = map[string]bucket{}
	}
	b, ok := l.buckets[nodeID]
	if !ok {
		if len(l.buckets) >= l.MaxNodes {
			l.dropFullLocked(now)
		}
		if len(l.buckets) >= l.MaxNodes {
			// Every bucket is in use: more nodes are asking at once than
			// the limiter keeps. Refusing the newcomer keeps memory bounded;
			// the node retries at its next sync.
			return errdefs.FailedPrecondition("node %s: this manager is rate limiting certificate requests of %d nodes; retry in %s", nodeID, len(l.buckets), l.Every)
		}
		b = bucket{tokens: float64(l.Burst), at: now}
	}
	b = l.refill(b, now)
	if b.tokens < 1 {
		l.buckets[nodeID] = b
		wait := time.Duration((1 - b.tokens) * float64(l.Every)).Round(time.Second)
		return errdefs.FailedPrecondition("node %s asked for more certificates than %d at once and one every %s: certificate request rate limited, retry in %s", nodeID, l.Burst, l.Every, wait)
	}
	b.tokens--
	l.buckets[nodeID] = b
	return nil
}

// Refund gives back the issue Allow took for a request that was refused
// before anything was signed (a CSR that does not parse): a node's
// retries of such a request do not use up its renewals. A request refused
// after its certificate was signed must not be refunded: the signature
// (and a manager certificate's stored record) is what the limit bounds.
func (l *IssueLimiter) Refund(nodeID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.buckets[nodeID]; ok {
		b.tokens = min(b.tokens+1, float64(l.Burst))
		l.buckets[nodeID] = b
	}
}

func (l *IssueLimiter) refill(b bucket, now time.Time) bucket {
	if el := now.Sub(b.at); el > 0 && l.Every > 0 {
		b.tokens += float64(el) / float64(l.Every)
		if b.tokens > float64(l.Burst) {
			b.tokens = float64(l.Burst)
		}
		b.at = now
	}
	return b
}

// dropFullLocked forgets the buckets that have refilled: a node that
// asks again starts from a full bucket anyway.
func (l *IssueLimiter) dropFullLocked(now time.Time) {
	for id, b := range l.buckets {
		if l.refill(b, now).tokens >= float64(l.Burst) {
			delete(l.buckets, id)
		}
	}
}
