package api

import (
	"encoding/json"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// filterArgs is the decoded `filters` query parameter: key → set of values.
type filterArgs map[string]map[string]bool

// parseFilters decodes Docker's filters JSON. Both the current form
// {"k":{"v":true}} and the pre-1.24 form {"k":["v"]} are accepted, as
// dockerd does. Keys not in allowed are refused with dockerd's text.
func parseFilters(raw string, allowed ...string) (filterArgs, error) {
	args := filterArgs{}
	if raw == "" {
		return args, nil
	}
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		var legacy map[string][]string
		if lerr := json.Unmarshal([]byte(raw), &legacy); lerr != nil {
			// Swarm answers 500 here; a malformed parameter is the
			// client's error, so hush answers 400 with the same text.
			return nil, errdefs.BadRequest("%s", err.Error())
		}
		args = filterArgs{}
		for k, vs := range legacy {
			args[k] = map[string]bool{}
			for _, v := range vs {
				args[k][v] = true
			}
		}
	}
	for k := range args {
		ok := false
		for _, a := range allowed {
			if k == a {
				ok = true
				break
			}
		}
		if !ok {
			return nil, errdefs.BadRequest("Invalid filter '%s'", k)
		}
	}
	return args, nil
}

// values returns the values of key (unordered).
func (f filterArgs) values(key string) []string {
	vs := make([]string, 0, len(f[key]))
	for v, on := range f[key] {
		if on {
			vs = append(vs, v)
		}
	}
	return vs
}

// labels turns "label" values ("k" or "k=v") into a key → value map.
func (f filterArgs) labels() map[string]string {
	vs := f.values("label")
	if len(vs) == 0 {
		return nil
	}
	m := make(map[string]string, len(vs))
	for _, v := range vs {
		k, val, _ := strings.Cut(v, "=")
		m[k] = val
	}
	return m
}
