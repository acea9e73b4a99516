package services

import (
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/moby/moby/api/types/swarm"
)

// service rm racing service update --secret-add leaves a marker for a
// service that no longer exists: the secret can then never be removed.
func TestRemoveRacingUpdateLeavesNoMarker(t *testing.T) {
	m, sec, ctx := newManagers(t)
	leaks := 0
	for i := 0; i < 60; i++ {
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
		cur, _ := m.Get(ctx, svcID)
		next := spec("web"+name, &swarm.SecretReference{SecretID: id1, SecretName: name + "1"}, &swarm.SecretReference{SecretID: id2, SecretName: name + "2"})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); _ = m.Update(ctx, svcID, next, UpdateOptions{Version: cur.Version.Index}) }()
		go func() { defer wg.Done(); _ = m.Remove(ctx, svcID) }()
		wg.Wait()
		if _, err := m.Get(ctx, svcID); err == nil {
			_ = m.Remove(ctx, svcID)
		}
		if err := sec.Remove(ctx, id2); err != nil {
			leaks++
			t.Logf("iteration %d: service gone, yet: %v", i, err)
		}
	}
	if leaks > 0 {
		t.Fatalf("%d leaked in-use markers", leaks)
	}
}
