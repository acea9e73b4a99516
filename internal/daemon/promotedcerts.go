package daemon

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
)

// A promoted node's worker certificate (see docs/DESIGN.md, "Role changes
// and renewal"). The node asks for its manager certificate under its
// worker certificate, and asks again under it when the answer is lost, so
// that certificate must be served until the promotion is complete: until
// the node is active as a manager under a manager certificate, which it
// then records as held (managerCertRecord.Held, keepEtcdCRL). From then
// on every worker certificate the node was issued before that manager
// certificate is refused, by the dispatcher (sessions, assignments and
// their secrets, status, logs) and by the join/CA service (a renewal, a
// promotion again, a role query): it is the demotion's rule
// (revokedByDemotion, refuseManagerCert) the other way round. A worker
// certificate issued after (the node demoted again) is served, and so is
// always the one whose key the node record holds (a demotion certifies a
// fresh key and records it, whatever the managers' clocks say); the one
// held before the promotion stays refused.

// heldRefresh is how stale the cached held manager certificates may be:
// the dispatcher checks every call, so they are read at most once a
// second (as the roots and the removed nodes are), one read at a time.
const heldRefresh = time.Second

// heldCache is this manager's copy of heldManagerCerts (storeCache: read
// at most once per heldRefresh, the last copy kept through a failed read;
// while no read has succeeded the check answers Unavailable rather than
// serve every certificate).
type heldCache = storeCache[map[string]heldNode]

// heldNode is what refuses a promoted node's older worker certificates:
// the NotBefore of the latest manager certificate it has taken into use,
// whether one it holds is not revoked by a demotion (it is a manager
// now), and the key its record says its latest certificate was issued
// for.
type heldNode struct {
	at     time.Time
	active bool
	keyFP  string
}

// heldManagerCerts reads, for each node that has taken a manager
// certificate into use, its heldNode. The node records read are those of
// nodes with a held record: the managers, and nodes demoted within a
// certificate's life.
func heldManagerCerts(ctx context.Context, st *store.Store) (map[string]heldNode, error) {
	objs, err := st.Table(managerCertsTable).List(ctx)
	if err != nil {
		return nil, err
	}
	m := map[string]heldNode{}
	for _, o := range objs {
		var r managerCertRecord
		if json.Unmarshal(o.Value, &r) != nil || !r.Held || r.Node == "" {
			continue
		}
		h := m[r.Node]
		if r.NotBefore.After(h.at) {
			h.at = r.NotBefore
		}
		h.active = h.active || !r.Demoted
		m[r.Node] = h
	}
	for id, h := range m {
		n, err := nodes.Get(ctx, st, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		h.keyFP = n.KeyFP
		m[id] = h
	}
	return m, nil
}

// heldSince is heldManagerCerts' entry for nodeID, from the cache.
func (d *Daemon) heldSince(nodeID string) (heldNode, bool, error) {
	m, loaded := d.held.get(heldRefresh, d.log, "the held manager certificates", func(ctx context.Context) (map[string]heldNode, error) {
		return heldManagerCerts(ctx, d.curStore())
	})
	if !loaded {
		return heldNode{}, false, errdefs.Unavailable("this manager could not read its promoted nodes' certificates yet: try again")
	}
	h, ok := m[nodeID]
	return h, ok, nil
}

// refuseWorkerCert is the dispatcher's check of a worker certificate
// (dispatchnet.ServerConfig.RefuseWorker), on every call made under one:
// a lookup in the cache.
func (d *Daemon) refuseWorkerCert(_ context.Context, nodeID string, leaf *x509.Certificate) error {
	h, ok, err := d.heldSince(nodeID)
	if err != nil || !ok {
		return err
	}
	return supersededWorkerCert(nodeID, leaf, h)
}

// supersededByPromotion is the join/CA service's check of a worker
// certificate. A request with a CSR reads the store itself rather than
// the cache: a promotion completed within the cache's second would
// otherwise buy the old certificate's holder a manager certificate (the
// promotion's answer again).
func (d *Daemon) supersededByPromotion(ctx context.Context, id pki.Identity, leaf *x509.Certificate, fresh bool) error {
	if id.Role != pki.RoleWorker {
		return nil
	}
	var h heldNode
	var ok bool
	if fresh {
		m, err := heldManagerCerts(ctx, d.store)
		if err != nil {
			return err
		}
		h, ok = m[id.NodeID]
	} else {
		var err error
		if h, ok, err = d.heldSince(id.NodeID); err != nil {
			return err
		}
	}
	if !ok {
		return nil
	}
	return supersededWorkerCert(id.NodeID, leaf, h)
}

// supersededWorkerCert refuses leaf, a worker certificate of nodeID,
// unless its key is the one the node's record holds: that is the node's
// current worker certificate (a demotion certifies a fresh key and
// records it), whatever the managers' clocks say. Any other is refused
// while the node is a manager under a held certificate, and after its
// demotion when it was issued before (or in the same second as: whole
// seconds) the latest manager certificate the node held. A worker
// certificate issued after that, under another key, is a promotion
// again asking (and asking again, its answer lost) under the worker
// certificate the demotion gave.
func supersededWorkerCert(nodeID string, leaf *x509.Certificate, h heldNode) error {
	if h.keyFP != "" && h.keyFP == keyFP(leaf) {
		return nil
	}
	if !h.active && leaf.NotBefore.UTC().Truncate(time.Second).After(h.at.UTC().Truncate(time.Second)) {
		return nil
	}
	return errdefs.Unauthorized("node %s's worker certificate (serial %s) was superseded by its promotion: the node holds a manager certificate since", nodeID, leaf.SerialNumber.Text(16))
}
