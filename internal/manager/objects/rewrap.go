package objects

import (
	"encoding/json"
	"fmt"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
)

// RewrapData re-wraps the data keys of one stored record's values (a
// store.InnerFunc: the store seals the whole record, and each version's
// data inside it is sealed again under the master key). Every version
// still holding data is re-wrapped under its own AAD, and so is the
// pre-versions `sealed` field of a record written before versions. The
// record is edited as raw JSON, so fields this function does not know
// survive.
func (m *Manager) RewrapData(id string, plain []byte, rewrap func(keyring.Sealed, []byte) (keyring.Sealed, error)) ([]byte, int, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(plain, &raw); err != nil {
		return nil, 0, fmt.Errorf("decode %s %s: %w: %w", m.kind.Name, id, errdefs.ErrInternal, err)
	}
	var r struct {
		ID          string            `json:"id"`
		DataVersion int               `json:"dataVersion"`
		Sealed      keyring.Sealed    `json:"sealed"`
		Versions    []json.RawMessage `json:"versions"`
	}
	if err := json.Unmarshal(plain, &r); err != nil {
		return nil, 0, fmt.Errorf("decode %s %s: %w: %w", m.kind.Name, id, errdefs.ErrInternal, err)
	}
	n := 0
	if r.Sealed.KeyID != "" {
		ns, err := rewrap(r.Sealed, m.aad(r.ID, r.DataVersion))
		if err != nil {
			return nil, 0, fmt.Errorf("re-wrap %s %s: %w", m.kind.Name, id, err)
		}
		if ns.KeyID != r.Sealed.KeyID {
			if raw["sealed"], err = json.Marshal(ns); err != nil {
				return nil, 0, err
			}
			n++
		}
	}
	changed := false
	for i, vb := range r.Versions {
		var v map[string]json.RawMessage
		if err := json.Unmarshal(vb, &v); err != nil {
			return nil, 0, fmt.Errorf("decode %s %s version: %w: %w", m.kind.Name, id, errdefs.ErrInternal, err)
		}
		sb, ok := v["sealed"]
		if !ok || string(sb) == "null" {
			continue // destroyed: nothing to re-wrap
		}
		var num int
		var s keyring.Sealed
		if err := json.Unmarshal(v["n"], &num); err != nil {
			return nil, 0, fmt.Errorf("decode %s %s version number: %w: %w", m.kind.Name, id, errdefs.ErrInternal, err)
		}
		if err := json.Unmarshal(sb, &s); err != nil {
			return nil, 0, fmt.Errorf("decode %s %s version %d: %w: %w", m.kind.Name, id, num, errdefs.ErrInternal, err)
		}
		ns, err := rewrap(s, m.aad(r.ID, num))
		if err != nil {
			return nil, 0, fmt.Errorf("re-wrap %s %s version %d: %w", m.kind.Name, id, num, err)
		}
		if ns.KeyID == s.KeyID {
			continue
		}
		if v["sealed"], err = json.Marshal(ns); err != nil {
			return nil, 0, err
		}
		if r.Versions[i], err = json.Marshal(v); err != nil {
			return nil, 0, err
		}
		changed = true
		n++
	}
	if n == 0 {
		return nil, 0, nil
	}
	if changed {
		b, err := json.Marshal(r.Versions)
		if err != nil {
			return nil, 0, err
		}
		raw["versions"] = b
	}
	out, err := json.Marshal(raw)
	if err != nil {
		return nil, 0, err
	}
	return out, n, nil
}

// FingerprintTable is the store table of the fingerprint key, which is
// sealed by the keyring inside its record (see RewrapFingerprintKey).
const FingerprintTable = fpTable

// RewrapFingerprintKey re-wraps the fingerprint key's data key (a
// store.InnerFunc for FingerprintTable).
func RewrapFingerprintKey(id string, plain []byte, rewrap func(keyring.Sealed, []byte) (keyring.Sealed, error)) ([]byte, int, error) {
	if id != fpID {
		return nil, 0, nil
	}
	var s keyring.Sealed
	if err := json.Unmarshal(plain, &s); err != nil {
		return nil, 0, fmt.Errorf("decode fingerprint key: %w: %w", errdefs.ErrInternal, err)
	}
	ns, err := rewrap(s, []byte(fpAAD))
	if err != nil {
		return nil, 0, fmt.Errorf("re-wrap fingerprint key: %w", err)
	}
	if ns.KeyID == s.KeyID {
		return nil, 0, nil
	}
	out, err := json.Marshal(ns)
	if err != nil {
		return nil, 0, err
	}
	return out, 1, nil
}
