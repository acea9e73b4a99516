package cluster

import (
	"encoding/json"
	"fmt"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
)

// Table is the store table of the cluster object.
const Table = table

// RewrapInner re-wraps the keys sealed inside the stored cluster object (the
// CA key, the unlock key): a store.InnerFunc. The object is edited as raw
// JSON, so fields this function does not know survive.
func RewrapInner(id string, plain []byte, rewrap func(keyring.Sealed, []byte) (keyring.Sealed, error)) ([]byte, int, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(plain, &raw); err != nil {
		return nil, 0, fmt.Errorf("decode cluster: %w: %w", errdefs.ErrInternal, err)
	}
	var clusterID string
	if err := json.Unmarshal(raw["id"], &clusterID); err != nil {
		return nil, 0, fmt.Errorf("decode cluster: %w: %w", errdefs.ErrInternal, err)
	}
	n := 0
	for field, aad := range map[string]string{
		"caKey":     "hush/cluster/ca-key",
		"unlockKey": "hush/cluster/unlock-key/" + clusterID,
	} {
		v, ok := raw[field]
		if !ok || string(v) == "null" {
			continue
		}
		var s keyring.Sealed
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, 0, fmt.Errorf("decode cluster %s: %w: %w", field, errdefs.ErrInternal, err)
		}
		ns, err := rewrap(s, []byte(aad))
		if err != nil {
			return nil, 0, fmt.Errorf("re-wrap cluster %s: %w", field, err)
		}
		if ns.KeyID == s.KeyID {
			continue
		}
		if raw[field], err = json.Marshal(ns); err != nil {
			return nil, 0, err
		}
		n++
	}
	if n == 0 {
		return nil, 0, nil
	}
	out, err := json.Marshal(raw)
	return out, n, err
}
