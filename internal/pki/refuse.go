package pki

import (
	"crypto/x509"
	"encoding/json"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
)

// Refusals is the list of certificates refused although they verify: those
// of removed nodes, and, once a root rotation completes, those issued
// before it began. The daemon persists it (MarshalJSON) with the cluster
// object so it survives restarts, and consults it on every handshake.
// Safe for concurrent use.
type Refusals struct {
	mu      sync.RWMutex
	removed map[string]time.Time
	// issuedBefore: a certificate issued (NotBefore + Backdate) before it
	// is refused.
	issuedBefore time.Time
}

type refusalsJSON struct {
	Removed      map[string]time.Time `json:"removed,omitempty"`
	IssuedBefore time.Time            `json:"issuedBefore,omitzero"`
}

// Remove refuses nodeID's certificates from now on. A removed node never
// comes back under the same ID (a rejoin gets a new one), so there is no
// undo.
func (r *Refusals) Remove(nodeID string, at time.Time) error {
	if !identity.Valid(nodeID) {
		return errdefs.InvalidArgument("invalid node ID")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.removed == nil {
		r.removed = map[string]time.Time{}
	}
	if _, ok := r.removed[nodeID]; !ok {
		r.removed[nodeID] = at
	}
	return nil
}

// RefuseIssuedBefore refuses every certificate issued before t; a root
// rotation sets it to the rotation's start when the rotation completes.
// It only moves forward.
func (r *Refusals) RefuseIssuedBefore(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t.After(r.issuedBefore) {
		r.issuedBefore = t
	}
}

// Check refuses leaf if its node was removed or it predates the cut-off.
// It has the shape of the Refuse hook of TLSParams.
func (r *Refusals) Check(nodeID string, leaf *x509.Certificate) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.removed[nodeID]; ok {
		return errdefs.Unauthorized("node %s was removed from the cluster", nodeID)
	}
	// Certificates record time to the second; a certificate of the cut-off's
	// own second is let in (one signed by a dropped root fails its chain).
	if leaf.NotBefore.Add(Backdate).Before(r.issuedBefore.Truncate(time.Second)) {
		return errdefs.Unauthorized("node %s's certificate was issued under a rotated root CA", nodeID)
	}
	return nil
}

// MarshalJSON encodes the list for the store (node IDs sorted by the
// encoder, so equal lists encode equally).
func (r *Refusals) MarshalJSON() ([]byte, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return json.Marshal(refusalsJSON{Removed: r.removed, IssuedBefore: r.issuedBefore})
}

// UnmarshalJSON replaces the list with a stored one, refusing IDs that
// are not node IDs (a corrupt record must not quietly refuse nothing).
func (r *Refusals) UnmarshalJSON(b []byte) error {
	var v refusalsJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	for id := range v.Removed {
		if !identity.Valid(id) {
			return errdefs.InvalidArgument("refusal list: invalid node ID")
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed, r.issuedBefore = v.Removed, v.IssuedBefore
	return nil
}
