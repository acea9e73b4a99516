package services

import (
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/moby/moby/api/types/swarm"
)

// service rm racing service update --secret-add leaves a marker for a
// service that no longer exists: the secret can then never be removed.
func TestRemoveRacingUpdateLeavesNoMarker(t *testing.T) {
	m, sec, ctx := newManagers(t)
	// The marker at stake exists only when the update gets in before the
	// removal (it wins a small share of the races): run until it has, a
	// number of times.
	const wantUpdated, maxRounds = 10, 600
	leaks, updated, rounds := 0, 0, 0
	for i := 0; i < maxRounds && updated < wantUpdated; i++ {
		rounds++
		name := "s" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		id1, err := sec.Create(ctx, objects.Spec{Name: name + "1", Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		id2, err := sec.Create(ctx, objects.Spec{Name: name + "2", Data: []byte("y")})
		if err != nil {
			t.Fatal(err)
		}
		svcID, err := m.Create(ctx, spec("web"+name, &swarm.SecretReference{SecretID: id1, SecretName: name + "1"}))
		if err != nil {
			t.Fatal(err)
		}
		cur, err := m.Get(ctx, svcID)
		if err != nil {
			t.Fatal(err)
		}
		next := spec("web"+name, &swarm.SecretReference{SecretID: id1, SecretName: name + "1"}, &swarm.SecretReference{SecretID: id2, SecretName: name + "2"})
		var wg sync.WaitGroup
		var uerr, rerr error
		wg.Add(2)
		go func() { defer wg.Done(); uerr = m.Update(ctx, svcID, next, UpdateOptions{Version: cur.Version.Index}) }()
		go func() { defer wg.Done(); rerr = m.Remove(ctx, svcID) }()
		wg.Wait()
		// Either may lose the race, but only by finding the service gone
		// or changed.
		if uerr != nil && !errdefs.Is(uerr, errdefs.ErrNotFound) && uerr.Error() != "update out of sequence" {
			t.Fatalf("iteration %d: update racing rm: %v", i, uerr)
		}
		if rerr != nil {
			t.Fatalf("iteration %d: rm racing update: %v", i, rerr)
		}
		if uerr == nil {
			updated++
		}
		if _, err := m.Get(ctx, svcID); !errdefs.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("iteration %d: service still there after rm: %v", i, err)
		}
		if err := sec.Remove(ctx, id2); err != nil {
			leaks++
			t.Logf("iteration %d: service gone, yet: %v", i, err)
		}
	}
	if leaks > 0 {
		t.Fatalf("%d leaked in-use markers", leaks)
	}
	if updated == 0 {
		t.Fatalf("in %d races the update never got in before the removal: nothing was tested", rounds)
	}
	t.Logf("update got in first in %d of %d races", updated, rounds)
}
