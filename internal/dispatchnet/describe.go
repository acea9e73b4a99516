package dispatchnet

import (
	"context"
	"encoding/json"
	"net/netip"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// Description is what a node says of itself when it opens a session: what
// placement filters read (platform, engine labels, resources) and what
// `docker node inspect` shows. It is the node's word, bounded, and used
// for placement only; never for identity.
type Description struct {
	OS            string            `json:",omitempty"`
	Arch          string            `json:",omitempty"`
	EngineVersion string            `json:",omitempty"`
	EngineLabels  map[string]string `json:",omitempty"`
	NanoCPUs      int64             `json:",omitempty"`
	MemoryBytes   int64             `json:",omitempty"`
}

// Bounds on a description (its body as a whole is bounded by
// maxDescribeBody).
const (
	maxDescribeBody  = 64 << 10
	maxDescribeField = 256
	maxEngineLabels  = 256
)

// check refuses a description past its bounds or with negative resources.
func (d Description) check() error {
	for _, f := range []string{d.OS, d.Arch, d.EngineVersion} {
		if len(f) > maxDescribeField {
			return errdefs.InvalidArgument("node description: a field over %d bytes", maxDescribeField)
		}
	}
	if len(d.EngineLabels) > maxEngineLabels {
		return errdefs.InvalidArgument("node description: %d engine labels, at most %d", len(d.EngineLabels), maxEngineLabels)
	}
	if d.NanoCPUs < 0 || d.MemoryBytes < 0 {
		return errdefs.InvalidArgument("node description: negative resources")
	}
	return nil
}

// decodeDescription reads a session request's body: empty (a node that
// describes nothing) or one Description.
func decodeDescription(body []byte) (*Description, error) {
	if len(body) == 0 {
		return nil, nil
	}
	var d Description
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, errdefs.BadRequest("malformed node description")
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	return &d, nil
}

// describe hands the manager's hook what a session open tells of its
// node: where its connection comes from (the TCP peer's IP, as Swarm's
// dispatcher records a node's Status.Addr: no header or body the node
// writes) and its description, if it gave one. Failing to record them
// does not refuse the session (placement then uses what was recorded
// before). The open limit (openlimit.go) bounds how often this runs per
// node.
func (h *Handler) describe(ctx context.Context, node, remoteAddr string, d *Description) {
	if h.c.Describe == nil {
		return
	}
	var peer netip.Addr
	if ap, err := netip.ParseAddrPort(remoteAddr); err == nil {
		peer = ap.Addr().Unmap()
	}
	if err := h.c.Describe(ctx, node, peer, d); err != nil {
		h.log.Warn("recording a node's description", "node", node, "err", err)
	}
}
