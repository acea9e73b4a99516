package constraint

import (
	"strings"
	"testing"
)

// FuzzParse: no expression panics Parse or Match; an accepted constraint
// has a known lower-case key and a trimmed, non-empty value, and printing
// it back parses to the same constraint.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"node.role == manager", "node.labels.zone!=b", "engine.labels.os==linux", "NODE.HOSTNAME==vm",
		"node.id==a!=b", "node.id!=a!=b", "node.labels.==x", "node.role", "==", "node.role==", " node.platform.arch == amd64 ",
		"node.labels.a!=b==c", "\x00==\xff",
	} {
		f.Add(s)
	}
	node := Node{ID: "id1", Hostname: "vm", Role: "manager", OS: "linux", Arch: "amd64",
		Labels: map[string]string{"zone": "a"}, EngineLabels: map[string]string{"os": "linux"}}
	f.Fuzz(func(t *testing.T, expr string) {
		cs, err := Parse([]string{expr})
		if err != nil {
			return
		}
		if len(cs) != 1 {
			t.Fatalf("%q: %d constraints", expr, len(cs))
		}
		c := cs[0]
		if c.Key != strings.ToLower(c.Key) || !knownKey(c.Key) {
			t.Fatalf("%q: key %q", expr, c.Key)
		}
		if c.Value == "" || c.Value != strings.TrimSpace(c.Value) {
			t.Fatalf("%q: value %q", expr, c.Value)
		}
		op := "!="
		if c.Equal {
			op = "=="
		}
		back, err := Parse([]string{c.Key + op + c.Value})
		if err != nil || len(back) != 1 || back[0] != c {
			t.Fatalf("%q: %+v does not round-trip: %+v %v", expr, c, back, err)
		}
		// Equal and not-equal are opposites on any node.
		neg := c
		neg.Equal = !c.Equal
		if Match([]Constraint{c}, node) == Match([]Constraint{neg}, node) {
			t.Fatalf("%q: == and != agree", expr)
		}
	})
}
