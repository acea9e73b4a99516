package daemon

import (
	"context"
	"errors"
	"testing"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
)

// rewriteClusterRaw writes the stored cluster record back unchanged, as
// the store's re-wrap does (it edits the record as raw JSON): a write by
// hush itself that changes nothing a client sees.
func rewriteClusterRaw(t *testing.T, d *Daemon) {
	t.Helper()
	ctx := context.Background()
	tb := d.store.Table(cluster.Table)
	o, err := tb.Get(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Update(ctx, "default", o.ModRev, o.Value); err != nil {
		t.Fatal(err)
	}
}

// rewriteOnce is a failpoint that writes the record back once (a retried
// write passes it again).
func rewriteOnce(t *testing.T, d *Daemon) func() error {
	done := false
	return func() error {
		if !done {
			done = true
			rewriteClusterRaw(t, d)
		}
		return nil
	}
}

// The version a `swarm update` is compared against is the one the API
// shows; hush's own writes to the cluster record (a master-key rotation's
// re-wrap, bookkeeping) must not move it, or a client's inspect-then-update
// fails with "update out of sequence" for a change it cannot see. A client
// whose version predates another client's update still gets that error,
// as in Swarm.
func TestSwarmUpdateVersionIgnoresInternalWrites(t *testing.T) {
	ctx := context.Background()
	d := specStart(t, t.TempDir(), false)
	defer d.Close()
	shown := func() uint64 {
		sw, err := d.Inspect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return sw.Version.Index
	}
	update := func(version uint64, n int64) error {
		sw, err := d.Inspect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		spec := sw.Spec
		spec.Orchestration.TaskHistoryRetentionLimit = specPtr(n)
		return d.Update(ctx, version, spec, api.SwarmUpdateFlags{})
	}
	v0 := shown()

	// A master-key rotation re-wraps every record, the cluster's too.
	if _, err := d.RotateMaster(ctx); err != nil {
		t.Fatal(err)
	}
	if v := shown(); v != v0 {
		t.Errorf("a master-key rotation moved the cluster's version from %d to %d", v0, v)
	}
	if err := update(v0, 7); err != nil {
		t.Fatalf("update with the version read before a re-wrap: %v", err)
	}
	v1 := shown()
	if v1 == v0 {
		t.Fatal("a user's update did not move the version")
	}
	// A version from before another user's update is out of sequence.
	if err := update(v0, 8); !errors.Is(err, errdefs.ErrOutOfSequence) {
		t.Fatalf("update with a version from before another update: %v, want out of sequence", err)
	}

	// An internal write between the update's read and its write: the
	// update is applied (read again), not refused.
	d.fail = failpoints{fpSpecPut: rewriteOnce(t, d)}
	if err := update(v1, 9); err != nil {
		t.Fatalf("update racing an internal write: %v", err)
	}
	d.fail = nil
	c, _ := cluster.Get(ctx, d.store)
	if *c.Spec.Orchestration.TaskHistoryRetentionLimit != 9 {
		t.Fatalf("retention %d, want 9", *c.Spec.Orchestration.TaskHistoryRetentionLimit)
	}
	v2 := c.Version

	// Another user's update in the same window: refused.
	d.fail = failpoints{fpSpecPut: func() error {
		d.fail = nil
		o, err := cluster.Get(ctx, d.store)
		if err != nil {
			return err
		}
		o.Spec.Labels = map[string]string{"other": "client"}
		return cluster.Put(ctx, d.store, &o)
	}}
	if err := update(v2, 10); !errors.Is(err, errdefs.ErrOutOfSequence) {
		t.Fatalf("update racing another user's update: %v, want out of sequence", err)
	}
	d.fail = nil

	// The unlock-key path (autolock on, then a key rotation) with an
	// internal write between its read and its write.
	v3 := shown()
	sw, _ := d.Inspect(ctx)
	spec := sw.Spec
	spec.EncryptionConfig.AutoLockManagers = true
	d.fail = failpoints{fpEnablePut: rewriteOnce(t, d)}
	if err := d.Update(ctx, v3, spec, api.SwarmUpdateFlags{}); err != nil {
		t.Fatalf("enabling autolock racing an internal write: %v", err)
	}
	d.fail = nil
	v4 := shown()
	rewriteClusterRaw(t, d)
	d.fail = failpoints{fpRotatePut: rewriteOnce(t, d)}
	if err := d.Update(ctx, v4, spec, api.SwarmUpdateFlags{RotateManagerUnlockKey: true}); err != nil {
		t.Fatalf("rotating the unlock key after internal writes: %v", err)
	}
	d.fail = nil
}
