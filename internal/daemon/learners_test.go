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
