package engine

import (
	"context"
	"errors"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/client"
	"github.com/opencontainers/go-digest"
)

// HasImage reports whether the engine has the image ref (a name[:tag],
// name@digest or image ID). It never pulls.
func (e *Engine) HasImage(ctx context.Context, ref string) (bool, error) {
	if ref == "" {
		return false, nil
	}
	if _, err := e.cli.ImageInspect(ctx, ref); err != nil {
		if cerrdefs.IsNotFound(err) {
			return false, nil
		}
		return false, wrap(err, "inspect image %s", ref)
	}
	return true, nil
}

// ErrPull marks a pull the engine did not complete (the registry refused,
// was unreachable, had no such image).
var ErrPull = errors.New("engine: pull failed")

// Pull has the engine pull ref as a Swarm worker does before it creates a
// task's container: an image ID is never pulled, nor an image pinned by
// digest (name[:tag]@sha256:…) that the engine has already; anything else
// is pulled, by digest when pinned and else by its tag ("latest" when it
// names none), so a mutable tag is brought up to date. auth is the
// X-Registry-Auth value the service was created with ("" for none); it is
// never logged nor put into an error. Pull returns when the engine has
// finished; a failure wraps ErrPull with the engine's text.
func (e *Engine) Pull(ctx context.Context, ref, auth string) error {
	if _, err := digest.Parse(ref); err == nil {
		return nil
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return fmt.Errorf("pull %s: %w: invalid reference: %w", ref, ErrPull, err)
	}
	if _, pinned := named.(reference.Canonical); pinned {
		if ok, err := e.HasImage(ctx, ref); err != nil {
			return err
		} else if ok {
			return nil
		}
	}
	target := reference.TagNameOnly(named).String()
	e.log.Debug("pulling image", "image", target, "with_auth", auth != "")
	res, err := e.cli.ImagePull(ctx, target, client.ImagePullOptions{RegistryAuth: auth})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("pull %s: %w: %w", target, ErrPull, err)
	}
	if err := res.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("pull %s: %w: %w", target, ErrPull, err)
	}
	e.log.Debug("image pulled", "image", target)
	return nil
}
