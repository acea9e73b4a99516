package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/pkg/authconfig"
	"github.com/moby/moby/api/types/swarm"
)

// MaxRegistryAuth bounds an X-Registry-Auth value (base64url JSON: a user
// and password, or an identity token, and a server address).
const MaxRegistryAuth = 16 << 10

// Sealer is the part of the keyring that keeps registry credentials.
type Sealer interface {
	Seal(plaintext, aad []byte) (keyring.Sealed, error)
	Open(s keyring.Sealed, aad []byte) ([]byte, error)
}

// UseSealer lets services keep the registry credentials clients send
// (X-Registry-Auth); without one, a create or update that sends them is
// refused.
func (m *Manager) UseSealer(s Sealer) { m.seal = s }

// CreateOptions are what a service create carries besides its spec.
type CreateOptions struct {
	// RegistryAuth is the X-Registry-Auth header's value: kept sealed with
	// the service for the pulls of its tasks' images, never returned. The
	// caller wipes it.
	RegistryAuth []byte
}

// checkRegistryAuth refuses an X-Registry-Auth value the engine could not
// use, by the header's name, and never with any of its content. (Swarm
// stores any value and its worker pulls without credentials it cannot
// decode; hush says so at once.) dockerd's texts for its own header and
// query checks carry no rpc prefix, and neither do these.
func checkRegistryAuth(b []byte) error {
	if len(b) > MaxRegistryAuth {
		return errdefs.BadRequest("invalid X-Registry-Auth header: longer than %d bytes", MaxRegistryAuth)
	}
	if _, err := authconfig.Decode(string(b)); err != nil {
		return errdefs.BadRequest("invalid X-Registry-Auth header: must be base64url-encoded JSON registry credentials")
	}
	return nil
}

// authAAD binds sealed credentials to their service, so that a value copied
// onto another service fails to open. The spec and previous-spec slots
// share it: a rollback swaps them.
func authAAD(serviceID string) []byte {
	return fmt.Appendf(nil, "hush/services/%s/registry-auth", serviceID)
}

func (m *Manager) sealAuth(serviceID string, auth []byte) (*keyring.Sealed, error) {
	if len(auth) == 0 {
		return nil, nil
	}
	if err := checkRegistryAuth(auth); err != nil {
		return nil, err
	}
	if m.seal == nil {
		return nil, errdefs.BadRequest("X-Registry-Auth: registry credentials are not supported by this hushd")
	}
	s, err := m.seal.Seal(auth, authAAD(serviceID))
	if err != nil {
		return nil, fmt.Errorf("seal registry credentials: %w: %w", errdefs.ErrInternal, err)
	}
	return &s, nil
}

// nextAuth picks the credentials of an updated spec as Swarm does: the
// ones sent with the update; else, as registryAuthFrom says, the current
// spec's ("spec", the default) or the previous spec's ("previous-spec"); a
// rollback restores the previous spec's with the spec.
func (m *Manager) nextAuth(cur *model.Service, opt UpdateOptions) (*keyring.Sealed, error) {
	switch opt.RegistryAuthFrom {
	case "", swarm.RegistryAuthFromSpec, swarm.RegistryAuthFromPreviousSpec:
	default:
		return nil, errdefs.BadRequest("invalid registryAuthFrom '%s'", opt.RegistryAuthFrom)
	}
	if opt.Rollback {
		return cur.PreviousPullAuth, nil
	}
	if len(opt.RegistryAuth) > 0 {
		return m.sealAuth(cur.ID, opt.RegistryAuth)
	}
	if opt.RegistryAuthFrom == swarm.RegistryAuthFromPreviousSpec {
		if cur.PreviousSpec == nil {
			return nil, errdefs.BadRequest("service does not have a previous spec")
		}
		return cur.PreviousPullAuth, nil
	}
	return cur.PullAuth, nil
}

// RegistryAuth returns the X-Registry-Auth value of the service with exact
// ID id, or nil when it has none, for the agent's pull of its image. The
// caller wipes it.
func (m *Manager) RegistryAuth(ctx context.Context, id string) ([]byte, error) {
	o, err := m.svcs.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errdefs.NotFound("service %s not found", id)
	}
	if err != nil {
		return nil, err
	}
	svc, err := decodeService(o)
	if err != nil {
		return nil, err
	}
	if svc.PullAuth == nil {
		return nil, nil
	}
	if m.seal == nil {
		return nil, fmt.Errorf("registry credentials of service %s: no keyring: %w", id, errdefs.ErrUnavailable)
	}
	b, err := m.seal.Open(*svc.PullAuth, authAAD(svc.ID))
	if err != nil {
		return nil, fmt.Errorf("open registry credentials of service %s: %w: %w", id, errdefs.ErrInternal, err)
	}
	return b, nil
}

// RewrapAuth re-wraps the registry credentials sealed inside one stored
// service record (a store.InnerFunc, for master-key rotation). The record
// is edited as raw JSON, so fields this function does not know survive.
func RewrapAuth(id string, plain []byte, rewrap func(keyring.Sealed, []byte) (keyring.Sealed, error)) ([]byte, int, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(plain, &raw); err != nil {
		return nil, 0, fmt.Errorf("decode service %s: %w: %w", id, errdefs.ErrInternal, err)
	}
	n := 0
	for _, field := range []string{"pullAuth", "previousPullAuth"} {
		b, ok := raw[field]
		if !ok || string(b) == "null" {
			continue
		}
		var s keyring.Sealed
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, 0, fmt.Errorf("decode service %s %s: %w: %w", id, field, errdefs.ErrInternal, err)
		}
		ns, err := rewrap(s, authAAD(id))
		if err != nil {
			return nil, 0, fmt.Errorf("re-wrap service %s %s: %w", id, field, err)
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
	if err != nil {
		return nil, 0, err
	}
	return out, n, nil
}
