package engine

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
)

// TestPullRules: what Pull does without a registry (the e2e tests pull
// from a real one): an image ID is never pulled; a malformed reference and
// an unreachable registry are ErrPull with the engine's (or the parser's)
// text, and the engine is not left with anything.
func TestPullRules(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	unreachable := fmt.Sprintf("%s/hush-test/pull-%s:1", dead, runID)
	cases := []struct {
		ref  string
		want string // "" = no error
	}{
		{"sha256:" + strings.Repeat("ab", 32), ""},
		{"Not A Reference!", "invalid reference"},
		{unreachable, "connection refused"},
	}
	for _, c := range cases {
		err := e.Pull(t.Context(), c.ref, "")
		switch {
		case c.want == "" && err != nil:
			t.Errorf("Pull(%q): %v", c.ref, err)
		case c.want != "" && (!errors.Is(err, ErrPull) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("Pull(%q) = %v, want ErrPull with %q", c.ref, err, c.want)
		}
	}
	if ok, err := e.HasImage(t.Context(), unreachable); err != nil || ok {
		t.Fatalf("HasImage(%s) after a failed pull = %v, %v", unreachable, ok, err)
	}
}
