package objects

import (
	"bytes"
	"sync"

	"github.com/hush-secrets/hush/internal/store"
)

// mirrored is an object's entry in the store mirror: its stored (sealed)
// record, opened and decoded when first read rather than on every manager
// at every write. A create is one write that nothing reads back unless a
// list, an inspect or a task asks; opening and decoding each one as it
// arrived was most of what the mirror cost each manager per create.
type mirrored struct {
	id     string
	modRev int64

	mu sync.Mutex
	// decoded is its own flag, not sealed == nil: a stored value can be
	// empty (nil from the watch), and that must fail to open like any
	// other unreadable value rather than pass for a decoded zero object.
	decoded bool
	sealed  []byte // dropped once decoded
	obj     Object
}

// sealedUpTo is the largest stored record the mirror keeps sealed until its
// first read. A record holds every retained version's sealed data (up to
// maxKeep of them, each up to the kind's MaxSize), the decoded object only
// the current one's; kept sealed on every manager until a read that may
// never come (a follower's), large records would make each manager's heap
// hold the store's secrets and configs whole. Above it a record is opened
// and decoded as it arrives, as before entries were kept sealed; below it
// the sealed copy costs about what the decoded object would. Most secrets
// (a password, a key) are far below it, and so keep the saving.
const sealedUpTo = 8 << 10

// newMirrored makes the mirror's entry of a stored object. A small record
// is kept as stored, a copy (the watch's buffers are not ours to hold); a
// large one is decoded now, unless it does not open, which its first read
// then reports.
func (m *Manager) newMirrored(o store.Object) *mirrored {
	e := &mirrored{id: o.ID, modRev: o.ModRev}
	if len(o.Value) > sealedUpTo {
		if obj, err := m.openStored(e.id, e.modRev, o.Value); err == nil {
			e.obj, e.decoded = obj, true
			return e
		}
	}
	e.sealed = bytes.Clone(o.Value)
	return e
}

// object opens and decodes the entry once; a failure (no keys loaded, an
// undecodable record) is not kept, so a later read tries again. Callers
// then read the object from the store, which reports the error.
func (m *Manager) object(e *mirrored) (Object, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.decoded {
		return e.obj, nil
	}
	obj, err := m.openStored(e.id, e.modRev, e.sealed)
	if err != nil {
		return Object{}, err
	}
	e.obj, e.sealed, e.decoded = obj, nil, true
	return e.obj, nil
}

// openStored opens and decodes the stored value of object id at modRev.
func (m *Manager) openStored(id string, modRev int64, sealed []byte) (Object, error) {
	pt, err := m.st.OpenValue(m.tbl.Key(id), sealed)
	if err != nil {
		return Object{}, err
	}
	// The opened record holds names, labels and sealed data, never
	// plaintext data; wiped all the same, as every opened value is.
	defer clear(pt)
	r, err := m.decode(store.Object{ID: id, Value: pt, ModRev: modRev})
	if err != nil {
		return Object{}, err
	}
	return toObject(&r, modRev), nil
}

// mirroredObjects decodes the entries of a mirror read, outside the
// mirror's lock: the watch never waits for a reader's decoding.
func (m *Manager) mirroredObjects(es []*mirrored) ([]Object, error) {
	out := make([]Object, len(es))
	for i, e := range es {
		o, err := m.object(e)
		if err != nil {
			return nil, err
		}
		out[i] = o
	}
	return out, nil
}
