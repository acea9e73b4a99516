package services

import (
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/moby/moby/api/types/swarm"
)

// service rm racing service update --secret-add must leave no marker for
// a service that no longer exists (the secret could then never be
// removed). The update is made to land exactly between the removal's read
// and its delete, so the case at stake is tested on every run, not only
// when the scheduler happens to interleave the two.
func TestRemoveRacingUpdateLeavesNoMarker(t *testing.T) {
	m, sec, ctx := newManagers(t)
	id1, err := sec.Create(ctx, objects.Spec{Name: "r1", Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	id2, err := sec.Create(ctx, objects.Spec{Name: "r2", Data: []byte("y")})
	if err != nil {
		t.Fatal(err)
	}
	svcID, err := m.Create(ctx, spec("webr", &swarm.SecretReference{SecretID: id1, SecretName: "r1"}))
	if err != nil {
		t.Fatal(err)
	}
	cur, err := m.Get(ctx, svcID)
	if err != nil {
		t.Fatal(err)
	}
	next := spec("webr", &swarm.SecretReference{SecretID: id1, SecretName: "r1"}, &swarm.SecretReference{SecretID: id2, SecretName: "r2"})
	var uerr error
	attempts := 0
	m.afterRemoveRead = func(attempt int) {
		attempts++
		if attempt == 0 {
			uerr = m.Update(ctx, svcID, next, UpdateOptions{Version: cur.Version.Index})
		}
	}
	if err := m.Remove(ctx, svcID); err != nil {
		t.Fatalf("rm with an update in its window: %v", err)
	}
	if uerr != nil {
		t.Fatalf("the update in rm's window failed, so nothing was tested: %v", uerr)
	}
	if attempts < 2 {
		t.Fatalf("rm deleted the revision it read before the update (%d attempt): its markers are those of the old spec", attempts)
	}
	if _, err := m.Get(ctx, svcID); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("service still there after rm: %v", err)
	}
	if err := sec.Remove(ctx, id2); err != nil {
		t.Fatalf("service gone, yet its added secret cannot be removed (a leaked in-use marker): %v", err)
	}
	if err := sec.Remove(ctx, id1); err != nil {
		t.Fatalf("service gone, yet its first secret cannot be removed: %v", err)
	}
}

// TestRemoveRacingUpdateConcurrently runs the same pair truly concurrently:
// whichever order the scheduler picks, rm succeeds, the update fails only
// by finding the service gone or changed, and no marker is left behind.
func TestRemoveRacingUpdateConcurrently(t *testing.T) {
	m, sec, ctx := newManagers(t)
	const rounds = 40
	for i := 0; i < rounds; i++ {
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
		if uerr != nil && !errdefs.Is(uerr, errdefs.ErrNotFound) && uerr.Error() != "update out of sequence" {
			t.Fatalf("round %d: update racing rm: %v", i, uerr)
		}
		if rerr != nil {
			t.Fatalf("round %d: rm racing update: %v", i, rerr)
		}
		if _, err := m.Get(ctx, svcID); !errdefs.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("round %d: service still there after rm: %v", i, err)
		}
		for _, id := range []string{id1, id2} {
			if err := sec.Remove(ctx, id); err != nil {
				t.Fatalf("round %d: service gone, yet: %v", i, err)
			}
		}
	}
}
