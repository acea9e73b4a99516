package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/moby/moby/api/types/swarm"
)

// objectRoutes registers create/list/inspect/update/remove for a blob kind.
func (s *Server) objectRoutes(base string, m *objects.Manager) {
	h := newObjectHandlers(s, m)
	s.mux.HandleFunc("POST "+base+"/create", h.create)
	s.mux.HandleFunc("GET "+base, h.list)
	s.mux.HandleFunc("GET "+base+"/{id}", h.inspect)
	s.mux.HandleFunc("POST "+base+"/{id}/update", h.update)
	s.mux.HandleFunc("DELETE "+base+"/{id}", h.remove)
}

func newObjectHandlers(s *Server, m *objects.Manager) objectHandlers {
	h := objectHandlers{s: s, m: m}
	if m == nil || !m.Kind().Readable {
		// Only kinds whose wire form carries no data are cached: a cached
		// config would keep its decrypted data in the heap for as long
		// as the entry lives, beyond the request (and the object).
		h.cache = &wireCache{m: map[string]wireEntry{}}
	}
	return h
}

type objectHandlers struct {
	s *Server
	m *objects.Manager
	// cache is nil for kinds whose wire form holds their data (configs).
	cache *wireCache
}

// wireCache keeps each object's encoded JSON by ID and version: a list of
// 10,000 secrets is then a concatenation, not 10,000 encodings. Versions
// change on every write, so an entry is never served stale.
type wireCache struct {
	mu sync.Mutex
	m  map[string]wireEntry
}

type wireEntry struct {
	version uint64
	b       []byte
}

func (c *wireCache) get(id string, version uint64) ([]byte, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	return e.b, ok && e.version == version
}

func (c *wireCache) put(id string, version uint64, b []byte) {
	c.mu.Lock()
	c.m[id] = wireEntry{version: version, b: b}
	c.mu.Unlock()
}

// retain drops entries of objects that no longer exist.
func (c *wireCache) retain(ids map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.m {
		if !ids[id] {
			delete(c.m, id)
		}
	}
}

// decodeSpec reads a SecretSpec or ConfigSpec, by kind, so decoding errors
// name the same Go types dockerd's do.
func (h objectHandlers) decodeSpec(r *http.Request) (objects.Spec, error) {
	if h.m.Kind() == objects.Config {
		var cs swarm.ConfigSpec
		err := decodeBody(r, &cs)
		return objects.Spec{Name: cs.Name, Labels: cs.Labels, Data: cs.Data, Templating: fromWireDriver(cs.Templating)}, err
	}
	var ss swarm.SecretSpec
	err := decodeBody(r, &ss)
	return objects.Spec{
		Name: ss.Name, Labels: ss.Labels, Data: ss.Data,
		Driver: fromWireDriver(ss.Driver), Templating: fromWireDriver(ss.Templating),
	}, err
}

func fromWireDriver(d *swarm.Driver) *objects.Driver {
	if d == nil {
		return nil
	}
	return &objects.Driver{Name: d.Name, Options: d.Options}
}

func toWireDriver(d *objects.Driver) *swarm.Driver {
	if d == nil {
		return nil
	}
	return &swarm.Driver{Name: d.Name, Options: d.Options}
}

// encode is the JSON of o's wire form. For a config it holds the decrypted
// data: the caller wipes it once written.
func (h objectHandlers) encode(o *objects.Object) ([]byte, error) {
	meta := swarm.Meta{Version: swarm.Version{Index: o.Version}, CreatedAt: o.CreatedAt, UpdatedAt: o.UpdatedAt}
	ann := swarm.Annotations{Name: o.Name, Labels: o.Labels}
	if h.m.Kind() == objects.Config {
		// Configs are not secret: Swarm returns their data, and clients
		// (`docker config inspect`) read it back. Stored sealed all the
		// same, and the plaintext lives only while the answer is built.
		data, _ := h.m.Reveal(o)
		defer keyring.Wipe(data)
		return json.Marshal(swarm.Config{ID: o.ID, Meta: meta, Spec: swarm.ConfigSpec{Annotations: ann, Data: data, Templating: toWireDriver(o.Templating)}})
	}
	return json.Marshal(swarm.Secret{ID: o.ID, Meta: meta, Spec: swarm.SecretSpec{Annotations: ann, Driver: toWireDriver(o.Driver), Templating: toWireDriver(o.Templating)}})
}

func (h objectHandlers) create(w http.ResponseWriter, r *http.Request) {
	spec, err := h.decodeSpec(r)
	// The decoded value is wiped once sealed: the plaintext should live no
	// longer than the request that carried it.
	defer keyring.Wipe(spec.Data)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	id, err := h.m.Create(r.Context(), spec)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, swarm.SecretCreateResponse{ID: id})
}

func (h objectHandlers) list(w http.ResponseWriter, r *http.Request) {
	args, err := parseFilters(r.URL.Query().Get("filters"), "id", "name", "names", "label")
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	objs, err := h.m.List(r.Context(), objects.Filters{
		IDPrefixes:   args.values("id"),
		NamePrefixes: args.values("name"),
		Names:        args.values("names"),
		Labels:       args.labels(),
	})
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	var buf bytes.Buffer
	if h.cache == nil {
		// Config data is in the answer: wiped once it has been written
		// (buf's earlier, smaller arrays go to the collector unwiped, a
		// limit docs/DESIGN.md names).
		defer func() { keyring.Wipe(buf.Bytes()) }()
	}
	buf.WriteByte('[')
	for i := range objs {
		o := &objs[i]
		b, ok := h.cache.get(o.ID, o.Version)
		if !ok {
			if b, err = h.encode(o); err != nil {
				h.s.writeError(w, r, err)
				return
			}
			if h.cache != nil {
				h.cache.put(o.ID, o.Version, b)
			}
		}
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(b)
		if h.cache == nil {
			keyring.Wipe(b)
		}
	}
	buf.WriteString("]\n")
	if len(args) == 0 && h.cache != nil {
		seen := make(map[string]bool, len(objs))
		for i := range objs {
			seen[objs[i].ID] = true
		}
		h.cache.retain(seen)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}

func (h objectHandlers) inspect(w http.ResponseWriter, r *http.Request) {
	o, err := h.m.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	b, err := h.encode(&o)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	defer keyring.Wipe(b)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(b, '\n'))
}

func (h objectHandlers) update(w http.ResponseWriter, r *http.Request) {
	version, err := strconv.ParseUint(r.URL.Query().Get("version"), 10, 64)
	if err != nil {
		h.s.writeError(w, r, errdefs.BadRequest("invalid %s version", h.m.Kind().Name))
		return
	}
	spec, err := h.decodeSpec(r)
	defer keyring.Wipe(spec.Data)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	if err := h.m.Update(r.Context(), r.PathValue("id"), version, spec); err != nil {
		h.s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (h objectHandlers) remove(w http.ResponseWriter, r *http.Request) {
	if err := h.m.Remove(r.Context(), r.PathValue("id")); err != nil {
		h.s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
