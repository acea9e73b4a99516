package engine

import (
	"context"
	"testing"

	"github.com/moby/moby/client"
)

// TestNetworksSameNameByID: two engine networks of one name (engines before
// API 1.44 allow that; the client sends no duplicate check) and a container
// created, connected and started on the second by its ID lands on that one.
// Without NetworkID in the endpoint the engine looks the network up by its
// now ambiguous name and the start fails with "network ... not found".
func TestNetworksSameNameByID(t *testing.T) {
	t.Parallel()
	e, img := newEngine(t, nil)
	ctx := t.Context()
	name := "hushtest" + runID + "-dup"
	var ids []string
	for range 2 {
		res, err := e.cli.NetworkCreate(ctx, name, client.NetworkCreateOptions{
			Driver: "bridge", Internal: true, Labels: map[string]string{"org.hush.test": runID},
		})
		if err != nil {
			// An engine that refuses duplicates (API >= 1.44) cannot get
			// into this state at all.
			if len(ids) == 1 {
				t.Skipf("the engine refuses duplicate network names: %v", err)
			}
			t.Fatal(err)
		}
		id := res.ID
		t.Cleanup(func() {
			if _, err := e.cli.NetworkRemove(context.Background(), id, client.NetworkRemoveOptions{}); err != nil {
				t.Errorf("cleanup: remove network %s: %v", id, err)
			}
		})
		ids = append(ids, id)
	}
	other := "hushtest" + runID + "-dup2"
	res, err := e.cli.NetworkCreate(ctx, other, client.NetworkCreateOptions{Driver: "bridge", Internal: true, Labels: map[string]string{"org.hush.test": runID}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = e.cli.NetworkRemove(context.Background(), res.ID, client.NetworkRemoveOptions{}) })

	s := taskSpec(img, "dupnet", "sh", "-c", "sleep 30")
	s.Networks = []string{ids[1], res.ID}
	s.NetworkAliases = []string{"dup" + runID}
	id := create(t, e, s)
	start(t, e, id)
	raw, err := e.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, ep := range raw.Container.NetworkSettings.Networks {
		got[ep.NetworkID] = true
	}
	if len(got) != 2 || !got[ids[1]] || !got[res.ID] {
		t.Fatalf("attached to %v, want exactly %s and %s (not the first %s)", got, ids[1], res.ID, ids[0])
	}
}
