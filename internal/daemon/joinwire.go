package daemon

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// The join/CA service's paths (on the manager's --listen-addr, TLS).
const (
	joinCAPath   = "/hush/join/v1/ca"
	joinPath     = "/hush/join/v1/join"
	maxJoinBody  = 64 << 10
	maxCABundle  = 1 << 20
	joinTimeout  = 30 * time.Second
	promoteLimit = 3 * time.Minute
)

// joinRequest is what a joining node sends, with its token as the only
// credential (it has no certificate yet).
type joinRequest struct {
	Token string `json:"token"`
	CSR   []byte `json:"csr"`
	// NodeID is the joining node's own ID (made at its first start); the
	// manager admits a recorded one only for the key it was last
	// certified for (recordJoiner).
	NodeID       string `json:"nodeID"`
	Hostname     string `json:"hostname"`
	Addr         string `json:"addr"`
	PeerURL      string `json:"peerURL"`
	Availability string `json:"availability"`
	// External is the joiner's external etcd (--external-etcd), nil for
	// an embedded store: a manager admits it only onto the same etcd and
	// prefix as its own (external.go).
	External *externalRef `json:"external,omitempty"`
}

// joinResponse carries the node's certificate, the cluster's CA bundle and
// the etcd members to start from, and the cluster's master key wrapped for
// the node's key (see wrapMasterKey): the key never crosses in clear, even
// inside the TLS channel.
type joinResponse struct {
	// Role is "worker" for a node admitted with the worker token (no key,
	// no membership: see admitWorker); empty for a manager.
	Role           string       `json:"role,omitempty"`
	Managers       []string     `json:"managers,omitempty"`
	ClusterID      string       `json:"clusterID"`
	CertPEM        []byte       `json:"certPEM"`
	CAPEM          []byte       `json:"caPEM"`
	MemberID       string       `json:"memberID"`
	InitialCluster []store.Peer `json:"initialCluster"`
	KeyID          string       `json:"keyID"`
	WrapPub        []byte       `json:"wrapPub"`
	WrappedKey     []byte       `json:"wrappedKey"`
	// External, for a manager of a cluster over an external etcd, says
	// where its store is instead of InitialCluster (external.go).
	External *externalRef `json:"external,omitempty"`
	// Dropped, to a manager a force-new-cluster dropped, says so
	// (forcenew.go); nothing else is answered then.
	Dropped string `json:"dropped,omitempty"`
	// Raft is the cluster spec's raft settings, whose timing a joining
	// manager's etcd starts with (an older manager sends none: the
	// default spec's, until the joiner's next start).
	Raft *swarm.RaftConfig `json:"raft,omitempty"`
}

// joinError is the service's error body; the joining node rebuilds the
// category so the CLI shows Swarm's text with the right status.
type joinError struct {
	Category string `json:"category"`
	Control  bool   `json:"control"`
	Message  string `json:"message"`
}

var joinCategories = map[string]error{
	"invalid": errdefs.ErrInvalidArgument, "precondition": errdefs.ErrFailedPrecondition,
	"unavailable": errdefs.ErrUnavailable, "noleader": errdefs.ErrNoLeader,
	"conflict": errdefs.ErrConflict, "exists": errdefs.ErrAlreadyExists,
	"unauthorized": errdefs.ErrUnauthorized, "notfound": errdefs.ErrNotFound,
}

// toJoinError keeps an error's category and client-facing text; anything
// uncategorised is an internal error whose detail stays in the manager's
// log.
func toJoinError(err error) (joinError, int) {
	var e *errdefs.Error
	order := []string{"precondition", "noleader", "invalid", "unavailable", "conflict", "exists", "unauthorized", "notfound"}
	for _, name := range order {
		if errors.Is(err, joinCategories[name]) {
			je := joinError{Category: name, Message: err.Error()}
			if errors.As(err, &e) {
				je.Message, je.Control = e.Msg, e.Control
			}
			return je, 400
		}
	}
	return joinError{Category: "internal", Message: "the manager failed to admit this node; see its log"}, 500
}

func (je joinError) err() error {
	cat, ok := joinCategories[je.Category]
	if !ok {
		cat = errdefs.ErrInternal
	}
	return &errdefs.Error{Category: cat, Msg: je.Message, Control: je.Control}
}

// wrapInfo binds a wrapped master key to the node it was made for.
func wrapInfo(nodeID string) string { return "hush/join/master-key/" + nodeID }

// wrapMasterKey seals mk for the holder of nodePub: ECDH between a fresh
// key and the node's certified key, HKDF-SHA256 to an AES-256-GCM key.
// Only the node's private key (never sent) opens it.
func wrapMasterKey(mk keyring.MasterKey, nodePub *ecdsa.PublicKey, nodeID string) (pub, sealed []byte, err error) {
	np, err := nodePub.ECDH()
	if err != nil {
		return nil, nil, err
	}
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	shared, err := eph.ECDH(np)
	if err != nil {
		return nil, nil, err
	}
	defer keyring.Wipe(shared)
	aead, err := wrapAEAD(shared, nodeID)
	if err != nil {
		return nil, nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, err
	}
	return eph.PublicKey().Bytes(), aead.Seal(nonce, nonce, mk.Key, []byte(wrapInfo(nodeID)+"/"+mk.ID)), nil
}

// unwrapMasterKey opens what wrapMasterKey sealed, with the node's key.
func unwrapMasterKey(key *ecdsa.PrivateKey, nodeID string, r *joinResponse) (keyring.MasterKey, error) {
	fail := func() (keyring.MasterKey, error) {
		return keyring.MasterKey{}, fmt.Errorf("the manager's wrapped master key does not open with this node's key: %w", errdefs.ErrInternal)
	}
	priv, err := key.ECDH()
	if err != nil {
		return fail()
	}
	pub, err := ecdh.P256().NewPublicKey(r.WrapPub)
	if err != nil {
		return fail()
	}
	shared, err := priv.ECDH(pub)
	if err != nil {
		return fail()
	}
	defer keyring.Wipe(shared)
	aead, err := wrapAEAD(shared, nodeID)
	if err != nil || len(r.WrappedKey) < aead.NonceSize() {
		return fail()
	}
	n := aead.NonceSize()
	k, err := aead.Open(nil, r.WrappedKey[:n], r.WrappedKey[n:], []byte(wrapInfo(nodeID)+"/"+r.KeyID))
	if err != nil {
		return fail()
	}
	mk := keyring.MasterKey{ID: r.KeyID, Key: k}
	if err := mk.Validate(); err != nil {
		mk.Destroy()
		return fail()
	}
	return mk, nil
}

func wrapAEAD(shared []byte, nodeID string) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, shared, nil, wrapInfo(nodeID), 32)
	if err != nil {
		return nil, err
	}
	defer keyring.Wipe(k)
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
