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

// newMirrored keeps a copy of the stored value: the watch's buffers are
// not ours to hold.
func newMirrored(o store.Object) *mirrored {
	return &mirrored{id: o.ID, modRev: o.ModRev, sealed: bytes.Clone(o.Value)}
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
	pt, err := m.st.OpenValue(m.tbl.Key(e.id), e.sealed)
	if err != nil {
		return Object{}, err
	}
	// The opened record holds names, labels and sealed data, never
	// plaintext data; wiped all the same, as every opened value is.
	defer clear(pt)
	r, err := m.decode(store.Object{ID: e.id, Value: pt, ModRev: e.modRev})
	if err != nil {
		return Object{}, err
	}
	e.obj, e.sealed, e.decoded = toObject(&r, e.modRev), nil, true
	return e.obj, nil
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
