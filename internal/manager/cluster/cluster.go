// Package cluster keeps the cluster object: its ID, spec (the settings
// `docker swarm init/update` manage), root CA, join tokens and, when
// autolock is on, the unlock key.
//
// Key material in the object is sealed by the keyring (the CA key, the
// unlock key); join tokens are stored as issued because Swarm shows them to
// managers on request, and they are compared in constant time.
package cluster

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

const (
	table = "cluster"
	key   = "default"
)

// Sealer is the keyring as the cluster object needs it.
type Sealer interface {
	Seal(plaintext, aad []byte) (keyring.Sealed, error)
	Open(s keyring.Sealed, aad []byte) ([]byte, error)
}

// Cluster is the stored cluster object.
type Cluster struct {
	ID         string           `json:"id"`
	CreatedAt  time.Time        `json:"created"`
	UpdatedAt  time.Time        `json:"updated"`
	Spec       swarm.Spec       `json:"spec"`
	JoinTokens swarm.JoinTokens `json:"joinTokens"`
	// CACert is the root CA certificate (PEM); its key is sealed.
	CACert string          `json:"caCert"`
	CAKey  keyring.Sealed  `json:"caKey"`
	Unlock *keyring.Sealed `json:"unlockKey,omitempty"`
	// UnlockKeyFetched says the recorded unlock key has reached an
	// operator (a manager answered GET /swarm/unlockkey with it): every
	// manager of the cluster may then lock its key files under it.
	UnlockKeyFetched bool `json:"unlockKeyFetched,omitempty"`
	// LastForcedRotation is the Spec.CAConfig.ForceRotate of the last
	// root CA rotation: a spec whose counter differs asks for another.
	LastForcedRotation uint64 `json:"lastForcedRotation,omitempty"`
	// Network is what init said of addresses and address pools.
	Network Network `json:"network"`
	// Version is the store revision of the last write (not stored).
	Version uint64 `json:"-"`
}

// DefaultSpec is the spec `docker swarm init` gives a new cluster.
func DefaultSpec() swarm.Spec {
	var s swarm.Spec
	s.Name = "default"
	s.Labels = map[string]string{}
	retention := int64(5)
	s.Orchestration.TaskHistoryRetentionLimit = &retention
	s.Raft.SnapshotInterval = 10000
	keep := uint64(0)
	s.Raft.KeepOldSnapshots = &keep
	s.Raft.LogEntriesForSlowFollowers = 500
	s.Raft.ElectionTick = 10
	s.Raft.HeartbeatTick = 1
	s.Dispatcher.HeartbeatPeriod = 5 * time.Second
	s.CAConfig.NodeCertExpiry = 90 * 24 * time.Hour
	return s
}

// Exists reports whether a cluster has been initialised in st.
func Exists(ctx context.Context, st *store.Store) (bool, error) {
	// Only the key's presence: this is asked before the cluster is unlocked.
	return st.Table(table).Exists(ctx, key)
}

// Init creates the cluster object with spec and no init-time settings.
func Init(ctx context.Context, st *store.Store, s Sealer, spec swarm.Spec) (Cluster, error) {
	return Create(ctx, st, s, Params{Spec: spec})
}

// ErrExists is Create finding a cluster record already there: nothing was
// written (Swarm's text).
var ErrExists = errdefs.Unavailable("This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.")

// Params are what a new cluster is made with.
type Params struct {
	// Spec is the validated spec (see MergeInitSpec and ValidateSpec).
	// With Spec.CAConfig.SigningCACert and SigningCAKey, the given CA is
	// the root CA.
	Spec swarm.Spec
	// SigningCAKey is the PEM key of Spec.CAConfig.SigningCACert, as bytes
	// the caller wipes; Spec.CAConfig.SigningCAKey is not read.
	SigningCAKey []byte
	Network      Network
}

// Create creates the cluster object: a fresh ID, a root CA (ECDSA P-256,
// 20 years, as Swarm's, unless p gives one), and join tokens bound to the
// CA's digest. The spec is stored without the signing certificate and
// key: the key is kept only sealed.
func Create(ctx context.Context, st *store.Store, s Sealer, p Params) (Cluster, error) {
	id, err := identity.NewID()
	if err != nil {
		return Cluster{}, err
	}
	now := time.Now().UTC()
	certPEM, keyDER, err := newRootCA(now)
	if err != nil {
		return Cluster{}, err
	}
	c := Cluster{ID: id, CreatedAt: now, UpdatedAt: now, Spec: p.Spec, Network: p.Network}
	err = c.installRoot(s, certPEM, keyDER)
	keyring.Wipe(keyDER)
	if err != nil {
		return Cluster{}, err
	}
	ca := p.Spec.CAConfig
	c.LastForcedRotation = ca.ForceRotate
	if ca.SigningCACert != "" || len(p.SigningCAKey) > 0 {
		if _, err := c.ApplyCAConfig(s, ca, p.SigningCAKey, now); err != nil {
			return Cluster{}, err
		}
	}
	c.Spec.CAConfig.SigningCACert, c.Spec.CAConfig.SigningCAKey = "", ""
	val, err := json.Marshal(&c)
	if err != nil {
		return Cluster{}, err
	}
	if _, err := st.Table(table).Create(ctx, key, "", val); err != nil {
		if errors.Is(err, store.ErrNameTaken) {
			return Cluster{}, ErrExists
		}
		return Cluster{}, err
	}
	return Get(ctx, st)
}

// Get reads the cluster object.
func Get(ctx context.Context, st *store.Store) (Cluster, error) {
	o, err := st.Table(table).Get(ctx, key)
	if err != nil {
		return Cluster{}, err
	}
	var c Cluster
	if err := json.Unmarshal(o.Value, &c); err != nil {
		return Cluster{}, fmt.Errorf("decode cluster: %w: %w", errdefs.ErrInternal, err)
	}
	c.Version = uint64(o.ModRev)
	return c, nil
}

// Put writes c if its Version is still current.
func Put(ctx context.Context, st *store.Store, c *Cluster) error {
	c.UpdatedAt = time.Now().UTC()
	// The signing key lives only sealed in CAKey (see ApplyCAConfig).
	c.Spec.CAConfig.SigningCACert, c.Spec.CAConfig.SigningCAKey = "", ""
	val, err := json.Marshal(c)
	if err != nil {
		return err
	}
	_, err = st.Table(table).Update(ctx, key, int64(c.Version), val)
	if errors.Is(err, store.ErrStale) {
		return errdefs.OutOfSequence()
	}
	return err
}

// Remove deletes the cluster object (swarm leave --force).
func Remove(ctx context.Context, st *store.Store) error {
	err := st.Table(table).Delete(ctx, key, "", 0, nil)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// SetUnlockKey seals and records the unlock key ("" clears it), not
// fetched yet.
func (c *Cluster) SetUnlockKey(s Sealer, unlockKey string) error {
	c.UnlockKeyFetched = false
	if unlockKey == "" {
		c.Unlock = nil
		return nil
	}
	sealed, err := s.Seal([]byte(unlockKey), []byte("hush/cluster/unlock-key/"+c.ID))
	if err != nil {
		return err
	}
	c.Unlock = &sealed
	return nil
}

// UnlockKey opens the recorded unlock key ("" when autolock is off).
func (c *Cluster) UnlockKey(s Sealer) (string, error) {
	if c.Unlock == nil {
		return "", nil
	}
	b, err := s.Open(*c.Unlock, []byte("hush/cluster/unlock-key/"+c.ID))
	if err != nil {
		return "", fmt.Errorf("open unlock key: %w: %w", errdefs.ErrInternal, err)
	}
	defer keyring.Wipe(b) // the string is a copy; strings cannot be wiped
	return string(b), nil
}

// RotateToken replaces the worker or manager join token.
func (c *Cluster) RotateToken(role string) error {
	t, err := pki.NewToken([]byte(c.CACert))
	if err != nil {
		return err
	}
	if role == "manager" {
		c.JoinTokens.Manager = t
	} else {
		c.JoinTokens.Worker = t
	}
	return nil
}

// ValidateJoinToken returns the role a token admits ("worker", "manager"),
// comparing in constant time so a token cannot be guessed byte by byte.
func (c *Cluster) ValidateJoinToken(token string) (string, bool) {
	w := subtle.ConstantTimeCompare([]byte(token), []byte(c.JoinTokens.Worker)) == 1
	m := subtle.ConstantTimeCompare([]byte(token), []byte(c.JoinTokens.Manager)) == 1
	switch {
	case m:
		return "manager", true
	case w:
		return "worker", true
	}
	return "", false
}

// Info is the wire form of the cluster. As in Swarm, the spec's signing
// CA certificate and key are never shown (hush does not store them in the
// spec; they are cleared here too, whatever an older record holds).
func (c *Cluster) Info() swarm.ClusterInfo {
	ci := swarm.ClusterInfo{
		ID:              c.ID,
		Meta:            swarm.Meta{Version: swarm.Version{Index: c.Version}, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt},
		Spec:            c.Spec,
		DefaultAddrPool: c.Network.DefaultAddrPool,
		SubnetSize:      c.Network.SubnetSize,
		DataPathPort:    c.Network.DataPathPort,
	}
	ci.Spec.CAConfig.SigningCACert, ci.Spec.CAConfig.SigningCAKey = "", ""
	if ci.SubnetSize == 0 {
		ci.SubnetSize = DefaultSubnetSize
	}
	if ci.DataPathPort == 0 {
		ci.DataPathPort = DefaultDataPathPort
	}
	if blk, _ := pem.Decode([]byte(c.CACert)); blk != nil {
		if cert, err := x509.ParseCertificate(blk.Bytes); err == nil {
			ci.TLSInfo = swarm.TLSInfo{TrustRoot: c.CACert, CertIssuerSubject: cert.RawSubject, CertIssuerPublicKey: cert.RawSubjectPublicKeyInfo}
		}
	}
	return ci
}

// newRootCA makes a root CA like Swarm's (see pki.NewRootCA).
func newRootCA(now time.Time) (string, []byte, error) {
	certPEM, keyDER, err := pki.NewRootCA(now)
	return string(certPEM), keyDER, err
}
