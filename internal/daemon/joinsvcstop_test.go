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
	m, w, _ := managerAndWorker(t)
	promoted(t, m, w, "the promoted node votes")
	waitUntil(t, "the promoted node serves its join service", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.joinSvc != nil
	})

	// The first node sync w serves (m's sync loop asks the other manager
	// first) stays in flight until its request is cancelled.
	entered, returned := make(chan struct{}), make(chan struct{})
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
		close(returned)
	}
	w.mu.Unlock()
	waitUntil(t, "a node sync is held in w's join service", func() bool { return closed(entered) })

	demoted(t, m, w, "the demoted node is a worker")
	if !closed(returned) {
		t.Fatal("the node became a worker (its store replaced) while a handler of its join/CA service was still running")
	}
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
