//go:build !hushfailpoints

package daemon

import (
	"fmt"
	"log/slog"
)

// FailpointsBuilt is false in a production hushd: it has no failpoint a
// setting could make hang (tag hushfailpoints builds one that has).
const FailpointsBuilt = false

// hangingFailpoints refuses any failpoint, by name: a hushd built without
// the tag hushfailpoints has none to set.
func hangingFailpoints(spec string, _ *slog.Logger) (failpoints, error) {
	if spec == "" {
		return nil, nil
	}
	return nil, fmt.Errorf("failpoints %q: this hushd was built without failpoints (build tag hushfailpoints)", spec)
}
