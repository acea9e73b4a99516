//go:build !hushfailpoints

package daemon

import (
	"log/slog"
	"strings"
	"testing"
)

// A production build has no failpoint to set: any is refused by name, so
// no setting can make it hang, and an empty one changes nothing.
func TestNoFailpointsInProduction(t *testing.T) {
	if FailpointsBuilt {
		t.Fatal("a build without the tag hushfailpoints says it has failpoints")
	}
	for _, spec := range []string{"standalone-record=hang", "a=crash"} {
		fp, err := hangingFailpoints(spec, slog.New(slog.DiscardHandler))
		if err == nil || fp != nil || !strings.Contains(err.Error(), spec) || !strings.Contains(err.Error(), "hushfailpoints") {
			t.Errorf("%q: %v, %d points; want a refusal naming it and the build tag", spec, err, len(fp))
		}
	}
	if fp, err := hangingFailpoints("", slog.New(slog.DiscardHandler)); err != nil || fp != nil {
		t.Errorf("no failpoints: %v, %v", fp, err)
	}
}
