package standalone

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
)

// Control is what delivering a rotation needs of the engine.
type Control interface {
	// Running reports whether the container is running; an ErrNotFound
	// says it is gone.
	Running(ctx context.Context, containerID string) (bool, error)
	// Kill sends the container's main process a signal, by name.
	Kill(ctx context.Context, containerID, signal string) error
	// Restart restarts the container.
	Restart(ctx context.Context, containerID string) error
}

// FpRecord is the failpoint between a delivery's change of the files (and
// its signal or restart) and the store write that records the versions
// the container now has: a crash there must leave the delivery to be done
// again, never a recorded version the container lacks.
const FpRecord = "standalone-record"

// mode is how a rotation reaches g's container: its io.hush.rotate, or by
// default reload when its files can be swapped and restart otherwise.
func (g *Grant) mode() string {
	switch {
	case g.Rotate != "":
		return g.Rotate
	case g.Tree:
		return model.RotateReload
	}
	return model.RotateRestart
}

// signal is the signal g's mode sends after a swap ("": none).
func (g *Grant) signal() string {
	sig, ok := strings.CutPrefix(g.mode(), "signal:")
	if !ok {
		return ""
	}
	return sig
}

// retryMin is the first wait before a failed delivery is tried again.
const retryMin = 5 * time.Second

// rotations delivers rotations from the first reconcile on: at every
// write to the secrets and configs tables, at every kick (a reconcile, a
// committed grant) and, after a failure, with a growing delay.
func (m *Manager) rotations(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-m.kick:
	}
	delay := retryMin
	// Kept until it fires: each one asked for is a waiter the store keeps
	// until the tables are written, so one per kick or retry would pile
	// up while they are not. Asked before Sync reads, so a write during
	// a Sync is not missed.
	var changed <-chan struct{}
	for {
		if changed == nil && m.changed != nil {
			changed = m.changed()
		}
		var retry <-chan time.Time
		failed, grants := m.sync(ctx)
		if failed > 0 && ctx.Err() == nil {
			retry = time.After(delay)
			delay = min(2*delay, maxRetryDelay)
		} else {
			delay = retryMin
		}
		// Writes to the tables matter only while a container holds a
		// grant (a new grant kicks): otherwise every secret create would
		// cost a pass that lists the grants.
		wake := changed
		if grants == 0 {
			wake = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
			changed = nil
		case <-m.kick:
		case <-retry:
		}
	}
}

// poke wakes the rotation loop without waiting.
func (m *Manager) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Sync brings every container whose grant records an older version than
// the current one of a secret or config onto the current versions, as its
// mode says, and returns how many it could not bring (each is logged; its
// grant keeps recording the version it has).
func (m *Manager) Sync(ctx context.Context) int {
	failed, _ := m.sync(ctx)
	return failed
}

// sync is Sync that also says how many grants there are (-1: unknown).
func (m *Manager) sync(ctx context.Context) (failed, grants int) {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	all, err := m.grants.list(ctx)
	if err != nil {
		m.log.Warn("standalone: listing grants for rotations", "err", err)
		return 1, -1
	}
	current := m.currentVersions(ctx)
	failing := map[string]DeliveryFailure{}
	defer func() { m.setFailures(failing) }()
	for _, g := range all {
		if g.ContainerID == "" || !behind(g, current) {
			continue
		}
		if m.control == nil {
			continue
		}
		if err := m.deliver(ctx, g, current); err != nil {
			failed++
			failing[g.ContainerID] = m.failedAgain(g.ContainerID, err)
			m.log.Warn("standalone: a rotation did not reach a container; it keeps the version it has",
				"container", g.ContainerID, "name", g.Name, "mode", g.mode(), "err", err)
		}
	}
	return failed, len(all)
}

// currentVersions returns the current version of each item, read once
// per object (an item's own version if it cannot be read).
func (m *Manager) currentVersions(ctx context.Context) func(table string, it Item) int {
	cur := map[string]int{} // table/id -> current version
	return func(table string, it Item) int {
		k := table + "/" + it.ID
		if n, ok := cur[k]; ok {
			return n
		}
		objs := m.secrets
		if table == objects.Config.Table {
			objs = m.configs
		}
		n := it.Version
		if o, err := objs.Get(ctx, it.ID); err == nil && o.ID == it.ID && o.DataVersion > 0 {
			n = o.DataVersion
		}
		cur[k] = n
		return n
	}
}

// reprovisionCurrent makes g's tmpfs afresh at the current versions, for
// a grant whose recorded versions can no longer be opened. It records
// nothing: the grant stays behind, so the next Sync (right after the
// reconcile) signals or restarts the container as its mode says and only
// then records the versions, as for any rotation.
func (m *Manager) reprovisionCurrent(ctx context.Context, g *Grant) error {
	files, err := m.files(ctx, g, m.currentVersions(ctx))
	if err != nil {
		return err
	}
	_, err = m.fs.Mount(ctx, g.ID, files, g.Tree)
	wipeFiles(files)
	if err != nil {
		return fmt.Errorf("container secrets tmpfs: %w: %w", errdefs.ErrInternal, err)
	}
	return nil
}

// behind reports whether g records a version other than want's of any item.
func behind(g *Grant, want func(table string, it Item) int) bool {
	for _, it := range g.Secrets {
		if it.Version != want(objects.Secret.Table, it) {
			return true
		}
	}
	for _, it := range g.Configs {
		if it.Version != want(objects.Config.Table, it) {
			return true
		}
	}
	return false
}

// deliver puts the versions want gives into g's files, signals or
// restarts the container as its mode says, and only then records them.
func (m *Manager) deliver(ctx context.Context, g *Grant, want func(table string, it Item) int) error {
	if _, err := m.control.Running(ctx, g.ContainerID); errors.Is(err, errdefs.ErrNotFound) {
		// Removed: its destroy event releases the grant.
		return nil
	} else if err != nil {
		return err
	}
	files, err := m.files(ctx, g, want)
	if err != nil {
		return err
	}
	err = m.replace(ctx, g, files)
	wipeFiles(files)
	if errors.Is(err, errReleased) {
		return nil
	}
	if err != nil {
		return err
	}
	// Asked only now that the files are replaced: a container started
	// meanwhile read (or pinned) the old ones and must be signalled or
	// restarted too; one started from now on reads the new ones.
	running, err := m.control.Running(ctx, g.ContainerID)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("files replaced; inspecting the container: %w", err)
	}
	mode := g.mode()
	if running {
		switch sig := g.signal(); {
		case sig != "":
			if err := m.control.Kill(ctx, g.ContainerID, sig); err != nil {
				return fmt.Errorf("files swapped; signalling %s: %w", sig, err)
			}
		case mode == model.RotateRestart || !g.Tree:
			if err := m.control.Restart(ctx, g.ContainerID); err != nil {
				return fmt.Errorf("files replaced; restarting: %w", err)
			}
		}
	}
	if m.fail != nil {
		if err := m.fail(FpRecord); err != nil {
			return err
		}
	}
	if err := m.record(ctx, g.ID, want); err != nil {
		return fmt.Errorf("recording the delivered versions: %w", err)
	}
	m.log.Info("standalone: rotation reached a container", "container", g.ContainerID, "name", g.Name, "mode", mode, "running", running)
	return nil
}

// errReleased says a delivery's grant was released meanwhile (its
// container removed): there is nothing left to deliver to.
var errReleased = errors.New("grant released")

// replace puts files in g's tmpfs. A tree is swapped in one atomic step.
// Files bound one by one pin their inodes, which can only be rewritten in
// place (a reader could see half a value): the tmpfs is replaced by a new
// one instead, which the container sees once restarted (the old one stays
// with it until then).
func (m *Manager) replace(ctx context.Context, g *Grant, files []secretfs.File) error {
	// Not with a reconcile, which could otherwise re-provision the old
	// versions between the unmount and the mount, nor with a release.
	m.mu.Lock()
	defer m.mu.Unlock()
	// The container may have been removed since Sync listed its grant:
	// a tmpfs mounted now for the released grant would outlive it.
	if _, err := m.get(ctx, g.ID); errors.Is(err, store.ErrNotFound) {
		return errReleased
	} else if err != nil {
		return err
	}
	if g.Tree {
		return m.fs.Swap(ctx, g.ID, files)
	}
	if err := m.fs.Unmount(g.ID); err != nil {
		return err
	}
	_, err := m.fs.Mount(ctx, g.ID, files, false)
	return err
}

// record writes the versions want gives into grant id, on its latest
// revision (a rename may have changed it meanwhile).
func (m *Manager) record(ctx context.Context, id string, want func(table string, it Item) int) error {
	return m.modify(ctx, id, func(g *Grant) bool {
		for i := range g.Secrets {
			g.Secrets[i].Version = want(objects.Secret.Table, g.Secrets[i])
		}
		for i := range g.Configs {
			g.Configs[i].Version = want(objects.Config.Table, g.Configs[i])
		}
		return true
	})
}

// modify applies change to grant id's latest revision and writes it
// (unless change says there is nothing to write), reading it again when
// another write (a rotation's record, a rename, Commit) came first; a
// grant released meanwhile is left alone.
func (m *Manager) modify(ctx context.Context, id string, change func(g *Grant) bool) error {
	for attempt := 0; ; attempt++ {
		g, err := m.get(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if !change(g) {
			return nil
		}
		err = m.grants.update(ctx, g)
		if err == nil || attempt == 2 || !errors.Is(err, store.ErrStale) {
			return err
		}
	}
}

// HeldVersions reports which versions of object id of kind ("secret",
// "config") containers hold, as objects.Holders does for tasks: version →
// holders named by objects.ContainerHolder. A container being created
// holds the version it was prepared with.
func (m *Manager) HeldVersions(ctx context.Context, kind, id string) (map[int][]string, error) {
	all, err := m.grants.list(ctx)
	if err != nil {
		return nil, err
	}
	out := map[int][]string{}
	for _, g := range all {
		items := g.Secrets
		if kind == objects.Config.Name {
			items = g.Configs
		}
		for _, it := range items {
			if it.ID == id {
				out[it.Version] = append(out[it.Version], objects.ContainerHolder(g.ContainerID, g.Name))
				break
			}
		}
	}
	return out, nil
}

// DeliveryFailure is a rotation that keeps failing to reach a container.
type DeliveryFailure struct {
	// Attempts counts the failed deliveries in a row.
	Attempts int
	// Err is the last one's error, cut short: it names the step that
	// failed (swap, signal, restart, record), never a value.
	Err string
}

// maxFailureText bounds the error text kept and answered per container.
const maxFailureText = 256

// DeliveryFailure reports whether the last delivery of a rotation to
// container id failed, and how many in a row did.
func (m *Manager) DeliveryFailure(id string) (DeliveryFailure, bool) {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	f, ok := m.failures[id]
	return f, ok
}

// failedAgain is the failure to record for container id after err.
func (m *Manager) failedAgain(id string, err error) DeliveryFailure {
	m.fmu.Lock()
	prev := m.failures[id]
	m.fmu.Unlock()
	text := err.Error()
	if len(text) > maxFailureText {
		text = strings.ToValidUTF8(text[:maxFailureText], "") + "…"
	}
	return DeliveryFailure{Attempts: prev.Attempts + 1, Err: text}
}

// setFailures replaces the failures with those of the last pass: a
// container that got its delivery, or is gone, has none.
func (m *Manager) setFailures(f map[string]DeliveryFailure) {
	m.fmu.Lock()
	m.failures = f
	m.fmu.Unlock()
}
