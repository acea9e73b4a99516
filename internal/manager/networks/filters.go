package networks

import (
	"regexp"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/network"
)

// Filters is the decoded `filters` parameter of GET /networks: key → set of
// values, as the Docker API sends it.
type Filters map[string]map[string]bool

// FilterKeys are the keys dockerd accepts for network lists.
var FilterKeys = []string{"dangling", "driver", "id", "label", "name", "scope", "type"}

func (f Filters) has(key string) bool { return len(f.values(key)) > 0 }

func (f Filters) values(key string) []string {
	var vs []string
	for v, on := range f[key] {
		if on {
			vs = append(vs, v)
		}
	}
	return vs
}

// Validate refuses unknown keys and values with dockerd's texts (dockerd
// answers 500 for a bad type; hush says 400: it is the client's mistake).
func (f Filters) Validate() error {
	for k := range f {
		ok := false
		for _, a := range FilterKeys {
			ok = ok || k == a
		}
		if !ok {
			return errdefs.BadRequest("Invalid filter '%s'", k)
		}
	}
	for _, v := range f.values("type") {
		if v != "custom" && v != "builtin" {
			return errdefs.BadRequest("invalid filter: 'type'='%s'", v)
		}
	}
	if d := f.values("dangling"); len(d) > 0 {
		if len(d) > 1 {
			return errdefs.BadRequest("got more than one value for filter key \"dangling\"")
		}
		if _, ok := danglingValue(d[0]); !ok {
			return errdefs.BadRequest("invalid value for filter 'dangling', must be \"true\" (or \"1\"), or \"false\" (or \"0\")")
		}
	}
	return nil
}

func danglingValue(v string) (bool, bool) {
	switch strings.ToLower(v) {
	case "true", "1":
		return true, true
	case "false", "0":
		return false, true
	}
	return false, false
}

// Match reports whether n passes f, with dockerd's semantics: name and id
// match exactly or as an unanchored regular expression, driver and scope
// exactly, every label ("k" or "k=v") must hold, type "custom" is every
// network but bridge/host/none, and dangling=true keeps networks no service
// references. Values of one key are alternatives; keys combine with AND.
func (f Filters) Match(n *network.Network, inUse bool) bool {
	if vs := f.values("driver"); len(vs) > 0 && !anyOf(vs, func(v string) bool { return v == n.Driver }) {
		return false
	}
	if vs := f.values("scope"); len(vs) > 0 && !anyOf(vs, func(v string) bool { return v == n.Scope }) {
		return false
	}
	if vs := f.values("name"); len(vs) > 0 && !anyOf(vs, func(v string) bool { return regexMatch(v, n.Name) }) {
		return false
	}
	if vs := f.values("id"); len(vs) > 0 && !anyOf(vs, func(v string) bool { return regexMatch(v, n.ID) }) {
		return false
	}
	for _, l := range f.values("label") {
		k, v, hasV := strings.Cut(l, "=")
		got, ok := n.Labels[k]
		if !ok || hasV && got != v {
			return false
		}
	}
	if vs := f.values("type"); len(vs) > 0 {
		builtin := n.Name == network.NetworkBridge || n.Name == network.NetworkHost || n.Name == network.NetworkNone
		if !anyOf(vs, func(v string) bool { return v == "custom" && !builtin || v == "builtin" && builtin }) {
			return false
		}
	}
	if vs := f.values("dangling"); len(vs) == 1 {
		want, _ := danglingValue(vs[0])
		if want == inUse {
			return false
		}
	}
	return true
}

func anyOf(vs []string, ok func(string) bool) bool {
	for _, v := range vs {
		if ok(v) {
			return true
		}
	}
	return false
}

// regexMatch is docker's filters.Args.Match: exact, else the value as an
// unanchored regular expression (an invalid one matches nothing).
func regexMatch(pattern, s string) bool {
	if pattern == s {
		return true
	}
	re, err := regexp.Compile(pattern)
	return err == nil && re.MatchString(s)
}
