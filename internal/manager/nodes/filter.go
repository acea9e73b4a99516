package nodes

import (
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/swarm"
)

// FilterKeys are the filters `GET /nodes` accepts, as Swarm's.
var FilterKeys = []string{"id", "label", "membership", "name", "node.label", "role"}

// Filter is a parsed `docker node ls --filter` set. Within one key any
// value may match; every key given must match.
type Filter struct {
	IDPrefixes   []string
	NamePrefixes []string
	// EngineLabels match the engine's labels (dockerd --label), NodeLabels
	// the node spec's labels (docker node update --label-add); an empty
	// value matches any value of the key.
	EngineLabels map[string]string
	NodeLabels   map[string]string
	Roles        []swarm.NodeRole
	// Memberships are "accepted" or "pending". The API's node object does
	// not carry a membership; every node hush knows is accepted (there is
	// no join approval), so only "accepted" matches.
	Memberships []string
}

// ParseFilter builds a Filter from the values of each filter key, refusing
// roles and memberships Swarm does not know with Swarm's texts.
func ParseFilter(values func(key string) []string) (Filter, error) {
	f := Filter{
		IDPrefixes:   values("id"),
		NamePrefixes: values("name"),
		EngineLabels: kvMap(values("label")),
		NodeLabels:   kvMap(values("node.label")),
	}
	for _, r := range values("role") {
		switch role := swarm.NodeRole(strings.ToLower(r)); role {
		case swarm.NodeRoleManager, swarm.NodeRoleWorker:
			f.Roles = append(f.Roles, role)
		default:
			return Filter{}, errdefs.BadRequest("Invalid role filter: '%s'", r)
		}
	}
	for _, m := range values("membership") {
		switch mem := strings.ToLower(m); mem {
		case "accepted", "pending":
			f.Memberships = append(f.Memberships, mem)
		default:
			return Filter{}, errdefs.BadRequest("Invalid membership filter: '%s'", m)
		}
	}
	return f, nil
}

// kvMap reads "k" and "k=v" values as Swarm does: "k" wants the key with
// any value, and only the first "=" separates.
func kvMap(vs []string) map[string]string {
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

// Match reports whether n passes every filter. IDs and hostnames match by
// case-sensitive prefix, as in Swarm.
func (f Filter) Match(n *swarm.Node) bool {
	return anyPrefix(n.ID, f.IDPrefixes) &&
		anyPrefix(n.Description.Hostname, f.NamePrefixes) &&
		labelsMatch(n.Description.Engine.Labels, f.EngineLabels) &&
		labelsMatch(n.Spec.Labels, f.NodeLabels) &&
		oneOf(n.Spec.Role, f.Roles) &&
		oneOf("accepted", f.Memberships)
}

func anyPrefix(s string, prefixes []string) bool {
	if len(prefixes) == 0 {
		return true
	}
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		got, ok := have[k]
		if !ok || v != "" && v != got {
			return false
		}
	}
	return true
}

func oneOf[T comparable](v T, set []T) bool {
	if len(set) == 0 {
		return true
	}
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}
