package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// Labels that Docker Swarm puts on a task's container; hush sets the same
// ones so that tools that know Swarm recognise its containers.
const (
	LabelServiceID   = "com.docker.swarm.service.id"
	LabelServiceName = "com.docker.swarm.service.name"
	LabelTaskID      = "com.docker.swarm.task.id"
	LabelTaskName    = "com.docker.swarm.task.name"
	LabelNodeID      = "com.docker.swarm.node.id"
)

var (
	// ErrNotFound: the engine has no such container.
	ErrNotFound = errors.New("engine: not found")
	// ErrImageNotFound: Create was given an image the engine does not have
	// (Pull it first).
	ErrImageNotFound = errors.New("engine: image not found")
	// ErrUnavailable: the engine could not be reached, or its event stream
	// broke.
	ErrUnavailable = errors.New("engine: unavailable")
	// ErrConflict: Create found a container with the spec's name that does
	// not belong to the spec's task.
	ErrConflict = errors.New("engine: conflict")
)

// Engine runs task containers on one Docker Engine. It is safe for
// concurrent use.
type Engine struct {
	cli *client.Client
	log *slog.Logger
}

// New returns an Engine using cli, the daemon's one engine client (see
// package enginehost), which it shares with the other parts of hushd. It
// does not connect; use Ping to check the engine answers. log may be nil.
func New(cli *client.Client, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Engine{cli: cli, log: log.With("component", "engine")}
}

// Ping checks that the engine answers and returns the API version the
// client negotiated with it (the lower of the engine's and the client's).
func (e *Engine) Ping(ctx context.Context) (string, error) {
	res, err := e.cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	if err != nil {
		return "", wrap(err, "ping")
	}
	v := e.cli.ClientVersion()
	e.log.Debug("engine answered", "engine_api", res.APIVersion, "api", v, "os", res.OSType)
	return v, nil
}

// wrap adds context to an engine error and marks it with ErrNotFound or
// ErrUnavailable where it applies. The message never includes spec values
// other than names.
func wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf(format, args...)
	switch {
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("%s: %w: %w", msg, ErrNotFound, err)
	case client.IsErrConnectionFailed(err),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s: %w: %w", msg, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", msg, err)
}
