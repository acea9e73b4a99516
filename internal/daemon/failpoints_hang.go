//go:build hushfailpoints

package daemon

import (
	"fmt"
	"log/slog"
	"strings"
)

// FailpointsBuilt says this hushd was built for end-to-end crash tests
// (tag hushfailpoints), which may make it hang on purpose.
const FailpointsBuilt = true

// hangingFailpoints reads Config.Failpoints: "point=hang,...". Any other
// action, or an empty point, is refused by name.
func hangingFailpoints(spec string, log *slog.Logger) (failpoints, error) {
	if spec == "" {
		return nil, nil
	}
	fp := failpoints{}
	for _, item := range strings.Split(spec, ",") {
		point, action, _ := strings.Cut(strings.TrimSpace(item), "=")
		if point == "" || action != "hang" {
			return nil, fmt.Errorf("failpoint %q: want point=hang", item)
		}
		fp[point] = func() error {
			log.Warn("failpoint reached: hanging here until killed", "point", point)
			select {}
		}
	}
	log.Warn("test failpoints are set: this hushd will hang on purpose", "failpoints", spec)
	return fp, nil
}
