package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Failover mode (--failover-pid): writers create secrets through every
// socket at a steady pace; after a warm-up the process --failover-pid (a
// cluster's leader) is killed with SIGKILL, and the run measures how long
// the cluster took to acknowledge writes again. The sockets should be the
// surviving managers': the killed one's can only fail.

// failoverWriters is how many paced writers each socket gets, so that one
// request stuck on the dead leader does not hide the others' progress.
const failoverWriters = 4

// failoverPace is the pause between one writer's requests: enough load to
// see the gap to within tens of milliseconds, little enough not to measure
// an overloaded server instead of an election.
const failoverPace = 20 * time.Millisecond

// failoverReq bounds one request: one that outlives it counts as failed
// (it may still have been applied; the cleanup finds it by label).
const failoverReq = 5 * time.Second

// failoverAcks is how many writes each socket must acknowledge after the
// kill before the run ends.
const failoverAcks = 10

type write struct {
	socket     int
	start, end time.Time
	err        error
}

// failoverResult is the report of a failover run; durations in ms.
type failoverResult struct {
	KilledPID int `json:"killed_pid"`
	// FirstAckMs: kill → first acknowledged write sent after the kill.
	FirstAckMs float64 `json:"first_ack_ms"`
	// AllAckMs: kill → every socket has acknowledged a write sent after it.
	AllAckMs float64 `json:"all_sockets_ack_ms"`
	// MaxGapMs: the longest time without any acknowledgement, around the kill.
	MaxGapMs   float64        `json:"max_gap_ms"`
	OK         int            `json:"ok"`
	Errors     map[string]int `json:"errors,omitempty"`
	FirstError string         `json:"first_error,omitempty"`
	TimedOut   bool           `json:"timed_out"`
}

// failover runs the failover measurement. kill is called once, after the
// warm-up (syscall.Kill in production; tests pass their own).
func (b *bench) failover(ctx context.Context, kill func() error) (*failoverResult, error) {
	cfg := b.cfg
	var mu sync.Mutex
	var writes []write
	var killedAt time.Time
	acked := make([]int, len(b.clients)) // acknowledgements sent after the kill
	done := make(chan struct{})
	var once sync.Once
	runCtx, cancel := context.WithTimeout(ctx, cfg.FailoverWarmup+cfg.FailoverLimit)
	defer cancel()

	record := func(w write) {
		mu.Lock()
		defer mu.Unlock()
		writes = append(writes, w)
		if w.err == nil && !killedAt.IsZero() && w.start.After(killedAt) {
			acked[w.socket]++
			if !slices.ContainsFunc(acked, func(n int) bool { return n < failoverAcks }) {
				once.Do(func() { close(done) })
			}
		}
	}
	var wg sync.WaitGroup
	for s := range b.clients {
		for range failoverWriters {
			wg.Go(func() {
				for runCtx.Err() == nil {
					select {
					case <-done:
						return
					default:
					}
					rctx, rcancel := context.WithTimeout(runCtx, failoverReq)
					w := write{socket: s, start: time.Now()}
					_, w.err = b.newSecret(rctx, b.clients[s], "failover")
					w.end = time.Now()
					rcancel()
					if runCtx.Err() != nil {
						return // cut short by the run's end, not the cluster
					}
					record(w)
					select {
					case <-runCtx.Done():
					case <-done:
					case <-time.After(failoverPace):
					}
				}
			})
		}
	}
	select {
	case <-runCtx.Done():
	case <-time.After(cfg.FailoverWarmup):
		mu.Lock()
		killedAt = time.Now()
		mu.Unlock()
		if err := kill(); err != nil {
			cancel()
			wg.Wait()
			return nil, fmt.Errorf("killing pid %d: %w", cfg.FailoverPID, err)
		}
		b.logf("killed pid %d", cfg.FailoverPID)
	}
	select {
	case <-runCtx.Done():
	case <-done:
	}
	timedOut := runCtx.Err() != nil
	cancel()
	wg.Wait()
	if killedAt.IsZero() {
		return nil, ctx.Err()
	}
	return summarizeFailover(writes, killedAt, len(b.clients), cfg.FailoverPID, timedOut), nil
}

func summarizeFailover(writes []write, killedAt time.Time, sockets, pid int, timedOut bool) *failoverResult {
	r := &failoverResult{KilledPID: pid, Errors: map[string]int{}, TimedOut: timedOut}
	firstPer := make([]time.Time, sockets)
	var ackTimes []time.Time
	for _, w := range writes {
		if w.err != nil {
			r.Errors[errorKind(w.err)]++
			if r.FirstError == "" {
				r.FirstError = w.err.Error()
			}
			continue
		}
		r.OK++
		ackTimes = append(ackTimes, w.end)
		if w.start.After(killedAt) && (firstPer[w.socket].IsZero() || w.end.Before(firstPer[w.socket])) {
			firstPer[w.socket] = w.end
		}
	}
	var first, all time.Time
	for _, t := range firstPer {
		if t.IsZero() {
			all = time.Time{}
			break
		}
		if first.IsZero() || t.Before(first) {
			first = t
		}
		if t.After(all) {
			all = t
		}
	}
	if !first.IsZero() {
		r.FirstAckMs = ms(first.Sub(killedAt))
	}
	if !all.IsZero() && !slices.Contains(firstPer, time.Time{}) {
		r.AllAckMs = ms(all.Sub(killedAt))
	}
	slices.SortFunc(ackTimes, func(a, b time.Time) int { return a.Compare(b) })
	// Gaps between consecutive acknowledgements, and from the kill to the
	// first one after it (the kill itself is the start of the outage).
	prev := time.Time{}
	for _, t := range ackTimes {
		if !prev.IsZero() {
			r.MaxGapMs = max(r.MaxGapMs, ms(t.Sub(prev)))
		}
		prev = t
	}
	if len(r.Errors) == 0 {
		r.Errors = nil
	}
	return r
}

func writeFailoverReport(w io.Writer, r *failoverResult) {
	fmt.Fprintf(w, "failover: killed pid %d\n", r.KilledPID)
	if r.TimedOut {
		fmt.Fprintf(w, "  NOT every socket acknowledged %d writes within the limit\n", failoverAcks)
	}
	fmt.Fprintf(w, "  kill → first acknowledged write sent after it: %.0f ms\n", r.FirstAckMs)
	fmt.Fprintf(w, "  kill → every socket acknowledging again:      %.0f ms\n", r.AllAckMs)
	fmt.Fprintf(w, "  longest time without an acknowledgement:      %.0f ms\n", r.MaxGapMs)
	fmt.Fprintf(w, "  writes: %d ok", r.OK)
	for k, n := range r.Errors {
		fmt.Fprintf(w, ", %s × %d", k, n)
	}
	fmt.Fprintln(w)
	if r.FirstError != "" {
		fmt.Fprintf(w, "  first error: %s\n", r.FirstError)
	}
}

// killPID is the production kill.
func killPID(pid int) func() error {
	return func() error { return syscall.Kill(pid, syscall.SIGKILL) }
}
