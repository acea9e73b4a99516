package daemon

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"sync"
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
// certificate issued after (the node demoted again) is served; the one
// held before the promotion stays refused.

// heldRefresh is how stale the cached held manager certificates may be:
// the dispatcher checks every call, so the table is read at most once a
// second (as the roots and the removed nodes are), one read at a time.
const heldRefresh = time.Second

// heldCache is this manager's copy of heldManagerCerts. A failed read
// keeps the last copy and is retried after heldRefresh, not per request.
type heldCache struct {
	mu   sync.Mutex
	read time.Time
	m    map[string]time.Time
}

// heldManagerCerts maps each node that has taken a manager certificate
// into use to the NotBefore of the latest such certificate recorded.
func heldManagerCerts(ctx context.Context, st *store.Store) (map[string]time.Time, error) {
	objs, err := st.Table(managerCertsTable).List(ctx)
	if err != nil {
		return nil, err
	}
	m := map[string]time.Time{}
	for _, o := range objs {
		var r managerCertRecord
		if json.Unmarshal(o.Value, &r) != nil || !r.Held || r.Node == "" {
			continue
		}
		if r.NotBefore.After(m[r.Node]) {
			m[r.Node] = r.NotBefore
		}
	}
	return m, nil
}

// heldSince is heldManagerCerts' time for nodeID, from the cache.
func (d *Daemon) heldSince(nodeID string) (time.Time, bool) {
	c := &d.held
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.read) > heldRefresh {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		m, err := heldManagerCerts(ctx, d.curStore())
		cancel()
		if err != nil {
			d.log.Warn("reading the held manager certificates; using the last list", "err", err)
		} else {
			c.m = m
		}
		c.read = time.Now()
	}
	at, ok := c.m[nodeID]
	return at, ok
}

// refuseWorkerCert is the dispatcher's check of a worker certificate
// (dispatchnet.ServerConfig.RefuseWorker), on every call made under one.
func (d *Daemon) refuseWorkerCert(ctx context.Context, nodeID string, leaf *x509.Certificate) error {
	held, ok := d.heldSince(nodeID)
	if !ok {
		return nil
	}
	return supersededWorkerCert(ctx, d.curStore(), nodeID, leaf, held)
}

// supersededByPromotion is the join/CA service's check of a worker
// certificate. A request with a CSR reads the table itself rather than
// the cache: a promotion completed within the cache's second would
// otherwise buy the old certificate's holder a manager certificate (the
// promotion's answer again).
func (d *Daemon) supersededByPromotion(ctx context.Context, id pki.Identity, leaf *x509.Certificate, fresh bool) error {
	if id.Role != pki.RoleWorker {
		return nil
	}
	var held time.Time
	var ok bool
	if fresh {
		m, err := heldManagerCerts(ctx, d.store)
		if err != nil {
			return err
		}
		held, ok = m[id.NodeID]
	} else {
		held, ok = d.heldSince(id.NodeID)
	}
	if !ok {
		return nil
	}
	return supersededWorkerCert(ctx, d.store, id.NodeID, leaf, held)
}

// supersededWorkerCert refuses leaf, a worker certificate of nodeID, when
// it was issued before held, the NotBefore of the latest manager
// certificate nodeID has taken into use. Both times are whole seconds: in
// the same second the node's current worker certificate (issued by its
// demotion) is the one whose key its record holds (keyFP), so the record
// is read for that case only.
func supersededWorkerCert(ctx context.Context, st *store.Store, nodeID string, leaf *x509.Certificate, held time.Time) error {
	issued := leaf.NotBefore.UTC().Truncate(time.Second)
	held = held.UTC().Truncate(time.Second)
	if issued.After(held) {
		return nil
	}
	if issued.Equal(held) {
		n, err := nodes.Get(ctx, st, nodeID)
		if errors.Is(err, store.ErrNotFound) {
			return errdefs.Unauthorized("node %s is not part of this swarm", nodeID)
		}
		if err != nil {
			return err
		}
		if n.KeyFP == keyFP(leaf) {
			return nil
		}
	}
	return errdefs.Unauthorized("node %s's worker certificate (serial %s) was superseded by its promotion: the node holds a manager certificate since", nodeID, leaf.SerialNumber.Text(16))
}
