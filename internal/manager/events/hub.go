package events

import (
	"sync"
	"time"

	"github.com/moby/moby/api/types/events"
)

// Defaults of Config.
const (
	// DefaultHistory is how many events the history keeps. hush's own
	// events are rare next to the engine's (an object write each, no task
	// or container churn), so 1,000 reach back hours on a busy cluster, and
	// at a few hundred bytes each cost under a megabyte. The bound is a
	// count, not an age, because it is memory that must be bounded, and a
	// burst (a stack deploy) can write many events in one second.
	DefaultHistory = 1000
	// DefaultBuffer is how many events a subscriber may fall behind by
	// before it is dropped.
	DefaultBuffer = 256
)

// Subscription receives the events its filter includes, in order, on C.
// C is closed when the subscription is closed or dropped.
type Subscription struct {
	C  <-chan events.Message
	ch chan events.Message
	f  Filter
	h  *hub
	// dropped and closed are guarded by h.mu.
	dropped bool
	closed  bool
}

// Close ends the subscription; it is safe to call more than once.
func (s *Subscription) Close() {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	s.h.removeLocked(s)
}

// Dropped reports whether the subscription was ended because its reader
// fell a full buffer behind.
func (s *Subscription) Dropped() bool {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	return s.dropped
}

// hub is the history ring and the subscriber fan-out.
type hub struct {
	mu sync.Mutex
	// ring holds the last len(ring) events; next is where the next one
	// goes, n how many are held.
	ring    []events.Message
	next, n int
	subs    map[*Subscription]struct{}
	buffer  int
	// onDrop is told of a dropped subscriber (for the log).
	onDrop func()
}

func newHub(history, buffer int) *hub {
	if history <= 0 {
		history = DefaultHistory
	}
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	return &hub{ring: make([]events.Message, history), subs: map[*Subscription]struct{}{}, buffer: buffer}
}

// publish records m and hands it to every subscriber that includes it. A
// subscriber whose buffer is full is dropped: waiting for it would stall
// the store watch and every other subscriber, and queueing for it would
// grow without bound.
func (h *hub) publish(m events.Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.next] = m
	h.next = (h.next + 1) % len(h.ring)
	if h.n < len(h.ring) {
		h.n++
	}
	for s := range h.subs {
		if !s.f.Include(m) {
			continue
		}
		select {
		case s.ch <- m:
		default:
			s.dropped = true
			h.removeLocked(s)
			if h.onDrop != nil {
				h.onDrop()
			}
		}
	}
}

func (h *hub) removeLocked(s *Subscription) {
	if s.closed {
		return
	}
	s.closed = true
	delete(h.subs, s)
	close(s.ch)
}

// subscribe returns the recorded events f includes whose time lies in
// [since, until] (a zero bound is open), oldest first, when history is
// true; and, when live is true, a subscription to every later event. Both
// are taken under one lock, so no event is missed or repeated between them.
func (h *hub) subscribe(f Filter, since, until time.Time, history, live bool) ([]events.Message, *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var past []events.Message
	if history {
		var lo, hi int64
		if !since.IsZero() {
			lo = since.UnixNano()
		}
		if !until.IsZero() {
			hi = until.UnixNano()
		}
		// The whole ring is scanned (it is small) rather than stopping at
		// the first event older than since: times come from the wall
		// clock, which may step back.
		for i := 0; i < h.n; i++ {
			m := h.ring[(h.next-h.n+i+len(h.ring))%len(h.ring)]
			if m.TimeNano < lo || (hi != 0 && m.TimeNano > hi) || !f.Include(m) {
				continue
			}
			past = append(past, m)
		}
	}
	if !live {
		return past, nil
	}
	ch := make(chan events.Message, h.buffer)
	s := &Subscription{C: ch, ch: ch, f: f, h: h}
	h.subs[s] = struct{}{}
	return past, s
}

// closeAll ends every subscription.
func (h *hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		h.removeLocked(s)
	}
}

// subscribers counts the live subscriptions (for tests).
func (h *hub) subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}
