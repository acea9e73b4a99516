package main

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"slices"
	"sync"
)

// idSet is a concurrency-safe set of secret IDs.
type idSet struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

func newIDSet() *idSet { return &idSet{ids: map[string]struct{}{}} }

func (s *idSet) add(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ids[id] = struct{}{}
}

func (s *idSet) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ids, id)
}

func (s *idSet) snapshot() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.ids))
}

// cleanupResult reports the removal of leftovers.
type cleanupResult struct {
	Found      int    `json:"found"`
	Removed    int    `json:"removed"`
	Failed     int    `json:"failed"`
	FirstError string `json:"first_error,omitempty"`
}

// cleanup removes every secret of this run that still exists. It removes
// the IDs recorded on create and also whatever the server lists under the
// run's label, which catches secrets whose create response never arrived
// (timeout, interrupt). It is best effort: failures are counted, not fatal.
func (b *bench) cleanup(ctx context.Context) cleanupResult {
	ids := b.created.snapshot()
	var res cleanupResult
	if body, err := b.client.listSecrets(ctx, b.label); err != nil {
		res.FirstError = "listing leftovers: " + err.Error()
	} else if list, err := decodeSecrets(body); err == nil {
		for _, s := range list {
			ids = append(ids, s.ID)
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	res.Found = len(ids)
	if len(ids) == 0 {
		return res
	}
	bt := runBatch(ctx, cleanupConcurrency, len(ids), func(ctx context.Context, i int) error {
		err := b.client.removeSecret(ctx, ids[i])
		if err == nil || isNotFound(err) {
			b.created.remove(ids[i])
			return nil
		}
		return err
	})
	for _, s := range bt.samples {
		switch {
		case s.ran && s.err == nil:
			res.Removed++
		case s.ran && res.FirstError == "":
			res.FirstError = s.err.Error()
			fallthrough
		default:
			res.Failed++
		}
	}
	return res
}

// isNotFound reports a 404, which during cleanup means the secret is
// already gone and so counts as removed.
func isNotFound(err error) bool {
	var se *statusError
	return errors.As(err, &se) && se.Status == http.StatusNotFound
}
