package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Managers of a hush cluster over an external etcd (see docs/DESIGN.md
// "External etcd"): the etcd's members are not swarm nodes, so Members
// changes no etcd membership. It keeps a registry of the cluster's
// managers instead, one sealed key each (managersRoot + node ID), written
// when a manager is admitted or starts and deleted when it is removed or
// demoted; List reads it with the orchestrator election's leader
// (Leader) and the managers' own presence claims (Reachable).
const managersRoot = root + "managers/"

// orchestratorElection is the election whose holder is the Leader.
const orchestratorElection = "orchestrator"

// EnableManagers gives an external store a Members for a manager named
// self (its node ID); the daemon calls it on a manager of a cluster only.
// A no-op on an embedded store.
func (s *Store) EnableManagers(self string) error {
	if !s.external {
		return nil
	}
	if err := checkPresenceID(self); err != nil {
		return err
	}
	s.members = &Members{s: s, ext: self}
	return nil
}

// External reports whether the store is an external etcd's client.
func (s *Store) External() bool { return s.external }

func (m *Members) extList(ctx context.Context) ([]Member, error) {
	resp, err := m.s.cli.Get(ctx, managersRoot, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, wrapEtcd(err)
	}
	present, err := m.s.Present(ctx)
	if err != nil {
		return nil, err
	}
	leader, err := m.s.Leader(ctx, orchestratorElection)
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return nil, err
	}
	var out []Member
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), managersRoot)
		// A manager is reachable while its own presence claim lives.
		out = append(out, Member{ID: id, Name: id, Leader: id == leader && leader != "",
			Reachable: slices.Contains(present[id], id)})
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// extRegister records name as a manager (idempotent).
func (m *Members) extRegister(ctx context.Context, name string) (Member, error) {
	if err := checkPresenceID(name); err != nil {
		return Member{}, err
	}
	if err := m.s.Put(ctx, managersRoot+name, []byte(name)); err != nil {
		return Member{}, err
	}
	return Member{ID: name, Name: name}, nil
}

func (m *Members) extRemove(ctx context.Context, id string) error {
	if err := checkPresenceID(id); err != nil {
		return err
	}
	if _, err := m.s.cli.Delete(ctx, managersRoot+id); err != nil {
		return fmt.Errorf("store: removing manager %s: %w", id, wrapEtcd(err))
	}
	return nil
}

func (m *Members) extByName(ctx context.Context, name string) (Member, bool, error) {
	if checkPresenceID(name) != nil {
		return Member{}, false, nil
	}
	resp, err := m.s.cli.Get(ctx, managersRoot+name, clientv3.WithKeysOnly())
	if err != nil {
		return Member{}, false, wrapEtcd(err)
	}
	if len(resp.Kvs) == 0 {
		return Member{}, false, nil
	}
	return Member{ID: name, Name: name}, true, nil
}

// RegisteredManagers returns the node IDs in an external store's manager
// registry, from its keys alone: what a locked manager, which opens no
// sealed value, can tell of the other managers.
func (s *Store) RegisteredManagers(ctx context.Context) ([]string, error) {
	if !s.external {
		return nil, fmt.Errorf("store: a manager registry is kept on an external etcd only: %w", errdefs.ErrInternal)
	}
	resp, err := s.cli.Get(ctx, managersRoot, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, wrapEtcd(err)
	}
	ids := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		ids = append(ids, strings.TrimPrefix(string(kv.Key), managersRoot))
	}
	return ids, nil
}

// RegisterIf records this manager (EnableManagers' self) in an external
// store's registry only if guard holds, in one transaction: the daemon's
// write at start passes its node record's revision, read as a manager's,
// so a demotion committed meanwhile (which deletes the registry entry) is
// never undone by a blind write. ok false: the guard failed, nothing was
// written.
func (m *Members) RegisterIf(ctx context.Context, guard Cond) (ok bool, err error) {
	if m.ext == "" {
		return false, fmt.Errorf("store: a manager registry is kept on an external etcd only: %w", errdefs.ErrInternal)
	}
	key := managersRoot + m.ext
	m.s.gate.RLock()
	defer m.s.gate.RUnlock()
	v, err := m.s.seal(key, []byte(m.ext))
	if err != nil {
		return false, err
	}
	resp, err := m.s.cli.Txn(ctx).If(guard.cmp).Then(clientv3.OpPut(key, v)).Commit()
	if err != nil {
		return false, wrapEtcd(err)
	}
	return resp.Succeeded, nil
}
