package daemon

import (
	"context"
	"fmt"
)

// rewrapBeforeForget re-wraps the store under this manager's current key
// (the rotation's new one) while it still holds the old key oldID, inside
// its install's store.Exclusive, just before it forgets the old key. A
// value that a write of this manager committed under the old key since
// the seal phase's re-wrap (a record copying an inner seal it read
// before) is re-wrapped here by the one manager that wrote it, while it
// can still open it; once it forgets the key its store refuses such a
// value (store.ErrRetiredKey). So no such value outlives the last holder
// of the old key, whichever manager installs last and whether or not the
// driver that would have re-wrapped last stopped (DESIGN.md, "Driver
// stopped in the install phase"). Other managers' writes meanwhile are
// theirs to re-wrap in their own install. Cost: one pass over the store
// per manager, during which this manager's writes wait.
func (d *Daemon) rewrapBeforeForget(ctx context.Context, oldID string) error {
	n, err := d.store.Rewrap(ctx, nil)
	if err != nil {
		return fmt.Errorf("master key rotation: re-wrapping before forgetting the old key: %w", err)
	}
	if n > 0 {
		d.log.Info("master key rotation: re-wrapped values written under the old key since the re-wrap", "wrappedKeys", n, "old", oldID)
	}
	return nil
}
