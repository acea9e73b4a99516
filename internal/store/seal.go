package store

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Keys gives the store the keyring it seals with: nil while the cluster is
// locked (or has none), when every read and write fails with ErrLocked.
// keyring.Holder is one.
type Keys interface {
	Keyring() *keyring.Keyring
}

// ErrLocked means the store has no keyring to seal or open values with.
var ErrLocked = fmt.Errorf("store: the cluster is locked: %w", errdefs.ErrUnavailable)

// ErrNotSealed means a stored value is not in sealed form: a record of an
// earlier hush that Migrate has not reached, or one written around the
// store. It is never opened as it is: unsealed bytes are unauthenticated.
var ErrNotSealed = fmt.Errorf("store: value is not sealed: %w", errdefs.ErrInternal)

// Every value is stored as sealMagic followed by the keyring's binary form
// of the sealed value. No value an earlier hush wrote begins with 0xff (they
// are JSON documents, IDs and names), which is what tells the two apart
// during a migration.
const sealMagic = "\xffhs"

// aadLabel scopes the store's associated data: each value is bound to its
// full key, so a sealed value copied to another key (another object, table
// or index entry) fails to open.
const aadLabel = "hush/store/v1\x00"

func valueAAD(key string) []byte {
	b := make([]byte, 0, len(aadLabel)+len(key))
	return append(append(b, aadLabel...), key...)
}

func isSealed(v []byte) bool { return bytes.HasPrefix(v, []byte(sealMagic)) }

func (s *Store) keyring() (*keyring.Keyring, error) {
	if s.detached != nil {
		// A Detached store has no keys: a write refuses before sealing.
		return nil, s.detached
	}
	kr := s.keys.Keyring()
	if kr == nil {
		return nil, ErrLocked
	}
	return kr, nil
}

// ErrRetiredKey means a value holds a value sealed under a master key the
// keyring no longer holds: its writer sealed it before a master-key
// rotation and commits after the rotation retired that key. Written, it
// could never be opened; the writer should read and seal again.
var ErrRetiredKey = fmt.Errorf("store: a value inside the record is sealed under a retired master key (a master-key rotation finished meanwhile): retry: %w", errdefs.ErrUnavailable)

// kidField is how a keyring.Sealed names its master key in JSON; a JSON
// string inside a value cannot hold it unescaped.
var kidField = []byte(`"kid":"`)

// checkInner refuses val if a sealed value inside it names a master key
// that kr held and has retired (Keyring.Forget).
func checkInner(kr *keyring.Keyring, val []byte) error {
	for rest := val; ; {
		i := bytes.Index(rest, kidField)
		if i < 0 {
			return nil
		}
		rest = rest[i+len(kidField):]
		j := bytes.IndexByte(rest, '"')
		if j < 0 {
			return nil
		}
		if kr.Retired(string(rest[:j])) {
			return ErrRetiredKey
		}
		rest = rest[j:]
	}
}

// seal returns the stored form of val under key. The caller holds s.gate
// for reading until the value is committed (see Exclusive).
func (s *Store) seal(key string, val []byte) (string, error) {
	kr, err := s.keyring()
	if err != nil {
		return "", err
	}
	b, err := kr.NewBatch()
	if err != nil {
		return "", fmt.Errorf("store: seal: %w: %w", errdefs.ErrInternal, err)
	}
	defer b.Close()
	v, err := sealIn(kr, b, key, val)
	// The etcd client's string API copies v anyway (clientv3.OpPut).
	return string(v), err
}

// sealIn seals val under key with b's data key (the values of one write
// share it; see keyring.Batch), in one allocation of its stored size.
func sealIn(kr *keyring.Keyring, b *keyring.Batch, key string, val []byte) ([]byte, error) {
	if err := checkInner(kr, val); err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(sealMagic)+keyring.BinarySizeFor(b.KeyID(), len(val)))
	out, err := b.AppendSeal(append(out, sealMagic...), val, valueAAD(key))
	if err != nil {
		return nil, fmt.Errorf("store: seal: %w: %w", errdefs.ErrInternal, err)
	}
	return out, nil
}

func encodeSealed(sv keyring.Sealed) (string, error) {
	b := make([]byte, 0, len(sealMagic)+sv.BinarySize())
	b, err := sv.AppendBinary(append(b, sealMagic...))
	if err != nil {
		return "", fmt.Errorf("store: %w: %w", errdefs.ErrInternal, err)
	}
	return string(b), nil
}

// envelope parses a stored value without opening it.
func envelope(val []byte) (keyring.Sealed, error) {
	if !isSealed(val) {
		return keyring.Sealed{}, ErrNotSealed
	}
	sv, err := keyring.ParseBinary(val[len(sealMagic):])
	if err != nil {
		return keyring.Sealed{}, fmt.Errorf("store: %w: %w", errdefs.ErrInternal, err)
	}
	return sv, nil
}

// open authenticates and decrypts the value stored under key. The error
// names the key, which holds IDs and index hashes only.
func (s *Store) open(key string, val []byte) ([]byte, error) {
	kr, err := s.keyring()
	if err != nil {
		return nil, err
	}
	return OpenWith(kr, key, val)
}

// OpenWith opens a value stored under key with kr, outside any store (a
// backup, a test proving what an old key opens).
func OpenWith(kr *keyring.Keyring, key string, val []byte) ([]byte, error) {
	sv, err := envelope(val)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	pt, err := kr.Open(sv, valueAAD(key))
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w: %w", key, errdefs.ErrInternal, err)
	}
	return pt, nil
}

// OpenValue opens a value read from etcd directly (a component that keeps
// its own watch). key is the full etcd key.
func (s *Store) OpenValue(key string, val []byte) ([]byte, error) { return s.open(key, val) }

// Exclusive runs fn while no write is between its seal and its commit: a
// master-key rotation checks that nothing needs the old key and retires it
// inside fn, so a write sealed before fn commits before the check sees the
// store, and one sealed after it is checked against the keyring without
// the old key (checkInner).
func (s *Store) Exclusive(fn func() error) error {
	s.gate.Lock()
	defer s.gate.Unlock()
	return fn()
}

// sealOps seals the value of every put in ops, so that callers' extra
// operations (reference markers) are sealed like the object itself. It
// replaces the puts in ops itself (callers build ops for the one write)
// and returns ops. It
// takes s.gate for reading: the caller calls release once the write is
// committed or abandoned (on error too).
func (s *Store) sealOps(ops []clientv3.Op) (_ []clientv3.Op, release func(), err error) {
	s.gate.RLock()
	release = s.gate.RUnlock
	defer func() {
		if err != nil {
			release()
			release = func() {}
		}
	}()
	kr, err := s.keyring()
	if err != nil {
		return nil, release, err
	}
	// One data key for the write's values (the record, its name-index
	// entry, its version, its markers), each with its own nonce, wrapping
	// and associated data: one key generation and AES/GCM set-up per write
	// instead of one per value.
	var b *keyring.Batch
	defer func() {
		if b != nil {
			b.Close()
		}
	}()
	out := ops
	for i, op := range ops {
		switch {
		case op.IsPut():
			if b == nil {
				if b, err = kr.NewBatch(); err != nil {
					return nil, release, fmt.Errorf("store: seal: %w: %w", errdefs.ErrInternal, err)
				}
			}
			k := string(op.KeyBytes())
			v, err := sealIn(kr, b, k, op.ValueBytes())
			if err != nil {
				return nil, release, err
			}
			// The op takes the sealed bytes as they are: clientv3.OpPut
			// would copy a value of up to a megabyte once more.
			put := clientv3.OpPut(k, "")
			put.WithValueBytes(v)
			out[i] = put
		case op.IsTxn():
			// Nested transactions would have to be rebuilt op by op; no
			// caller needs them, and an unsealed put must not slip through.
			return nil, release, fmt.Errorf("store: nested transactions are not supported: %w", errdefs.ErrInternal)
		default:
			out[i] = op
		}
	}
	return out, release, nil
}

// Put seals val under key (a full key under the store's root) and writes
// it unconditionally: for markers and tests, never for objects, which go
// through a Table.
func (s *Store) Put(ctx context.Context, key string, val []byte) error {
	if !strings.HasPrefix(key, root) {
		return fmt.Errorf("store: key outside the store's root: %w", errdefs.ErrInternal)
	}
	s.gate.RLock()
	defer s.gate.RUnlock()
	v, err := s.seal(key, val)
	if err != nil {
		return err
	}
	if _, err := s.cli.Put(ctx, key, v); err != nil {
		return wrapEtcd(err)
	}
	return nil
}

// The name index: names must be unique per table (case-insensitively) and
// found in one read, but the store's keys are in the clear. So the index
// key of a name is an HMAC-SHA256 of the table and the case-folded name,
// under an index key of its own. That key is stored sealed like any value
// (its data key wrapped by the master key), so a master-key rotation
// re-wraps it and the index never changes.
const (
	metaPrefix  = root + "meta/"
	indexKeyKey = metaPrefix + "index-key"
	indexKeyLen = 32
)

// indexCache keeps the opened index key for one keyring: a new keyring
// (a new cluster after a leave) means a new store content and index key.
type indexCache struct {
	mu sync.Mutex
	kr *keyring.Keyring
	h  *indexHasher
}

// indexHasher computes name-index entries under one index key, reusing
// HMAC states (keyed once, Reset between uses) instead of keying a new one
// per name. Safe for concurrent use.
//
// A request may still hold a hasher when the store replaces it (a new
// keyring): retire wipes the key under mu, so a hash never runs under a
// key wiped half-way, and a retired hasher refuses (hash's false) instead
// of keying new states with the zeroed bytes, which would put a name under
// an index entry no lookup or removal finds.
type indexHasher struct {
	mu   sync.RWMutex // held for reading by hash, for writing by retire
	key  []byte       // nil once retired
	pool sync.Pool    // of hash.Hash keyed with key
}

func newIndexHasher(key []byte) *indexHasher {
	h := &indexHasher{key: key}
	h.pool.New = func() any { return hmac.New(sha256.New, h.key) }
	return h
}

// hash is nameHash(key, kind, name); false if the hasher was retired.
func (h *indexHasher) hash(kind, name string) (string, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.key == nil {
		return "", false
	}
	m := h.pool.Get().(hash.Hash)
	m.Reset()
	var sum [sha256.Size]byte
	writeNameHash(m, kind, name)
	out := hex.EncodeToString(m.Sum(sum[:0]))
	h.pool.Put(m)
	return out, true
}

// retire wipes the key once no hash is running; later hashes refuse. The
// pooled states (keyed copies) are left to the garbage collector.
func (h *indexHasher) retire() {
	h.mu.Lock()
	defer h.mu.Unlock()
	keyring.Wipe(h.key)
	h.key = nil
	h.pool.New = nil
}

// errIndexKeyChanged means the index key was replaced while a request was
// computing a name's entry with it, several times over.
var errIndexKeyChanged = fmt.Errorf("store: the name index key changed during the request: retry: %w", errdefs.ErrUnavailable)

// nameEntry is the index entry of name in kind under the current index
// key, taking a fresh hasher if the one it got was retired meanwhile.
func (s *Store) nameEntry(ctx context.Context, kind, name string) (string, error) {
	for range 3 {
		h, err := s.indexKey(ctx)
		if err != nil {
			return "", err
		}
		if sum, ok := h.hash(kind, name); ok {
			return sum, nil
		}
	}
	return "", errIndexKeyChanged
}

func (s *Store) indexKey(ctx context.Context) (*indexHasher, error) {
	kr, err := s.keyring()
	if err != nil {
		return nil, err
	}
	c := &s.idx
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kr == kr && c.h != nil {
		return c.h, nil
	}
	key, err := s.loadIndexKey(ctx)
	if err != nil {
		return nil, err
	}
	if c.h != nil {
		c.h.mu.RLock()
		same := c.h.key != nil && subtle.ConstantTimeCompare(c.h.key, key) == 1
		c.h.mu.RUnlock()
		if same {
			// The same store under a new Keyring (an unlock): the hasher
			// and its keyed states stay.
			keyring.Wipe(key)
			c.kr = kr
			return c.h, nil
		}
		c.h.retire()
	}
	c.kr, c.h = kr, newIndexHasher(key)
	return c.h, nil
}

// loadIndexKey reads the index key, creating it if the store has none.
func (s *Store) loadIndexKey(ctx context.Context) ([]byte, error) {
	for range 3 {
		resp, err := s.cli.Get(ctx, indexKeyKey)
		if err != nil {
			return nil, wrapEtcd(err)
		}
		if len(resp.Kvs) == 1 {
			key, err := s.open(indexKeyKey, resp.Kvs[0].Value)
			if err != nil {
				return nil, err
			}
			if len(key) != indexKeyLen {
				keyring.Wipe(key)
				return nil, fmt.Errorf("store: index key has the wrong size: %w", errdefs.ErrInternal)
			}
			return key, nil
		}
		fresh := make([]byte, indexKeyLen)
		if _, err := rand.Read(fresh); err != nil {
			return nil, fmt.Errorf("store: index key: %w: %w", errdefs.ErrInternal, err)
		}
		s.gate.RLock()
		v, err := s.seal(indexKeyKey, fresh)
		keyring.Wipe(fresh)
		if err != nil {
			s.gate.RUnlock()
			return nil, err
		}
		// Two writers racing to create it: one wins, both read it back.
		_, err = s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(indexKeyKey), "=", 0)).
			Then(clientv3.OpPut(indexKeyKey, v)).Commit()
		s.gate.RUnlock()
		if err != nil {
			// A full store refuses it as it refuses any write: with the
			// quota's error, which tells the operator what to do.
			return nil, s.writeErr(err)
		}
	}
	return nil, fmt.Errorf("store: index key could not be created: %w", errdefs.ErrUnavailable)
}

// nameHash is the index entry of name in kind.
func nameHash(key []byte, kind, name string) string {
	m := hmac.New(sha256.New, key)
	writeNameHash(m, kind, name)
	return hex.EncodeToString(m.Sum(nil))
}

func writeNameHash(m hash.Hash, kind, name string) {
	io.WriteString(m, kind)
	m.Write([]byte{0})
	io.WriteString(m, strings.ToLower(name))
}
