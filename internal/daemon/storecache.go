package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// storeCache is a copy of something read from the store that a check on
// every dispatcher call needs (the removed nodes, the held manager
// certificates): read at most once per its period, one read at a time, so
// that no caller can make a manager read the store per request. A failed
// read keeps the last copy and is retried after the same period; until a
// read has succeeded the copy is not loaded, and the caller refuses
// rather than serve every certificate (fails closed).
type storeCache[T any] struct {
	mu     sync.Mutex
	read   time.Time
	loaded bool
	v      T
}

// get returns the copy and whether a read has ever succeeded, reading it
// first when the last read is older than every. what names the copy in
// the log.
func (c *storeCache[T]) get(every time.Duration, log *slog.Logger, what string, read func(context.Context) (T, error)) (T, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.read) > every {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v, err := read(ctx)
		cancel()
		switch {
		case err != nil && !c.loaded:
			log.Warn("reading "+what+"; refusing other nodes' certificates until it succeeds", "err", err)
		case err != nil:
			log.Warn("reading "+what+"; using the last copy", "err", err)
		default:
			c.v, c.loaded = v, true
		}
		c.read = time.Now()
	}
	return c.v, c.loaded
}
