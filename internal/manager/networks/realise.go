package networks

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/network"
)

// Engine is what the manager needs of the host engine's networks.
type Engine interface {
	// ListNetworks returns the engine networks carrying every one of labels.
	ListNetworks(ctx context.Context, labels map[string]string) ([]EngineNetwork, error)
	// CreateNetwork creates a local bridge network and returns its ID.
	CreateNetwork(ctx context.Context, s EngineSpec) (string, error)
	// RemoveNetwork removes a network; a missing one is not an error.
	RemoveNetwork(ctx context.Context, id string) error
	// InspectNetwork returns the engine's view of a network.
	InspectNetwork(ctx context.Context, id string) (network.Inspect, error)
}

// NamedNetworks is implemented by Engines that can list networks by name,
// so that hush never gives its engine network the name of one that is not
// its own (EngineClient does).
type NamedNetworks interface {
	// NetworksNamed returns the engine networks named exactly name.
	NetworksNamed(ctx context.Context, name string) ([]EngineNetwork, error)
}

// EngineNetwork is an engine network as ListNetworks reports it.
type EngineNetwork struct {
	ID     string
	Name   string
	Labels map[string]string
}

// EngineSpec is the bridge network that realises a hush network.
type EngineSpec struct {
	Name       string
	Labels     map[string]string
	Internal   bool
	EnableIPv6 bool
	// IPAM is the hush network's IPAM when it gave subnets; nil lets the
	// engine pick from its own pools.
	IPAM *network.IPAM
}

// Errors an Engine reports; others are the engine refusing the request.
var (
	ErrEngineUnavailable = errors.New("engine: unavailable")
	// ErrEngineConflict: the name is taken (engines since API 1.44 refuse
	// duplicate network names).
	ErrEngineConflict = errors.New("engine: network name taken")
	// ErrEngineInUse: the network still has endpoints (task containers that
	// are being stopped); removal is retried by the reconciler.
	ErrEngineInUse = errors.New("engine: network has active endpoints")
)

func (m *Manager) realisedLabels(id string) map[string]string {
	return realisedLabels(m.nodeID, id)
}

func realisedLabels(nodeID, id string) map[string]string {
	return map[string]string{LabelNetworkID: id, LabelNodeID: nodeID}
}

// Realiser creates the engine networks that realise swarm networks on one
// node's engine: a swarm network is a local bridge on each node that runs
// its tasks. A manager's networks manager and the node's agent share one,
// so a network is never created twice on the engine.
type Realiser struct {
	eng Engine
	log *slog.Logger
	// mu serialises creations: the reconciler and starting tasks look for
	// the network and create it if missing.
	mu sync.Mutex
}

// NewRealiser returns the realiser of networks on eng.
func NewRealiser(eng Engine, log *slog.Logger) *Realiser {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Realiser{eng: eng, log: log.With("component", "networks")}
}

// realise returns the ID of the engine network realising n, creating it if
// there is none.
func (m *Manager) realise(ctx context.Context, n *network.Network) (string, error) {
	id, err := m.real.Realise(ctx, m.nodeID, taskNetwork(n))
	if err != nil {
		m.noteFailure(n.ID, err)
		return "", err
	}
	m.clearFailure(n.ID)
	return id, nil
}

// Realise returns the ID of the engine network realising n for node nodeID
// (its labels name both), creating it if there is none.
func (r *Realiser) Realise(ctx context.Context, nodeID string, n model.TaskNetwork) (string, error) {
	if r == nil || r.eng == nil {
		return "", errdefs.Unavailable("networks: no Docker Engine to realise networks on")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	have, err := r.eng.ListNetworks(ctx, realisedLabels(nodeID, n.ID))
	if err != nil {
		return "", err
	}
	if len(have) > 0 {
		sort.Slice(have, func(i, j int) bool { return have[i].ID < have[j].ID })
		return have[0].ID, nil
	}
	labels := maps.Clone(n.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, realisedLabels(nodeID, n.ID))
	s := EngineSpec{Name: n.Name, Labels: labels, Internal: n.Internal, EnableIPv6: n.EnableIPv6}
	if len(n.IPAM) > 0 {
		s.IPAM = &network.IPAM{Driver: "default", Config: slices.Clone(n.IPAM)}
	}
	// A network of the same name that is not this one's (a user's, another
	// hushd's, one an earlier hushd on this engine left) is never touched:
	// this one gets a name of its own. Older engines (API < 1.44) would
	// accept the duplicate, and a duplicate name makes the user's network
	// ambiguous to every command that names it. Containers attach by ID, so
	// the engine name matters only to people reading `docker network ls`.
	if named, ok := r.eng.(NamedNetworks); ok {
		taken, err := named.NetworksNamed(ctx, n.Name)
		if err != nil {
			return "", err
		}
		if len(taken) > 0 {
			s.Name = suffixedName(n.Name, n.ID)
		}
	}
	id, err := r.eng.CreateNetwork(ctx, s)
	if errors.Is(err, ErrEngineConflict) && s.Name == n.Name {
		// Taken between the check and the create.
		s.Name = suffixedName(n.Name, n.ID)
		id, err = r.eng.CreateNetwork(ctx, s)
	}
	if err != nil {
		return "", err
	}
	r.log.Info("network realised on the engine", "id", n.ID, "name", n.Name, "engine_network", id)
	return id, nil
}

// Prune removes the engine networks node nodeID realised for swarm
// networks not in keep, as a worker does once no task of its uses them
// (it has no store to tell removed networks by). One that still has
// endpoints stays: the engine refuses, and a later prune takes it.
func (r *Realiser) Prune(ctx context.Context, nodeID string, keep map[string]bool) error {
	if r == nil || r.eng == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	have, err := r.eng.ListNetworks(ctx, map[string]string{LabelNodeID: nodeID})
	if err != nil {
		return err
	}
	for _, en := range have {
		hid := en.Labels[LabelNetworkID]
		if hid == "" || en.Labels[LabelNodeID] != nodeID || keep[hid] {
			continue
		}
		if err := r.eng.RemoveNetwork(ctx, en.ID); err != nil {
			if !errors.Is(err, ErrEngineInUse) {
				r.log.Warn("removing engine network", "id", hid, "engine_network", en.ID, "err", err)
			}
			continue
		}
		r.log.Info("engine network removed", "id", hid, "engine_network", en.ID)
	}
	return nil
}

// Realised lists the engine networks node nodeID realised (carrying both
// labels), as a leaving node reports those a prune had to leave.
func (r *Realiser) Realised(ctx context.Context, nodeID string) ([]EngineNetwork, error) {
	if r == nil || r.eng == nil {
		return nil, nil
	}
	have, err := r.eng.ListNetworks(ctx, map[string]string{LabelNodeID: nodeID})
	if err != nil {
		return nil, err
	}
	out := have[:0]
	for _, en := range have {
		if en.Labels[LabelNetworkID] != "" && en.Labels[LabelNodeID] == nodeID {
			out = append(out, en)
		}
	}
	return out, nil
}

// suffixedName is the engine name of a hush network whose own name is taken
// on the engine: recognisable, and unique by the network's ID.
func suffixedName(name, id string) string {
	if len(id) > 12 {
		id = id[:12]
	}
	return name + "-" + id
}

// Realise returns the ID of the engine network that realises the network
// ref names, creating it if need be.
func (m *Manager) Realise(ctx context.Context, ref string) (string, error) {
	if m.eng == nil {
		return "", errdefs.Unavailable("networks: no Docker Engine to realise networks on")
	}
	n, err := m.resolve(ctx, ref)
	if err != nil {
		return "", err
	}
	return m.realise(ctx, n)
}

// unrealise removes the engine networks of hush network id, best effort.
func (m *Manager) unrealise(ctx context.Context, id string) bool {
	have, err := m.eng.ListNetworks(ctx, m.realisedLabels(id))
	if err != nil {
		return false
	}
	done := true
	for _, en := range have {
		if err := m.eng.RemoveNetwork(ctx, en.ID); err != nil {
			done = false
			if !errors.Is(err, ErrEngineInUse) {
				m.log.Warn("removing engine network", "id", id, "engine_network", en.ID, "err", err)
			}
			continue
		}
		m.log.Info("engine network removed", "id", id, "engine_network", en.ID)
	}
	return done
}

func (m *Manager) noteFailure(id string, err error) {
	m.failedMu.Lock()
	defer m.failedMu.Unlock()
	if m.failed[id] != err.Error() {
		m.failed[id] = err.Error()
		m.log.Warn("cannot realise network on the engine", "id", id, "err", err)
	}
}

func (m *Manager) clearFailure(id string) {
	m.failedMu.Lock()
	delete(m.failed, id)
	m.failedMu.Unlock()
}

// Reconcile makes the engine match the store once: every network is
// realised and every engine network of this node whose hush network is gone
// is removed. It reports whether work is left (a removal that must wait for
// containers to go, a realisation that failed).
func (m *Manager) Reconcile(ctx context.Context) (pending bool, err error) {
	if m.eng == nil {
		return false, nil
	}
	// The engine first, the store second: an engine network listed here
	// was created after its hush network was stored, so that network is in
	// the read below unless it has really been removed.
	have, err := m.eng.ListNetworks(ctx, map[string]string{LabelNodeID: m.nodeID})
	if err != nil {
		return true, err
	}
	all, err := m.all(ctx)
	if err != nil {
		return true, err
	}
	want := make(map[string]*network.Network, len(all))
	for _, n := range all {
		want[n.ID] = n
	}
	realised := map[string]bool{}
	for _, en := range have {
		hid := en.Labels[LabelNetworkID]
		if hid == "" || en.Labels[LabelNodeID] != m.nodeID {
			continue
		}
		if _, ok := want[hid]; ok {
			realised[hid] = true
			continue
		}
		if err := m.eng.RemoveNetwork(ctx, en.ID); err != nil {
			pending = true
			if !errors.Is(err, ErrEngineInUse) {
				m.log.Warn("removing engine network of a removed network", "id", hid, "engine_network", en.ID, "err", err)
			}
			continue
		}
		m.log.Info("engine network removed", "id", hid, "engine_network", en.ID)
	}
	for _, n := range all {
		if realised[n.ID] {
			continue
		}
		if _, err := m.realise(ctx, n); err != nil {
			pending = true
		}
	}
	return pending, nil
}

// Run reconciles when networks change, every 2 s while work is pending
// (engine networks whose containers are still stopping) and every 30 s in
// any case (an engine network removed behind hush's back comes back).
func (m *Manager) Run(ctx context.Context) {
	if m.eng == nil {
		return
	}
	const (
		retry  = 2 * time.Second
		resync = 30 * time.Second
	)
	var last string
	pending := true
	lastFull := time.Time{}
	tick := time.NewTicker(retry)
	defer tick.Stop()
	for {
		// Only network writes can change the set below; any other write
		// woke this loop for a store read and nothing else.
		changed := m.mirror.TableChanged(Table)
		ids, err := m.idSet(ctx)
		if err == nil && (pending || ids != last || time.Since(lastFull) >= resync) {
			var rerr error
			pending, rerr = m.Reconcile(ctx)
			if rerr != nil && ctx.Err() == nil {
				m.log.Debug("network reconcile", "err", rerr)
			}
			last, lastFull = ids, time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

// idSet fingerprints the set of networks, so that store changes that are
// not about networks (task status writes) cost no engine call.
func (m *Manager) idSet(ctx context.Context) (string, error) {
	all, err := m.all(ctx)
	if err != nil {
		return "", err
	}
	ids := make([]string, 0, len(all))
	for _, n := range all {
		ids = append(ids, n.ID)
	}
	sort.Strings(ids)
	return strings.Join(ids, ","), nil
}
