package networks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/network"
)

// Table is the store table of networks.
const Table = "networks"

// Labels hush puts on the engine networks that realise its networks.
const (
	LabelNetworkID = "io.hush.network.id"
	LabelNodeID    = "io.hush.node.id"
)

// Scope and driver of every hush network, as Swarm reports overlay networks.
const (
	ScopeSwarm    = "swarm"
	DriverOverlay = "overlay"
)

// Config wires a Manager.
type Config struct {
	Store *store.Store
	// Mirror serves lists and attachment lookups; New registers the
	// networks table with it, so it must not be running yet.
	Mirror *store.Mirror
	// Engine realises networks on the host; nil leaves them unrealised
	// (the objects still work, tasks then cannot join them).
	Engine Engine
	// NodeID labels the engine networks this node realises.
	NodeID string
	Logger *slog.Logger
	// AddrPools gives subnets to networks created without any (nil: the
	// engine picks them).
	AddrPools AddrPools
	// Realiser creates the engine networks; the node's agent shares it
	// (nil: one of the manager's own over Engine).
	Realiser *Realiser
}

// Manager implements the networks control API and their realisation on the
// host engine.
type Manager struct {
	st     *store.Store
	tbl    *store.Table
	mirror *store.Mirror
	eng    Engine
	nodeID string
	log    *slog.Logger
	now    func() time.Time
	newID  func() (string, error)

	real *Realiser
	// failed remembers the last realisation error logged per network, so
	// an engine that keeps refusing does not flood the log.
	failedMu sync.Mutex
	failed   map[string]string
	pools    poolAllocator
}

// New returns a networks manager and registers its table with c.Mirror.
func New(c Config) *Manager {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		st: c.Store, tbl: c.Store.Table(Table), mirror: c.Mirror, eng: c.Engine, nodeID: c.NodeID,
		log: c.Logger.With("component", "networks"), now: func() time.Time { return time.Now().UTC() },
		newID: identity.NewID, failed: map[string]string{}, pools: poolAllocator{source: c.AddrPools},
	}
	if m.real = c.Realiser; m.real == nil && c.Engine != nil {
		m.real = NewRealiser(c.Engine, c.Logger)
	}
	c.Mirror.Register(Table, func(o store.Object) (any, error) { return decode(o) })
	return m
}

func decode(o store.Object) (*network.Network, error) {
	n := new(network.Network)
	if err := json.Unmarshal(o.Value, n); err != nil {
		return nil, fmt.Errorf("decode network %s: %w: %w", o.ID, errdefs.ErrInternal, err)
	}
	return n, nil
}

// Owns reports whether a create request is for a swarm-scoped network,
// which hush owns; every other network is the engine's.
func Owns(req *network.CreateRequest) bool {
	return req.Driver == DriverOverlay || req.Scope == ScopeSwarm
}

// dnsName is swarmkit's rule for network names: a DNS label, where '_' is
// also allowed between alphanumerics.
var dnsName = regexp.MustCompile(`^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$`)

func nonControl(cat error, format string, args ...any) error {
	return &errdefs.Error{Category: cat, Msg: fmt.Sprintf(format, args...)}
}

// Validate applies dockerd's and swarmkit's checks to a create request, in
// their order and with their texts (Create applies them too).
func Validate(req *network.CreateRequest) error {
	switch req.Name {
	case "":
		return errdefs.BadRequest("invalid name: ")
	case network.NetworkNone, network.NetworkDefault:
		return nonControl(errdefs.ErrForbidden, "operation is not permitted on predefined %s network ", req.Name)
	case network.NetworkBridge, network.NetworkHost:
		return nonControl(errdefs.ErrAlreadyExists, "network with name %s already exists", req.Name)
	}
	if !dnsName.MatchString(req.Name) {
		return errdefs.InvalidArgument("name must be valid as a DNS name component")
	}
	if len(req.Name) > 63 {
		return errdefs.InvalidArgument("name must be 63 characters or fewer")
	}
	switch req.Driver {
	case DriverOverlay, network.NetworkBridge:
	case "":
		return errdefs.InvalidArgument("driver name: if driver is specified name is required")
	default:
		// Swarm would ask the node's plugin; hush realises every network
		// as a bridge on its one host, which only stands in for these two.
		return errdefs.InvalidArgument("network driver %q is not supported by hush: swarm networks are overlay (realised as bridge networks on the host)", req.Driver)
	}
	switch {
	case req.Ingress:
		return errdefs.InvalidArgument("ingress networks are not supported by hush: it has no routing mesh")
	case req.ConfigOnly || req.ConfigFrom != nil && req.ConfigFrom.Network != "":
		return errdefs.InvalidArgument("config-only networks and --config-from are not supported by hush")
	case req.IPAM != nil && req.IPAM.Driver != "" && req.IPAM.Driver != "default":
		return errdefs.InvalidArgument("IPAM driver %q is not supported by hush", req.IPAM.Driver)
	}
	return nil
}

// Create validates and stores a swarm-scoped network and realises it on the
// host engine. An engine that refuses the network (say, a subnet that
// overlaps one of its own) undoes the create and the error is returned; an
// engine that does not answer leaves it to be realised later.
func (m *Manager) Create(ctx context.Context, req network.CreateRequest) (string, error) {
	if err := Validate(&req); err != nil {
		return "", err
	}
	id, err := m.newID()
	if err != nil {
		return "", fmt.Errorf("network id: %w: %w", errdefs.ErrInternal, err)
	}
	n := network.Network{
		Name: req.Name, ID: id, Created: m.now(), Scope: ScopeSwarm, Driver: req.Driver,
		EnableIPv4: req.EnableIPv4 == nil || *req.EnableIPv4,
		EnableIPv6: req.EnableIPv6 != nil && *req.EnableIPv6,
		Internal:   req.Internal, Attachable: req.Attachable,
		Options: req.Options, Labels: req.Labels,
	}
	if req.IPAM != nil {
		n.IPAM = *req.IPAM
	}
	if n.IPAM.Driver == "" {
		n.IPAM.Driver = "default"
	}
	release, err := m.assignSubnet(ctx, &n)
	if err != nil {
		return "", err
	}
	defer release()
	val, err := json.Marshal(&n)
	if err != nil {
		return "", fmt.Errorf("encode network: %w: %w", errdefs.ErrInternal, err)
	}
	if _, err := m.tbl.Create(ctx, id, n.Name, val); err != nil {
		if errors.Is(err, store.ErrNameTaken) {
			return "", m.nameTaken(ctx, n.Name)
		}
		return "", err
	}
	m.log.Info("network created", "id", id, "name", n.Name)
	if m.eng != nil {
		if _, err := m.realise(ctx, &n); err != nil && !errors.Is(err, ErrEngineUnavailable) {
			m.undoCreate(ctx, &n)
			return "", errdefs.InvalidArgument("network %s cannot be realised on the Docker Engine: %v", n.Name, err)
		}
	}
	return id, nil
}

// nameTaken gives dockerd's text for an exact duplicate and swarmkit's for
// one that differs only in case.
func (m *Manager) nameTaken(ctx context.Context, name string) error {
	if id, err := m.tbl.LookupName(ctx, name); err == nil {
		if o, err := m.tbl.Get(ctx, id); err == nil {
			if n, err := decode(o); err == nil && n.Name != name {
				return errdefs.Unknown("name conflicts with an existing object")
			}
		}
	}
	return nonControl(errdefs.ErrAlreadyExists, "network with name %s already exists", name)
}

func (m *Manager) undoCreate(ctx context.Context, n *network.Network) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	noRefs := store.NoneUnder(store.RefPrefix(Table, n.ID))
	if err := m.tbl.Delete(ctx, n.ID, n.Name, 0, []store.Cond{noRefs}); err != nil {
		m.log.Warn("undoing network create", "id", n.ID, "err", err)
	}
}

// resolve finds the network ref names, as dockerd does: full ID, exact name
// (network names are looked up case-sensitively even though they are unique
// case-insensitively), then unique ID prefix.
func (m *Manager) resolve(ctx context.Context, ref string) (*network.Network, error) {
	if ref == "" {
		return nil, errdefs.NotFound("network %s not found", ref)
	}
	if o, err := m.tbl.Get(ctx, ref); err == nil {
		return decode(o)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if id, err := m.tbl.LookupName(ctx, ref); err == nil {
		o, err := m.tbl.Get(ctx, id)
		switch {
		case err == nil:
			n, err := decode(o)
			if err != nil {
				return nil, err
			}
			if n.Name == ref {
				return n, nil
			}
		case !errors.Is(err, store.ErrNotFound):
			return nil, err
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	objs, err := m.tbl.ListPrefix(ctx, ref)
	if err != nil {
		return nil, err
	}
	switch len(objs) {
	case 0:
		return nil, errdefs.NotFound("network %s not found", ref)
	case 1:
		return decode(objs[0])
	}
	return nil, errdefs.BadRequest("network %s is ambiguous (%d matches found)", ref, len(objs))
}

// LookupExact returns the network whose ID or name is exactly ref.
func (m *Manager) LookupExact(ctx context.Context, ref string) (*network.Network, bool, error) {
	if ref == "" {
		return nil, false, nil
	}
	if o, err := m.tbl.Get(ctx, ref); err == nil {
		n, err := decode(o)
		return n, err == nil, err
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, false, err
	}
	id, err := m.tbl.LookupName(ctx, ref)
	if errors.Is(err, store.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	o, err := m.tbl.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	n, err := decode(o)
	if err != nil {
		return nil, false, err
	}
	return n, n.Name == ref, nil
}

// Resolve returns the network ref names (ID, exact name, unique ID prefix).
func (m *Manager) Resolve(ctx context.Context, ref string) (*network.Network, error) {
	return m.resolve(ctx, ref)
}

// Inspect returns the network ref names in its wire form; with an engine,
// its containers and (when the spec gave none) its subnets are the realised
// network's.
func (m *Manager) Inspect(ctx context.Context, ref string) (network.Inspect, error) {
	n, err := m.resolve(ctx, ref)
	if err != nil {
		return network.Inspect{}, err
	}
	out := network.Inspect{Network: *n}
	if m.eng == nil {
		return out, nil
	}
	have, err := m.eng.ListNetworks(ctx, m.realisedLabels(n.ID))
	if err != nil || len(have) == 0 {
		return out, nil
	}
	ei, err := m.eng.InspectNetwork(ctx, have[0].ID)
	if err != nil {
		return out, nil
	}
	if len(ei.Containers) > 0 {
		out.Containers = ei.Containers
	}
	if len(out.IPAM.Config) == 0 {
		out.IPAM.Config = ei.IPAM.Config
	} else {
		// Gateways the engine picked for the given subnets, as Swarm shows
		// the ones it allocated.
		for i := range out.IPAM.Config {
			c := &out.IPAM.Config[i]
			for _, ec := range ei.IPAM.Config {
				if !c.Gateway.IsValid() && ec.Subnet == c.Subnet {
					c.Gateway = ec.Gateway
				}
			}
		}
	}
	return out, nil
}

// List returns the networks that match f, ordered by name.
func (m *Manager) List(ctx context.Context, f Filters) ([]network.Summary, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	all, err := m.all(ctx)
	if err != nil {
		return nil, err
	}
	var used map[string]bool
	if f.has("dangling") {
		if used, err = m.referenced(ctx); err != nil {
			return nil, err
		}
	}
	out := make([]network.Summary, 0, len(all))
	for _, n := range all {
		if f.Match(n, used[n.ID]) {
			out = append(out, network.Summary{Network: *n})
		}
	}
	return out, nil
}

// all returns every network (a linearizable read), ordered by name.
func (m *Manager) all(ctx context.Context) ([]*network.Network, error) {
	var out []*network.Network
	err := m.mirror.Read(ctx, Table, func(items map[string]store.Entry) {
		out = make([]*network.Network, 0, len(items))
		for _, e := range items {
			out = append(out, e.Value.(*network.Network))
		}
	})
	if errors.Is(err, store.ErrMirrorStale) {
		objs, lerr := m.tbl.List(ctx)
		if lerr != nil {
			return nil, lerr
		}
		out = out[:0]
		for _, o := range objs {
			n, derr := decode(o)
			if derr != nil {
				return nil, derr
			}
			out = append(out, n)
		}
		err = nil
	}
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// referenced returns the IDs of networks some service spec references.
func (m *Manager) referenced(ctx context.Context) (map[string]bool, error) {
	// RefPrefix(kind, id) ends in "<id>/": with no ID, drop one slash.
	p := strings.TrimSuffix(store.RefPrefix(Table, ""), "/")
	keys, err := m.st.Keys(ctx, p, 0)
	if err != nil {
		return nil, fmt.Errorf("network references: %w: %w", errdefs.ErrUnavailable, err)
	}
	out := map[string]bool{}
	for _, k := range keys {
		id, _, _ := strings.Cut(strings.TrimPrefix(k, p), "/")
		out[id] = true
	}
	return out, nil
}

// Remove deletes the network ref names unless a service spec references
// it, then removes its engine network (or leaves that to the reconciler
// while task containers are still being stopped).
func (m *Manager) Remove(ctx context.Context, ref string) error {
	n, err := m.resolve(ctx, ref)
	if err != nil {
		return err
	}
	noRefs := store.NoneUnder(store.RefPrefix(Table, n.ID))
	err = m.tbl.Delete(ctx, n.ID, n.Name, 0, []store.Cond{noRefs})
	switch {
	case errors.Is(err, store.ErrGuard):
		return m.inUse(ctx, n)
	case errors.Is(err, store.ErrNotFound):
		return errdefs.ControlNotFound("network %s not found", n.ID)
	case err != nil:
		return err
	}
	m.log.Info("network removed", "id", n.ID, "name", n.Name)
	if m.eng != nil {
		m.unrealise(ctx, n.ID)
	}
	return nil
}

// inUse is swarmkit's text: it names the network and the first service by
// ID (the CLI shows it as is).
func (m *Manager) inUse(ctx context.Context, n *network.Network) error {
	p := store.RefPrefix(Table, n.ID)
	keys, err := m.st.Keys(ctx, p, 1)
	if err != nil {
		return fmt.Errorf("network references: %w: %w", errdefs.ErrUnavailable, err)
	}
	svc := ""
	if len(keys) > 0 {
		svc = strings.TrimPrefix(keys[0], p)
	}
	return &errdefs.Error{Category: errdefs.ErrConflict, Control: true,
		Msg: fmt.Sprintf("network %s is in use by service %s", n.ID, svc)}
}
