package dispatchnet

import (
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// maxOpenBuckets bounds the nodes whose session opens are counted; past
// it, the nodes that have not opened one lately are forgotten first.
const maxOpenBuckets = 1 << 16

// openLimiter is a token bucket per node (the certificate's node ID) for
// session opens.
type openLimiter struct {
	burst    int
	every    time.Duration
	maxNodes int

	mu      sync.Mutex
	buckets map[string]openBucket
}

type openBucket struct {
	tokens float64
	at     time.Time
}

// allow takes one open from node's bucket at now, or refuses it with
// an Unavailable error (the node then tries another manager, and backs
// off).
func (l *openLimiter) allow(node string, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buckets == nil {
		l.buckets = map[string]openBucket{}
	}
	b, ok := l.buckets[node]
	if !ok {
		if len(l.buckets) >= l.maxNodes {
			for id, ob := range l.buckets {
				if l.refill(ob, now).tokens >= float64(l.burst) {
					delete(l.buckets, id)
				}
			}
		}
		if len(l.buckets) >= l.maxNodes {
			return errdefs.Unavailable("this manager is bounding the session opens of %d nodes: retry later", len(l.buckets))
		}
		b = openBucket{tokens: float64(l.burst), at: now}
	}
	b = l.refill(b, now)
	if b.tokens < 1 {
		l.buckets[node] = b
		return errdefs.Unavailable("node %s opened more than %d dispatcher sessions at once and one every %s: retry in %s",
			node, l.burst, l.every, time.Duration((1-b.tokens)*float64(l.every)).Round(time.Millisecond))
	}
	b.tokens--
	l.buckets[node] = b
	return nil
}

func (l *openLimiter) refill(b openBucket, now time.Time) openBucket {
	if el := now.Sub(b.at); el > 0 {
		b.tokens = min(b.tokens+float64(el)/float64(l.every), float64(l.burst))
		b.at = now
	}
	return b
}
