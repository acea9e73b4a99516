package daemon

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/store"
)

// fakeLearners is a membership with learners that promote or not.
type fakeLearners struct {
	mu       sync.Mutex
	list     []store.Member
	promoted map[string]int
	removed  map[string]int
	refuse   bool // Promote fails: the learner never catches up
}

func (f *fakeLearners) List(context.Context) ([]store.Member, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]store.Member(nil), f.list...), nil
}

func (f *fakeLearners) Promote(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.promoted[id]++
	if f.refuse {
		return errors.New("learner not ready")
	}
	for i := range f.list {
		if f.list[i].ID == id {
			f.list[i].Learner = false
		}
	}
	return nil
}

func (f *fakeLearners) Remove(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed[id]++
	out := f.list[:0]
	for _, m := range f.list {
		if m.ID != id {
			out = append(out, m)
		}
	}
	f.list = out
	return nil
}

func (f *fakeLearners) counts(id string) (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.promoted[id], f.removed[id]
}

// TestSweepLearners: a learner whose admitting manager went away is
// promoted by the orchestrator's leader, or removed if it never catches
// up (a stranded learner refuses every later join); voters are left
// alone, and a learner is handed over once, not at every sweep.
func TestSweepLearners(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		f := &fakeLearners{
			list:     []store.Member{{ID: "a1", Name: "m1"}, {ID: "b2", Name: "m2", Learner: true}},
			promoted: map[string]int{}, removed: map[string]int{}, refuse: refuse,
		}
		ctx, cancel := context.WithCancel(context.Background())
		d := &Daemon{log: slog.New(slog.DiscardHandler), bg: ctx}
		done := make(chan struct{})
		go func() { d.sweepLearners(ctx, f, 5*time.Millisecond); close(done) }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			p, r := f.counts("b2")
			if (!refuse && p > 0) || (refuse && r > 0) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("refuse=%v: learner neither promoted nor removed (promote %d, remove %d)", refuse, p, r)
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond) // several more sweeps
		cancel()
		<-done
		d.bgDone.Wait()
		p, r := f.counts("b2")
		if p != 1 || (refuse && r != 1) || (!refuse && r != 0) {
			t.Errorf("refuse=%v: promote %d, remove %d", refuse, p, r)
		}
		if p, r := f.counts("a1"); p != 0 || r != 0 {
			t.Errorf("a voter was touched: promote %d, remove %d", p, r)
		}
	}
}

// blockingLearners is a membership whose learner never catches up: each
// Promote waits for its context, and the calls after deposed is closed
// are counted.
type blockingLearners struct {
	fakeLearners
	deposed     chan struct{}
	promoting   chan struct{} // closed at the first Promote
	once        sync.Once
	running     sync.WaitGroup
	afterDepose int
}

func (f *blockingLearners) Promote(ctx context.Context, id string) error {
	f.running.Add(1)
	defer f.running.Done()
	f.once.Do(func() { close(f.promoting) })
	f.note()
	<-ctx.Done()
	return ctx.Err()
}

func (f *blockingLearners) Remove(ctx context.Context, id string) error {
	f.note()
	return f.fakeLearners.Remove(ctx, id)
}

func (f *blockingLearners) note() {
	select {
	case <-f.deposed:
		f.mu.Lock()
		f.afterDepose++
		f.mu.Unlock()
	default:
	}
}

// A learner the orchestrator's leader took over from the sweep is
// promoted only while that leadership lasts: once deposed, the former
// leader's promotion ends at once (the new leader's sweep takes the
// learner over) and it removes nothing, and the sweep returns only when
// its promotions have ended, so the leader loop's wait covers them.
func TestDeposedLeaderStopsPromoting(t *testing.T) {
	f := &blockingLearners{
		fakeLearners: fakeLearners{list: []store.Member{{ID: "a1", Name: "m1"}, {ID: "b2", Name: "m2", Learner: true}},
			promoted: map[string]int{}, removed: map[string]int{}},
		deposed: make(chan struct{}), promoting: make(chan struct{}),
	}
	life, stop := context.WithCancel(context.Background()) // the daemon's
	defer stop()
	d := &Daemon{log: slog.New(slog.DiscardHandler), bg: life}
	lead, depose := context.WithCancel(context.Background())
	swept := make(chan struct{})
	go func() { d.sweepLearners(lead, f, 5*time.Millisecond); close(swept) }()
	select {
	case <-f.promoting:
	case <-time.After(10 * time.Second):
		t.Fatal("the leader never promoted the learner")
	}
	close(f.deposed)
	depose()
	select {
	case <-swept:
	case <-time.After(10 * time.Second):
		t.Fatal("the sweep outlived its leadership")
	}
	ended := make(chan struct{})
	go func() { f.running.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("a deposed leader still promotes the learner")
	}
	stop()
	d.bgDone.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.afterDepose != 0 || f.removed["b2"] != 0 {
		t.Fatalf("after deposition: %d membership calls, %d removals", f.afterDepose, f.removed["b2"])
	}
}
