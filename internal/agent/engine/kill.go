package engine

import (
	"context"

	"github.com/moby/moby/client"
)

// Kill sends signal (a name such as "SIGHUP") to the container's main
// process through the engine's kill API, for the signal: rotation mode.
func (e *Engine) Kill(ctx context.Context, id, signal string) error {
	if _, err := e.cli.ContainerKill(ctx, id, client.ContainerKillOptions{Signal: signal}); err != nil {
		return wrap(err, "kill %s with %s", id, signal)
	}
	return nil
}
