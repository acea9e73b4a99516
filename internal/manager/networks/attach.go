package networks

import (
	"context"
	"errors"

	"maps"
	"slices"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
)

// LocalNetworks is implemented by Engines that can tell whether a name or ID
// is one of the engine's own (local) networks, for Swarm's "cannot be used
// with services" text.
type LocalNetworks interface {
	IsLocalNetwork(ctx context.Context, ref string) bool
}

// ResolveAttachments checks spec.TaskTemplate.Networks as Swarm does and
// rewrites each Target (ID, exact name or unique ID prefix) to the network's
// ID, so that a spec naming its networks and one giving their IDs are the
// same spec (a re-deployed stack restarts nothing). It returns guards that
// make the service write fail if one of the networks is removed meanwhile.
// A target that names one of the engine's own networks gets Swarm's "cannot
// be used with services" answer, any other unknown one "not found".
func (m *Manager) ResolveAttachments(ctx context.Context, spec *swarm.ServiceSpec) ([]store.Cond, error) {
	local, _ := m.eng.(LocalNetworks)
	nets := spec.TaskTemplate.Networks
	var guards []store.Cond
	seen := map[string]bool{}
	for i := range nets {
		target := nets[i].Target
		n, err := m.resolve(ctx, target)
		if errors.Is(err, errdefs.ErrNotFound) {
			if local != nil && local.IsLocalNetwork(ctx, target) {
				return nil, nonControl(errdefs.ErrForbidden, "The network %s cannot be used with services. Only networks scoped to the swarm can be used, such as those created with the overlay driver.", target)
			}
			return nil, errdefs.NotFound("network %s not found", target)
		}
		if err != nil {
			return nil, err
		}
		nets[i].Target = n.ID
		if !seen[n.ID] {
			seen[n.ID] = true
			guards = append(guards, store.Exists(m.tbl.Key(n.ID)))
		}
	}
	return guards, nil
}

// refIDs returns the distinct network IDs a spec attaches to.
func refIDs(spec *swarm.ServiceSpec) []string {
	if spec == nil {
		return nil
	}
	var ids []string
	seen := map[string]bool{}
	for _, a := range spec.TaskTemplate.Networks {
		if a.Target != "" && !seen[a.Target] {
			seen[a.Target] = true
			ids = append(ids, a.Target)
		}
	}
	return ids
}

// RefOps writes the in-use markers of a resolved spec's networks, for the
// service's create transaction. The marker key names the service; swarmkit's
// in-use text quotes its ID.
func RefOps(serviceID string, spec *swarm.ServiceSpec) []store.Op {
	var ops []store.Op
	for _, id := range refIDs(spec) {
		ops = append(ops, store.PutOp(store.RefKey(Table, id, serviceID), serviceID))
	}
	return ops
}

// DropRefOps deletes the in-use markers of spec, for the service's delete
// transaction.
func DropRefOps(serviceID string, spec *swarm.ServiceSpec) []store.Op {
	var ops []store.Op
	for _, id := range refIDs(spec) {
		ops = append(ops, store.DeleteOp(store.RefKey(Table, id, serviceID)))
	}
	return ops
}

// RefDiffOps moves the markers from old's networks to new's, for an update
// transaction (each key appears once: etcd refuses duplicates in a txn).
func RefDiffOps(serviceID string, old, new *swarm.ServiceSpec) []store.Op {
	ops := RefOps(serviceID, new)
	keep := map[string]bool{}
	for _, id := range refIDs(new) {
		keep[id] = true
	}
	for _, id := range refIDs(old) {
		if !keep[id] {
			ops = append(ops, store.DeleteOp(store.RefKey(Table, id, serviceID)))
		}
	}
	return ops
}

// TaskNetworks gives what a task's container joins: the networks of its
// attachments, in the spec's order, for the task's node to realise on its
// own engine (Realiser), and the DNS aliases to set on them: the spec's
// aliases, the service name and tasks.<service name>, as Swarm's DNS
// answers both. No networks means the engine's default network and no
// aliases.
func (m *Manager) TaskNetworks(ctx context.Context, nets []swarm.NetworkAttachmentConfig, serviceName string) (out []model.TaskNetwork, aliases []string, err error) {
	if len(nets) == 0 {
		return nil, nil, nil
	}
	seenNet := map[string]bool{}
	seenAlias := map[string]bool{}
	addAlias := func(a string) {
		if a != "" && !seenAlias[a] {
			seenAlias[a] = true
			aliases = append(aliases, a)
		}
	}
	for _, a := range nets {
		n, err := m.resolve(ctx, a.Target)
		if err != nil {
			return nil, nil, err
		}
		if !seenNet[n.ID] {
			seenNet[n.ID] = true
			out = append(out, taskNetwork(n))
		}
		for _, al := range a.Aliases {
			addAlias(al)
		}
	}
	addAlias(serviceName)
	addAlias("tasks." + serviceName)
	return out, aliases, nil
}

// taskNetwork is what a node needs of n to realise it.
func taskNetwork(n *network.Network) model.TaskNetwork {
	return model.TaskNetwork{ID: n.ID, Name: n.Name, Labels: maps.Clone(n.Labels), Internal: n.Internal, EnableIPv6: n.EnableIPv6, IPAM: slices.Clone(n.IPAM.Config)}
}
