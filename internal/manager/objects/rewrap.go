package objects

import (
	"encoding/json"
	"fmt"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
)

// RewrapData re-wraps the data key of one stored record's data (a
// store.InnerFunc: the store seals the whole record, and the data inside it
// is sealed again under the master key). The record is edited as raw JSON,
// so fields this function does not know survive.
func (m *Manager) RewrapData(id string, plain []byte, rewrap func(keyring.Sealed, []byte) (keyring.Sealed, error)) ([]byte, int, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(plain, &raw); err != nil {
		return nil, 0, fmt.Errorf("decode %s %s: %w: %w", m.kind.Name, id, errdefs.ErrInternal, err)
	}
	var r struct {
		ID          string         `json:"id"`
		DataVersion int            `json:"dataVersion"`
		Sealed      keyring.Sealed `json:"sealed"`
	}
	if err := json.Unmarshal(plain, &r); err != nil {
		return nil, 0, fmt.Errorf("decode %s %s: %w: %w", m.kind.Name, id, errdefs.ErrInternal, err)
	}
	ns, err := rewrap(r.Sealed, m.aad(r.ID, r.DataVersion))
	if err != nil {
		return nil, 0, fmt.Errorf("re-wrap %s %s: %w", m.kind.Name, id, err)
	}
	if ns.KeyID == r.Sealed.KeyID {
		return nil, 0, nil
	}
	b, err := json.Marshal(ns)
	if err != nil {
		return nil, 0, err
	}
	raw["sealed"] = b
	out, err := json.Marshal(raw)
	if err != nil {
		return nil, 0, err
	}
	return out, 1, nil
}
