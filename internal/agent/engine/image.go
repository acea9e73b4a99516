package engine

import (
	"context"

	cerrdefs "github.com/containerd/errdefs"
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
