package standalone

import (
	"context"
	"fmt"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// Engine is what the reconciler reads from the Docker Engine.
type Engine interface {
	// Containers lists every container, running or not, that carries a
	// label of hush's namespace.
	Containers(ctx context.Context) ([]Container, error)
	// Events streams the removals and renames of containers carrying
	// hush's labels, from the time of the call; the error channel reports
	// a broken stream.
	Events(ctx context.Context) (<-chan Event, <-chan error)
}

// Event is a container's removal (Name empty) or rename (Name is the new
// name).
type Event struct {
	ContainerID string
	Renamed     bool
	Name        string
}

// Run reconciles once, then follows the engine's destroy events (die is
// not followed: a stopped container keeps its files) and renames (the
// name `secret rm` quotes), reconciling again
// whenever the event stream had to be re-opened, until ctx ends.
func (m *Manager) Run(ctx context.Context, eng Engine) {
	// An engine that is away is retried with a growing delay, so that a
	// long outage is not a log line a second.
	delay := time.Second
	rotDone := make(chan struct{})
	go func() {
		defer close(rotDone)
		m.rotations(ctx)
	}()
	defer func() { <-rotDone }()
	for ctx.Err() == nil {
		// Subscribe first, so a removal during the reconcile is not missed.
		sctx, cancel := context.WithCancel(ctx)
		ids, errc := eng.Events(sctx)
		listed := m.BeginList()
		if cs, err := eng.Containers(ctx); err != nil {
			m.log.Warn("standalone: listing containers", "err", err, "retry", delay)
		} else {
			delay = time.Second
			if err := m.Reconcile(ctx, cs, listed); err != nil {
				m.log.Warn("standalone: reconcile", "err", err)
			}
			// Rotations made while hushd was down, or cut short by a
			// crash, are delivered once the tmpfs are back.
			m.poke()
		}
		m.follow(ctx, ids, errc)
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, maxRetryDelay)
	}
}

// maxRetryDelay caps the wait before re-opening the engine's events.
const maxRetryDelay = 30 * time.Second

func (m *Manager) follow(ctx context.Context, evs <-chan Event, errc <-chan error) {
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-errc:
			if ctx.Err() == nil {
				m.log.Warn("standalone: engine event stream broke", "err", err)
			}
			return
		case ev, ok := <-evs:
			if !ok {
				return
			}
			if ev.Renamed {
				if err := m.Renamed(ctx, ev.ContainerID, ev.Name); err != nil {
					m.log.Warn("standalone: recording a container's new name", "container", ev.ContainerID, "err", err)
				}
			} else if err := m.Released(ctx, ev.ContainerID); err != nil {
				m.log.Warn("standalone: releasing a removed container's secrets", "container", ev.ContainerID, "err", err)
			}
		}
	}
}

// EngineClient reads the reconciler's view from a Docker Engine client.
type EngineClient struct{ Cli *client.Client }

// Containers lists containers carrying hush's labels.
func (e EngineClient) Containers(ctx context.Context) ([]Container, error) {
	res, err := e.Cli.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []Container
	for _, c := range res.Items {
		if !HasLabels(c.Labels) {
			continue
		}
		x := Container{ID: c.ID}
		if len(c.Names) > 0 {
			x.Name = strings.TrimPrefix(c.Names[0], "/")
		}
		for _, mp := range c.Mounts {
			x.Sources = append(x.Sources, mp.Source)
		}
		out = append(out, x)
	}
	return out, nil
}

// Events streams destroy and rename events of hush-labelled containers.
func (e EngineClient) Events(ctx context.Context) (<-chan Event, <-chan error) {
	sub := e.Cli.Events(ctx, client.EventsListOptions{
		Filters: make(client.Filters).
			Add("type", string(events.ContainerEventType)).
			Add("event", string(events.ActionDestroy), string(events.ActionRename)),
	})
	out := make(chan Event, 16)
	errc := make(chan error, 1)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case err := <-sub.Err:
				if err == nil {
					err = fmt.Errorf("event stream closed")
				}
				errc <- err
				return
			case msg := <-sub.Messages:
				if msg.Actor.ID == "" || !HasLabels(msg.Actor.Attributes) {
					continue
				}
				ev := Event{ContainerID: msg.Actor.ID}
				switch msg.Action {
				case events.ActionDestroy:
				case events.ActionRename:
					ev.Renamed, ev.Name = true, strings.TrimPrefix(msg.Actor.Attributes["name"], "/")
				default:
					continue
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, errc
}

// Name returns the container's name.
func (e EngineClient) Name(ctx context.Context, id string) (string, error) {
	res, err := e.Cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("container %s: %w: %w", id, errdefs.ErrNotFound, err)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimPrefix(res.Container.Name, "/"), nil
}

// Running reports whether the container is running.
func (e EngineClient) Running(ctx context.Context, id string) (bool, error) {
	res, err := e.Cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return false, fmt.Errorf("container %s: %w: %w", id, errdefs.ErrNotFound, err)
	}
	if err != nil {
		return false, err
	}
	return res.Container.State != nil && res.Container.State.Running, nil
}

// Kill sends the container a signal.
func (e EngineClient) Kill(ctx context.Context, id, signal string) error {
	_, err := e.Cli.ContainerKill(ctx, id, client.ContainerKillOptions{Signal: signal})
	return err
}

// Restart restarts the container with its own stop timeout.
func (e EngineClient) Restart(ctx context.Context, id string) error {
	_, err := e.Cli.ContainerRestart(ctx, id, client.ContainerRestartOptions{})
	return err
}
