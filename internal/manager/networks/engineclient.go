package networks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// EngineClient is the Engine of a Docker Engine, through the daemon's one
// engine client.
type EngineClient struct {
	cli *client.Client
}

// NewEngineClient returns an Engine using cli, which it shares with the
// rest of hushd (the daemon closes it).
func NewEngineClient(cli *client.Client) *EngineClient { return &EngineClient{cli: cli} }

func classify(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	switch {
	case client.IsErrConnectionFailed(err), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s: %w: %w", msg, ErrEngineUnavailable, err)
	case cerrdefs.IsConflict(err) && strings.Contains(err.Error(), "already exists"):
		return fmt.Errorf("%s: %w: %w", msg, ErrEngineConflict, err)
	case strings.Contains(err.Error(), "active endpoints"):
		return fmt.Errorf("%s: %w: %w", msg, ErrEngineInUse, err)
	}
	return fmt.Errorf("%s: %w", msg, err)
}

// ListNetworks lists the engine networks carrying all of labels.
func (e *EngineClient) ListNetworks(ctx context.Context, labels map[string]string) ([]EngineNetwork, error) {
	f := make(client.Filters)
	for k, v := range labels {
		f.Add("label", k+"="+v)
	}
	res, err := e.cli.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err != nil {
		return nil, classify(err, "list engine networks")
	}
	out := make([]EngineNetwork, 0, len(res.Items))
	for _, n := range res.Items {
		ok := true
		for k, v := range labels {
			ok = ok && n.Labels[k] == v // whatever the filter did
		}
		if ok {
			out = append(out, EngineNetwork{ID: n.ID, Name: n.Name, Labels: n.Labels})
		}
	}
	return out, nil
}

// NetworksNamed lists the engine networks named exactly name, whoever made
// them (the engine's name filter also matches substrings).
func (e *EngineClient) NetworksNamed(ctx context.Context, name string) ([]EngineNetwork, error) {
	res, err := e.cli.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("name", name)})
	if err != nil {
		return nil, classify(err, "list engine networks named %s", name)
	}
	var out []EngineNetwork
	for _, n := range res.Items {
		if n.Name == name {
			out = append(out, EngineNetwork{ID: n.ID, Name: n.Name, Labels: n.Labels})
		}
	}
	return out, nil
}

// CreateNetwork creates an attachable bridge network.
func (e *EngineClient) CreateNetwork(ctx context.Context, s EngineSpec) (string, error) {
	opts := client.NetworkCreateOptions{
		Driver: network.NetworkBridge, Labels: s.Labels, Internal: s.Internal, Attachable: true, IPAM: s.IPAM,
	}
	if s.EnableIPv6 {
		on := true
		opts.EnableIPv6 = &on
	}
	res, err := e.cli.NetworkCreate(ctx, s.Name, opts)
	if err != nil {
		return "", classify(err, "create engine network %s", s.Name)
	}
	return res.ID, nil
}

// RemoveNetwork removes a network; a missing one is not an error.
func (e *EngineClient) RemoveNetwork(ctx context.Context, id string) error {
	if _, err := e.cli.NetworkRemove(ctx, id, client.NetworkRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
		return classify(err, "remove engine network %s", id)
	}
	return nil
}

// InspectNetwork returns the engine's view of a network.
func (e *EngineClient) InspectNetwork(ctx context.Context, id string) (network.Inspect, error) {
	res, err := e.cli.NetworkInspect(ctx, id, client.NetworkInspectOptions{})
	if err != nil {
		return network.Inspect{}, classify(err, "inspect engine network %s", id)
	}
	return res.Network, nil
}

// IsLocalNetwork reports whether ref names one of the engine's own local
// networks (not one realising a hush network).
func (e *EngineClient) IsLocalNetwork(ctx context.Context, ref string) bool {
	res, err := e.cli.NetworkInspect(ctx, ref, client.NetworkInspectOptions{})
	if err != nil {
		return false
	}
	return res.Network.Scope != ScopeSwarm && res.Network.Labels[LabelNetworkID] == ""
}

// EngineClient never names its network after one that is not its own.
var _ NamedNetworks = (*EngineClient)(nil)
