package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/swarm"
)

// A manager restarted while its cluster has no quorum (a whole-cluster
// restart can take minutes) listens at once: until its store is ready it
// is "pending", answers /_ping, the engine pass-through and Swarm's
// no-leader text for every swarm call, and activates in the background
// when the quorum comes. It never exits because the quorum is late, and
// Close ends the wait at once.

// quorumLogEvery is how often a waiting manager says it still waits.
const quorumLogEvery = 30 * time.Second

// quorumRetry is the pause before activation is tried again after the
// quorum, once reached, went away during it.
const quorumRetry = time.Second

// startServing is what a node does once its store serves: resume the
// cluster's state and start what the state needs (runtime, join/CA
// service, mirror). needQuorum: the store is a cluster member's or an
// external cluster.
func (d *Daemon) startServing(ctx context.Context, needQuorum bool) error {
	for _, step := range d.startSteps(needQuorum) {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return nil
}

// startSteps are startServing's steps, in order; a retry after a quorum
// lost during activation starts again at the step that failed.
func (d *Daemon) startSteps(needQuorum bool) []func(context.Context) error {
	return []func(context.Context) error{
		func(ctx context.Context) error {
			if !needQuorum {
				return nil
			}
			return d.checkForeignCluster(ctx)
		},
		func(ctx context.Context) error {
			if d.worker != nil {
				d.mu.Lock()
				defer d.mu.Unlock()
				return d.startWorkerAgentLocked()
			}
			return d.resume(ctx)
		},
		func(ctx context.Context) error {
			if d.worker != nil {
				return nil
			}
			return d.listenOnExisting(ctx)
		},
		func(ctx context.Context) error {
			if d.member == nil || !d.stateIs(swarm.LocalNodeStateActive) {
				return nil
			}
			// A first manager that crashed between reopening its store
			// and recording its peer URL still advertises the
			// placeholder; a no-op otherwise.
			if d.member.External != nil {
				// A registry write only while the node record says manager.
				if err := d.registerExternalSelf(ctx); err != nil {
					return err
				}
				d.mu.Lock()
				defer d.mu.Unlock()
				return d.startJoinServiceLocked()
			}
			adv, _ := d.listen.peerURLs()
			if err := d.curStore().Members().SetPeerURL(ctx, adv); err != nil {
				return fmt.Errorf("recording this manager's peer URL: %w", err)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			return d.startJoinServiceLocked()
		},
		// A force-new-cluster a restart resumed ends here (forcenew.go).
		d.finishForceNewStep,
		func(ctx context.Context) error {
			if !d.stateIs(swarm.LocalNodeStateInactive) {
				return nil
			}
			// Nothing sealed to decode yet; activation starts it otherwise.
			return d.startMirror(ctx)
		},
	}
}

// serveOnQuorum waits, in the background and until Close, for the store to
// be ready, then starts serving; the node stays pending meanwhile. A
// quorum lost again during activation is waited for again; any other
// failure is fatal, as it would have been at start.
func (d *Daemon) serveOnQuorum() {
	ctx, cancel := context.WithCancel(context.Background())
	d.quorumStop = cancel
	d.quorumDone.Add(1)
	go func() {
		defer d.quorumDone.Done()
		d.log.Warn("the swarm has no quorum yet: serving as pending until it has one")
		// A force-new-cluster elsewhere may have dropped this manager.
		d.quorumDone.Add(1)
		go func() {
			defer d.quorumDone.Done()
			d.watchDropped(ctx)
		}()
		since := time.Now()
		steps := d.startSteps(true)
		tick := time.NewTicker(quorumLogEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				d.log.Warn("still waiting for the swarm's quorum", "waited", time.Since(since).Round(time.Second))
				continue
			case <-d.curStore().Ready():
			}
			var err error
			for len(steps) > 0 {
				if err = steps[0](ctx); err != nil {
					break
				}
				steps = steps[1:]
			}
			if err == nil {
				d.noQuorum.Store(false)
				d.log.Info("quorum reached: serving", "waited", time.Since(since).Round(time.Second), "state", d.State())
				return
			}
			if ctx.Err() != nil {
				return
			}
			if !errors.Is(err, errdefs.ErrUnavailable) {
				select {
				case d.errc <- fmt.Errorf("activating after the quorum came: %w", err):
				default:
				}
				return
			}
			d.log.Warn("activating after the quorum came; trying again", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(quorumRetry):
			}
		}
	}()
}

// stateIs reports whether the node's state (as recorded, whatever the
// quorum) is st.
func (d *Daemon) stateIs(st swarm.LocalNodeState) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state == st
}

// quorumGrace is how long Start waits for a quorum before it serves as
// pending: enough for a restarted manager of a healthy cluster to catch
// up (an election), so that it comes up active as before.
const quorumGrace = 5 * time.Second

// readyWithin reports whether the store is ready within wait.
func (d *Daemon) readyWithin(ctx context.Context, wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-d.curStore().Ready():
		return true
	case <-ctx.Done():
		return false
	case <-t.C:
		return false
	}
}
