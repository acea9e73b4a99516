// Package constraint parses and evaluates service placement constraints
// ("node.role == manager", "node.labels.zone != b"), as Swarm does.
package constraint

import (
	"regexp"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// Constraint is one parsed expression.
type Constraint struct {
	Key   string // lower-cased, e.g. "node.labels.zone"
	Equal bool   // == (true) or != (false)
	Value string
}

// Node is what constraints are evaluated against.
type Node struct {
	ID, Hostname, Role, OS, Arch string
	Labels, EngineLabels         map[string]string
}

// Parse parses expressions, refusing unknown keys and operators with the
// messages Swarm gives.
func Parse(exprs []string) ([]Constraint, error) {
	out := make([]Constraint, 0, len(exprs))
	for _, e := range exprs {
		var c Constraint
		var key, val string
		switch {
		case strings.Contains(e, "=="):
			key, val, _ = strings.Cut(e, "==")
			c.Equal = true
		case strings.Contains(e, "!="):
			key, val, _ = strings.Cut(e, "!=")
		default:
			return nil, errdefs.InvalidArgument("constraint expected one operator from ==, !=")
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		// Swarm's character sets: without them a key or value holding an
		// operator would parse differently once printed back.
		if !keyChars.MatchString(key) {
			return nil, errdefs.InvalidArgument("key '%s' is invalid", key)
		}
		if !valueChars.MatchString(val) {
			return nil, errdefs.InvalidArgument("value '%s' is invalid", val)
		}
		c.Key = strings.ToLower(key)
		c.Value = val
		if !knownKey(c.Key) {
			return nil, errdefs.InvalidArgument("invalid constraint: %s", e)
		}
		out = append(out, c)
	}
	return out, nil
}

var (
	keyChars   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]+$`)
	valueChars = regexp.MustCompile(`^[A-Za-z0-9:_.*()?+\[\]\\^$|/\s-]+$`)
)

func knownKey(k string) bool {
	switch k {
	case "node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch":
		return true
	}
	return strings.HasPrefix(k, "node.labels.") && len(k) > len("node.labels.") ||
		strings.HasPrefix(k, "engine.labels.") && len(k) > len("engine.labels.")
}

// Match reports whether n satisfies every constraint. Values compare
// case-insensitively; a missing label equals nothing.
func Match(cs []Constraint, n Node) bool {
	for _, c := range cs {
		got, ok := value(c.Key, n)
		eq := ok && strings.EqualFold(got, c.Value)
		if eq != c.Equal {
			return false
		}
	}
	return true
}

func value(key string, n Node) (string, bool) {
	switch key {
	case "node.id":
		return n.ID, true
	case "node.hostname":
		return n.Hostname, true
	case "node.role":
		return n.Role, true
	case "node.platform.os":
		return n.OS, true
	case "node.platform.arch":
		return n.Arch, true
	}
	if l, ok := strings.CutPrefix(key, "node.labels."); ok {
		return lookupFold(n.Labels, l)
	}
	if l, ok := strings.CutPrefix(key, "engine.labels."); ok {
		return lookupFold(n.EngineLabels, l)
	}
	return "", false
}

// lookupFold finds a label whose key matches case-insensitively (constraint
// keys are lower-cased when parsed).
func lookupFold(m map[string]string, k string) (string, bool) {
	if v, ok := m[k]; ok {
		return v, true
	}
	for mk, v := range m {
		if strings.EqualFold(mk, k) {
			return v, true
		}
	}
	return "", false
}
