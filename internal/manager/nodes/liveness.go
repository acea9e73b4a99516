package nodes

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// Swarm's texts and multipliers for liveness.
const (
	// MsgHeartbeatFailure is a Down node's status message, as Swarm's.
	MsgHeartbeatFailure = "heartbeat failure"
	// downAfterBeats: a node no manager vouches for is Down this many
	// heartbeat periods after it was last present. A manager withdraws its
	// claim two periods after the node's last heartbeat (and a manager's
	// own claim lives out a lease of three periods), so a silent node is
	// Down about three periods after its last heartbeat, as in Swarm.
	downAfterBeats = 1
	// leaderGraceBeats: a new leader (which has not seen any node yet)
	// marks nothing Down before this many periods, twice the normal grace
	// as Swarm gives nodes after a leader change.
	leaderGraceBeats = 6
)

// Tracker decides nodes' liveness from successive reads of their
// presence. It holds only what the current leader has seen: a new leader
// starts a new one, with the longer grace.
type Tracker struct {
	graceFrom time.Time
	lastSeen  map[string]time.Time
}

// NewTracker starts tracking at now (the leadership's start).
func NewTracker(now time.Time) *Tracker {
	return &Tracker{graceFrom: now, lastSeen: map[string]time.Time{}}
}

// Interrupted gives every node the leader's grace again from now: the
// presence could not be read (no quorum), so silence since says nothing.
func (t *Tracker) Interrupted(now time.Time) { t.graceFrom = now }

// Decide returns the state each of ids has at now, given which are
// present: Ready when present; Down when absent past the grace; and, for
// a node absent but within the grace, its recorded state (ok false: no
// decision yet).
func (t *Tracker) Decide(now time.Time, period time.Duration, id string, present bool) (swarm.NodeState, bool) {
	if present {
		t.lastSeen[id] = now
		return swarm.NodeStateReady, true
	}
	limit := t.graceFrom.Add(leaderGraceBeats * period)
	if last, ok := t.lastSeen[id]; ok {
		limit = later(limit, last.Add(downAfterBeats*period))
	}
	if now.After(limit) {
		return swarm.NodeStateDown, true
	}
	return "", false
}

// Forget drops nodes no longer recorded.
func (t *Tracker) Forget(keep map[string]bool) {
	for id := range t.lastSeen {
		if !keep[id] {
			delete(t.lastSeen, id)
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// LivenessConfig wires RunLiveness.
type LivenessConfig struct {
	Store *store.Store
	// Leadership is the orchestrator's: only its holder records status,
	// and each write carries its guard.
	Leadership *store.Leadership
	// Period is the cluster's heartbeat period, read each pass.
	Period func() time.Duration
	// Wake runs a pass at once when it receives (a presence claim changed:
	// a node that just opened its session is Ready without waiting for the
	// next timed pass). nil: timed passes only.
	Wake <-chan struct{}
	// Every is the time between timed passes for a period (nil:
	// passEvery); tests stretch it to see the passes Wake runs.
	Every  func(period time.Duration) time.Duration
	Now    func() time.Time
	Logger *slog.Logger
}

// passEvery: timed passes come four times a period, at least every
// second, at most every 100 ms.
func passEvery(p time.Duration) time.Duration {
	return min(max(p/4, 100*time.Millisecond), time.Second)
}

// minWokenGap bounds how often Wake can run a pass: a burst of claims (a
// restarted manager's workers coming back together) makes a few passes,
// not one per claim.
const minWokenGap = 50 * time.Millisecond

// RunLiveness records every node's status (Ready / Down with Swarm's
// "heartbeat failure") from the managers' presence claims until ctx ends
// or the leadership is lost. It runs on the orchestrator's leader only.
func RunLiveness(ctx context.Context, c LivenessConfig) {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Every == nil {
		c.Every = passEvery
	}
	tr := NewTracker(c.Now())
	for {
		p := c.Period()
		if err := livenessPass(ctx, c, tr, p); err != nil {
			if errors.Is(err, store.ErrGuard) || ctx.Err() != nil {
				return
			}
			c.Logger.Warn("liveness pass failed", "err", err)
			tr.Interrupted(c.Now())
		}
		select {
		case <-ctx.Done():
			return
		case <-c.Leadership.Done():
			return
		case <-time.After(c.Every(p)):
		case <-c.Wake:
			select {
			case <-ctx.Done():
				return
			case <-time.After(minWokenGap):
			}
		}
	}
}

func livenessPass(ctx context.Context, c LivenessConfig, tr *Tracker, period time.Duration) error {
	pctx, cancel := context.WithTimeout(ctx, max(period, 5*time.Second))
	defer cancel()
	present, err := c.Store.Present(pctx)
	if err != nil {
		return err
	}
	recs, err := List(pctx, c.Store)
	if err != nil {
		return err
	}
	now := c.Now()
	keep := map[string]bool{}
	var errs []error
	for _, n := range recs {
		keep[n.ID] = true
		state, ok := tr.Decide(now, period, n.ID, len(present[n.ID]) > 0)
		if !ok {
			continue
		}
		s := Status{State: state}
		if state == swarm.NodeStateDown {
			s.Message = MsgHeartbeatFailure
		}
		if n.Status != nil && *n.Status == s {
			continue
		}
		err := SetStatus(pctx, c.Store, c.Leadership, n.ID, s)
		if errors.Is(err, store.ErrDeposed) {
			// No other write of this pass can succeed: send none.
			return err
		}
		if err != nil && !errors.Is(err, store.ErrStale) && !errors.Is(err, store.ErrNotFound) {
			// A stale or removed record is decided again next pass.
			errs = append(errs, err)
		} else if err == nil {
			c.Logger.Info("node status", "node", n.ID, "state", state)
		}
	}
	tr.Forget(keep)
	return errors.Join(errs...)
}
