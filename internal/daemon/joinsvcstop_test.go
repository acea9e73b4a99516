package daemon

import (
	"context"
	"sync"
	"testing"
)

// A manager demoting itself stops its join/CA service before it replaces
// its store, and the stop ends the requests that service is still
// serving: a node sync handler held in flight (here by the test hook,
// until its request is cancelled; in the flake, by a store read on a
// member its cluster had just removed) has returned before the node is a
// worker. Its handlers read d.store without d.mu, so one outliving the
// stop raced with the store's replacement (a -race failure of
// TestEtcdRefusesCertificateAfterRepromotion: openStore's write of
// d.store against removedAt's read in serveNodeSync).
func TestDemotionWaitsForJoinServiceHandlers(t *testing.T) {
	m, w, returned := promotedWithHeldSync(t, func(*Daemon) {})
	demoted(t, m, w, "the demoted node is a worker")
	if !closed(returned) {
		t.Fatal("the node became a worker (its store replaced) while a handler of its join/CA service was still running")
	}
}

// promotedWithHeldSync joins a worker w to a manager m, promotes it, and
// holds the first node sync w's join/CA service serves (m's sync loop asks
// the other manager first) until its request is cancelled; then after
// runs and the returned channel closes.
func promotedWithHeldSync(t *testing.T, after func(w *Daemon)) (m, w *Daemon, returned <-chan struct{}) {
	t.Helper()
	m, w, _ = managerAndWorker(t)
	promoted(t, m, w, "the promoted node votes")
	waitUntil(t, "the promoted node serves its join service", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.joinSvc != nil
	})
	entered, done := make(chan struct{}), make(chan struct{})
	var first sync.Once
	w.mu.Lock()
	w.nodeSyncHook = func(rctx context.Context) {
		held := false
		first.Do(func() { held = true })
		if !held {
			return
		}
		close(entered)
		<-rctx.Done()
		after(w)
		close(done)
	}
	w.mu.Unlock()
	waitUntil(t, "a node sync is held in w's join service", func() bool { return closed(entered) })
	return m, w, done
}

// closed reports whether ch is closed, without waiting.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// A manager's `swarm leave --force` stops its join/CA service, and waits
// for every handler of it, with d.mu released and before its store is
// closed and replaced: the handlers read d.store without d.mu (and take
// d.mu). A node sync held in the leaving node's service until its request
// is cancelled then takes d.mu: it must find the node still a member (the
// leave waiting for it), never one whose leave has already swapped the
// store under it. Before the fix the leave closed the service under d.mu,
// gave up on the handler after 5 s and went on: the handler saw the node
// gone.
func TestLeaveWaitsForJoinServiceHandlers(t *testing.T) {
	ctx := context.Background()
	var sawLeft bool
	_, w, returned := promotedWithHeldSync(t, func(w *Daemon) {
		w.mu.Lock()
		sawLeft = w.member == nil
		w.mu.Unlock()
	})
	if err := w.Leave(ctx, true); err != nil {
		t.Fatalf("leave --force: %v", err)
	}
	if !closed(returned) {
		t.Fatal("the leave returned while a handler of its join/CA service was still running")
	}
	if sawLeft {
		t.Fatal("a handler of the leaving node's join/CA service ran on after the leave had replaced its store")
	}
}
