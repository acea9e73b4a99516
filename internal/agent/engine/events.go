package engine

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"
)

// Exit reports that a task's container ended: its process exited ("die")
// or the container was removed ("destroy").
type Exit struct {
	ContainerID string
	TaskID      string
	// ExitCode is the process's exit code; -1 for a removal, which carries
	// none.
	ExitCode int
	// Removed is true for a "destroy" event: the container is gone.
	Removed bool
	// Time is when the engine recorded the event.
	Time time.Time
}

// Exits subscribes to the engine's events for containers labelled
// com.docker.swarm.task.id and reports each "die" and "destroy" as an Exit.
// The subscription is in place when Exits returns, and starts from the time
// of the call, so a container that dies right after is reported.
//
// If the stream breaks (the engine went away or restarted), the error
// channel receives one error (wrapping ErrUnavailable where it applies) and
// both channels are closed: the caller re-subscribes, e.g. with ExitsSince
// and the Time of the last Exit it saw, and reconciles with ListTasks. When
// ctx is cancelled both channels are closed without an error.
func (e *Engine) Exits(ctx context.Context) (<-chan Exit, <-chan error) {
	return e.ExitsSince(ctx, time.Now())
}

// ExitsSince is Exits replaying, first, the events since the given time that
// the engine still keeps in its (short) event log. A zero since means
// from now on only.
func (e *Engine) ExitsSince(ctx context.Context, since time.Time) (<-chan Exit, <-chan error) {
	opts := client.EventsListOptions{
		Filters: make(client.Filters).
			Add("type", string(events.ContainerEventType)).
			Add("event", string(events.ActionDie), string(events.ActionDestroy)).
			Add("label", LabelTaskID),
	}
	if !since.IsZero() {
		opts.Since = fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond())
	}
	out := make(chan Exit, 16)
	errc := make(chan error, 1)

	// Events returns once the engine answered (or failed to), so the
	// subscription exists before this function returns.
	sub := e.cli.Events(ctx, opts)

	go func() {
		defer close(out)
		defer close(errc)
		for {
			select {
			case <-ctx.Done():
				return
			case err, ok := <-sub.Err:
				if ctx.Err() != nil {
					return
				}
				if !ok || err == nil {
					err = fmt.Errorf("%w: event stream closed", ErrUnavailable)
				} else {
					err = wrap(err, "engine event stream")
				}
				e.log.Warn("engine event stream broke", "err", err)
				errc <- err
				return
			case m := <-sub.Messages:
				x, ok := toExit(m)
				if !ok {
					continue
				}
				select {
				case out <- x:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, errc
}

func toExit(m events.Message) (Exit, bool) {
	if m.Type != events.ContainerEventType || m.Actor.ID == "" {
		return Exit{}, false
	}
	taskID, ok := m.Actor.Attributes[LabelTaskID]
	if !ok {
		return Exit{}, false
	}
	x := Exit{ContainerID: m.Actor.ID, TaskID: taskID, ExitCode: -1}
	switch {
	case m.TimeNano != 0:
		x.Time = time.Unix(0, m.TimeNano)
	case m.Time != 0:
		x.Time = time.Unix(m.Time, 0)
	}
	switch m.Action {
	case events.ActionDie:
		if c, err := strconv.Atoi(m.Actor.Attributes["exitCode"]); err == nil {
			x.ExitCode = c
		}
	case events.ActionDestroy:
		x.Removed = true
	default:
		return Exit{}, false
	}
	return x, true
}
