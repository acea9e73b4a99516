package api

import (
	"net/http"
	"strconv"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/moby/moby/api/types/swarm"
)

// objectRoutes registers create/list/inspect/update/remove for a blob kind.
func (s *Server) objectRoutes(base string, m *objects.Manager) {
	h := objectHandlers{s: s, m: m}
	s.mux.HandleFunc("POST "+base+"/create", h.create)
	s.mux.HandleFunc("GET "+base, h.list)
	s.mux.HandleFunc("GET "+base+"/{id}", h.inspect)
	s.mux.HandleFunc("POST "+base+"/{id}/update", h.update)
	s.mux.HandleFunc("DELETE "+base+"/{id}", h.remove)
}

type objectHandlers struct {
	s *Server
	m *objects.Manager
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

func (h objectHandlers) toWire(o *objects.Object) any {
	meta := swarm.Meta{Version: swarm.Version{Index: o.Version}, CreatedAt: o.CreatedAt, UpdatedAt: o.UpdatedAt}
	ann := swarm.Annotations{Name: o.Name, Labels: o.Labels}
	if h.m.Kind() == objects.Config {
		// Configs are not secret: Swarm returns their data, and clients
		// (`docker config inspect`) read it back. Stored sealed all the same.
		data, _ := h.m.Reveal(o)
		return swarm.Config{ID: o.ID, Meta: meta, Spec: swarm.ConfigSpec{Annotations: ann, Data: data, Templating: toWireDriver(o.Templating)}}
	}
	return swarm.Secret{ID: o.ID, Meta: meta, Spec: swarm.SecretSpec{Annotations: ann, Driver: toWireDriver(o.Driver), Templating: toWireDriver(o.Templating)}}
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
	out := make([]any, 0, len(objs))
	for i := range objs {
		out = append(out, h.toWire(&objs[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (h objectHandlers) inspect(w http.ResponseWriter, r *http.Request) {
	o, err := h.m.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, h.toWire(&o))
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
