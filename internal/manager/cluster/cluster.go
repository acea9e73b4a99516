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
	// RotationOwed says that autolock was enabled and its key fetched,
	// and the master-key rotation across the managers that must follow
	// (so that earlier copies of a plaintext master.key open nothing) has
	// not ended since: any manager that activates starts it (a crash of
	// the manager that recorded the fetch would otherwise lose it).
	RotationOwed bool `json:"rotationOwed,omitempty"`
	// LastForcedRotation is the Spec.CAConfig.ForceRotate of the last
	// root CA rotation: a spec whose counter differs asks for another.
	LastForcedRotation uint64 `json:"lastForcedRotation,omitempty"`
	// Network is what init said of addresses and address pools.
	Network Network `json:"network"`
	// Version is the version the API shows (Version.Index), against which
	// a client's `swarm update` is checked. Only writes a client asked for
	// move it (Put); hush's own writes to the record (PutInternal, and a
	// master-key rotation's re-wrap, which edits the record as raw JSON
	// and so keeps Shown) leave it, or an inspect-then-update racing them
	// would be refused for a change the client cannot see.
	Version uint64 `json:"-"`
	// Shown is Version as stored; 0 in a record an earlier hushd wrote,
	// whose version is then its store revision.
	Shown uint64 `json:"version,omitempty"`
	// rev is the store revision read: the write's compare-and-swap.
	rev int64
}

// Revision is the store revision of the record as read: it moves with
// every write, internal ones too (a watcher of the record's fields, as
// the key files' follower, compares it, not Version).
func (c *Cluster) Revision() int64 { return c.rev }

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
	// A stored version from the start (at most the create's revision, so
	// below every later one): the record's re-wraps then never move it.
	rev, err := st.Revision(ctx)
	if err != nil {
		return Cluster{}, err
	}
	c.Shown = uint64(rev) + 1
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
	c.rev = o.ModRev
	c.Version = c.Shown
	if c.Version == 0 {
		c.Version = uint64(o.ModRev)
	}
	return c, nil
}

// Put writes c, a change a client asked for, if the record has not been
// written since c was read (else "update out of sequence": the caller
// reads it again and, if its Version is still the one its client gave,
// applies the change again). The new Version is above every earlier one:
// each was at most the store revision of the write that set it.
func Put(ctx context.Context, st *store.Store, c *Cluster) error {
	c.UpdatedAt = time.Now().UTC()
	c.Shown = max(uint64(c.rev), c.Version) + 1
	return put(ctx, st, c)
}

// PutInternal writes c, changed by hush itself in fields no client sees
// (bookkeeping such as UnlockKeyFetched, a scrub), keeping its Version,
// if the record has not been written since c was read.
func PutInternal(ctx context.Context, st *store.Store, c *Cluster) error {
	c.Shown = c.Version
	return put(ctx, st, c)
}

// PinVersion stores the version of a record an earlier hushd wrote (its
// store revision), so that a later internal write, as a re-wrap, which
// keeps the stored one, does not move it.
func PinVersion(ctx context.Context, st *store.Store) error {
	for attempt := 0; ; attempt++ {
		c, err := Get(ctx, st)
		if err != nil || c.Shown != 0 {
			return err
		}
		err = PutInternal(ctx, st, &c)
		if errors.Is(err, errdefs.ErrOutOfSequence) && attempt < 10 {
			continue // written since: read again
		}
		return err
	}
}

func put(ctx context.Context, st *store.Store, c *Cluster) error {
	// The signing key lives only sealed in CAKey (see ApplyCAConfig).
	c.Spec.CAConfig.SigningCACert, c.Spec.CAConfig.SigningCAKey = "", ""
	val, err := json.Marshal(c)
	if err != nil {
		return err
	}
	rev, err := st.Table(table).Update(ctx, key, c.rev, val)
	if errors.Is(err, store.ErrStale) {
		return errdefs.OutOfSequence()
	}
	if err != nil {
		return err
	}
	c.rev, c.Version = rev, c.Shown
	return nil
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
