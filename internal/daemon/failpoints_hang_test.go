//go:build hushfailpoints

package daemon

import (
	"log/slog"
	"strings"
	"testing"
)

// HUSH_TEST_FAILPOINTS takes point=hang only; anything else is refused,
// naming the item, rather than ignored.
func TestHangingFailpoints(t *testing.T) {
	tests := []struct {
		spec   string
		points []string
		err    string
	}{
		{spec: ""},
		{spec: "standalone-record=hang", points: []string{"standalone-record"}},
		{spec: "a=hang, b=hang", points: []string{"a", "b"}},
		{spec: "a=crash", err: `failpoint "a=crash"`},
		{spec: "a", err: `failpoint "a"`},
		{spec: "=hang", err: `failpoint "=hang"`},
	}
	for _, tt := range tests {
		fp, err := hangingFailpoints(tt.spec, slog.New(slog.DiscardHandler))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: got %v, want %q", tt.spec, err, tt.err)
			}
			continue
		}
		if err != nil || len(fp) != len(tt.points) {
			t.Errorf("%q: %v, %d points", tt.spec, err, len(fp))
		}
		for _, p := range tt.points {
			if fp[p] == nil {
				t.Errorf("%q: no point %s", tt.spec, p)
			}
		}
	}
}
