package api

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/networks"
	"github.com/moby/moby/api/types/network"
)

// networkRoutes serves swarm-scoped networks from m and hands the engine's
// own (local) networks to the fallback: a create for an overlay network (or
// scope "swarm") is hush's, any other create is the engine's; lists merge
// both; inspect, remove, connect and disconnect go to whichever owns the
// name.
func (s *Server) networkRoutes(m *networks.Manager) {
	h := &networkHandlers{s: s, m: m}
	s.mux.HandleFunc("POST /networks/create", h.create)
	s.mux.HandleFunc("GET /networks", h.list)
	s.mux.HandleFunc("GET /networks/{id}", h.inspect)
	s.mux.HandleFunc("DELETE /networks/{id}", h.remove)
	s.mux.HandleFunc("POST /networks/{id}/connect", h.connect)
	s.mux.HandleFunc("POST /networks/{id}/disconnect", h.connect)
	s.mux.HandleFunc("POST /networks/prune", h.prune)
}

type networkHandlers struct {
	s *Server
	m *networks.Manager
}

// createRequest is the body of POST /networks/create. CheckDuplicate was
// dropped from the API types in 1.44 (the check became unconditional) but
// clients of older versions still send it.
type createRequest struct {
	network.CreateRequest
	CheckDuplicate *bool `json:",omitempty"`
}

func (h *networkHandlers) create(w http.ResponseWriter, r *http.Request) {
	// Small and read once: kept so that a local network's request reaches
	// the engine exactly as the client sent it.
	body, err := io.ReadAll(r.Body)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	var req createRequest
	if len(body) == 0 || json.Unmarshal(body, &req) != nil || !networks.Owns(&req.CreateRequest) {
		// Not (recognisably) a swarm network: the engine answers, with its
		// own texts for malformed requests too.
		h.s.passThrough(w, r, body)
		return
	}
	if err := h.s.swarmServing(); err != nil {
		h.s.writeError(w, r, err)
		return
	}
	if err := networks.Validate(&req.CreateRequest); err != nil {
		h.s.writeError(w, r, err)
		return
	}
	if req.CheckDuplicate == nil || *req.CheckDuplicate {
		if h.engineHasName(r, req.Name) {
			h.s.writeError(w, r, &errdefs.Error{Category: errdefs.ErrAlreadyExists, Msg: "network with name " + req.Name + " already exists"})
			return
		}
	}
	id, err := h.m.Create(r.Context(), req.CreateRequest)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, network.CreateResponse{ID: id})
}

// engineHasName reports whether the engine has a network of its own named
// exactly name.
func (h *networkHandlers) engineHasName(r *http.Request, name string) bool {
	f, _ := json.Marshal(map[string]map[string]bool{"name": {"^" + regexp.QuoteMeta(name) + "$": true}})
	items, ok := h.s.engineNetworks(r, url.Values{"filters": {string(f)}}.Encode())
	if !ok {
		return false
	}
	for _, it := range items {
		var n struct{ Name string }
		if json.Unmarshal(it, &n) == nil && n.Name == name {
			return true
		}
	}
	return false
}

func (h *networkHandlers) list(w http.ResponseWriter, r *http.Request) {
	args, err := parseFilters(r.URL.Query().Get("filters"), networks.FilterKeys...)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	if h.s.swarmServing() != nil {
		// Locked or not in a swarm: only the engine's networks, as
		// dockerd lists them outside swarm mode.
		h.s.passThrough(w, r, nil)
		return
	}
	own, err := h.m.List(r.Context(), networks.Filters(args))
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	// The engine's answer is relayed item by item, untouched, so clients
	// see exactly the fields their API version has. Without an engine the
	// list still has hush's networks.
	items, _ := h.s.engineNetworks(r, r.URL.RawQuery)
	out := make([]json.RawMessage, 0, len(items)+len(own))
	out = append(out, items...)
	for i := range own {
		b, err := json.Marshal(&own[i])
		if err != nil {
			h.s.writeError(w, r, err)
			return
		}
		out = append(out, b)
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *networkHandlers) inspect(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("id")
	n, err := h.find(w, r, ref, http.MethodGet)
	if n == nil && err == nil {
		return // the engine answered
	}
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	out, err := h.m.Inspect(r.Context(), n.ID)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *networkHandlers) remove(w http.ResponseWriter, r *http.Request) {
	n, err := h.find(w, r, r.PathValue("id"), http.MethodDelete)
	if n == nil && err == nil {
		return
	}
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	if err := h.m.Remove(r.Context(), n.ID); err != nil {
		h.s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// connect attaches (or detaches) a standalone container to the engine
// network that realises a hush network; engine networks pass through.
func (h *networkHandlers) connect(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("id")
	n, err := h.find(w, r, ref, r.Method)
	if n == nil && err == nil {
		return
	}
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	eid, err := h.m.Realise(r.Context(), n.ID)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = strings.Replace(r.URL.Path, "/networks/"+ref+"/", "/networks/"+eid+"/", 1)
	r2.URL.RawPath = ""
	r2.RequestURI = h.s.versionPrefix(r) + r2.URL.Path
	h.s.passThrough(w, r2, nil)
}

// prune passes through with the engine networks that realise hush networks
// excluded: those are hush's to remove.
func (h *networkHandlers) prune(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := map[string]map[string]bool{}
	if raw := q.Get("filters"); raw != "" {
		args, err := parseFilters(raw, "until", "label", "label!")
		if err != nil {
			h.s.writeError(w, r, err)
			return
		}
		f = args
	}
	if f["label!"] == nil {
		f["label!"] = map[string]bool{}
	}
	f["label!"][networks.LabelNetworkID] = true
	b, _ := json.Marshal(f)
	q.Set("filters", string(b))
	r2 := r.Clone(r.Context())
	r2.URL.RawQuery = q.Encode()
	r2.RequestURI = h.s.versionPrefix(r) + r.URL.Path + "?" + r2.URL.RawQuery
	h.s.passThrough(w, r2, nil)
}

// find resolves ref to a hush network. Exact IDs and names are hush's
// first; then the engine's own networks (to which the request is passed,
// and find returns nil, nil); then unique prefixes of hush IDs. With
// ?scope=swarm the engine is not asked: its networks are local.
func (h *networkHandlers) find(w http.ResponseWriter, r *http.Request, ref, method string) (*network.Network, error) {
	if err := h.s.swarmServing(); err != nil {
		// Outside swarm mode every network is the engine's.
		if h.s.Fallback == nil || r.URL.Query().Get("scope") == networks.ScopeSwarm {
			return nil, err
		}
		h.s.passThrough(w, r, nil)
		return nil, nil
	}
	n, ok, err := h.m.LookupExact(r.Context(), ref)
	if err != nil || ok {
		return n, err
	}
	if r.URL.Query().Get("scope") != networks.ScopeSwarm && h.s.Fallback != nil {
		probe := h.s.engineGet(r, "/networks/"+ref, "")
		switch {
		case probe.code == http.StatusOK && !hiddenEngineNetwork(probe.body.Bytes()):
			if method == http.MethodGet && r.URL.RawQuery == "" {
				probe.relay(w)
			} else {
				h.s.passThrough(w, r, nil)
			}
			return nil, nil
		case probe.code == http.StatusOK:
			var en struct {
				Labels map[string]string
			}
			_ = json.Unmarshal(probe.body.Bytes(), &en)
			// An engine network realising a hush network (as a task
			// container's inspect names it) stands for that network, but
			// is hush's alone to remove.
			if id := en.Labels[networks.LabelNetworkID]; id != "" {
				if method == http.MethodDelete {
					return nil, &errdefs.Error{Category: errdefs.ErrForbidden,
						Msg: "network " + ref + " realises hush network " + id + " on the engine; remove that network instead"}
				}
				if n, err := h.m.Resolve(r.Context(), id); err == nil {
					return n, nil
				}
			}
		case probe.code != http.StatusNotFound && probe.code != 0:
			if _, err := h.m.Resolve(r.Context(), ref); err != nil {
				probe.relay(w) // the engine's error (unreachable, ambiguous...)
				return nil, nil
			}
		}
	}
	return h.m.Resolve(r.Context(), ref)
}

// swarmServing reports why swarm-scoped networks cannot be served now
// (locked, or not in a swarm), if they cannot.
func (s *Server) swarmServing() error {
	if s.Swarm == nil {
		return nil
	}
	return s.Swarm.CheckServing()
}

// hiddenEngineNetwork reports whether an engine network (raw JSON) is left
// out of hush's answers: one that realises a hush network (hush shows the
// network itself), or a swarm-scoped one of the engine's own swarm mode,
// which hush's tasks cannot use.
func hiddenEngineNetwork(raw []byte) bool {
	var n struct {
		Scope  string
		Labels map[string]string
	}
	if json.Unmarshal(raw, &n) != nil {
		return false
	}
	return n.Labels[networks.LabelNetworkID] != "" || n.Scope == networks.ScopeSwarm
}

// engineNetworks fetches the engine's network list for rawQuery, minus the
// hidden networks. ok is false when there is no engine or it did not
// answer 200.
func (s *Server) engineNetworks(r *http.Request, rawQuery string) ([]json.RawMessage, bool) {
	if s.Fallback == nil {
		return nil, false
	}
	res := s.engineGet(r, "/networks", rawQuery)
	if res.code != http.StatusOK {
		s.log.Warn("engine network list failed; listing hush's networks only", "status", res.code)
		return nil, false
	}
	var items []json.RawMessage
	if err := json.Unmarshal(res.body.Bytes(), &items); err != nil {
		s.log.Warn("engine network list undecodable", "err", err)
		return nil, false
	}
	out := items[:0]
	for _, it := range items {
		if !hiddenEngineNetwork(it) {
			out = append(out, it)
		}
	}
	return out, true
}

// versionPrefix is the "/vX.Y" the client's path began with ("" if none):
// ServeHTTP strips it before routing, but the engine should see it.
func (s *Server) versionPrefix(r *http.Request) string {
	u, err := url.ParseRequestURI(r.RequestURI)
	if err != nil {
		return ""
	}
	if v, rest := splitVersion(u.Path); v != "" && rest == r.URL.Path {
		return "/v" + v
	}
	return ""
}

// engineGet sends a GET for path (unversioned) through the fallback, with
// the client's API version and headers, and buffers the answer.
func (s *Server) engineGet(r *http.Request, path, rawQuery string) *bufferedResponse {
	req := r.Clone(r.Context())
	req.Method = http.MethodGet
	req.URL.Path = s.versionPrefix(r) + path
	req.URL.RawPath = ""
	req.URL.RawQuery = rawQuery
	req.RequestURI = req.URL.RequestURI()
	req.Body = http.NoBody
	req.ContentLength = 0
	req.TransferEncoding = nil
	req.Header = r.Header.Clone()
	req.Header.Del("Content-Type")
	req.Header.Del("Content-Length")
	res := &bufferedResponse{header: http.Header{}}
	s.Fallback.ServeHTTP(res, req)
	return res
}

// passThrough hands r to the fallback with the client's original
// (versioned) path; body, when not nil, replaces the consumed request body.
func (s *Server) passThrough(w http.ResponseWriter, r *http.Request, body []byte) {
	if s.Fallback == nil {
		writeJSON(w, http.StatusNotFound, errorBody{Message: "page not found"})
		return
	}
	r2 := r.Clone(r.Context())
	if u, err := url.ParseRequestURI(r.RequestURI); err == nil {
		r2.URL.Path, r2.URL.RawPath = u.Path, u.RawPath
	}
	if body != nil {
		r2.Body = io.NopCloser(bytes.NewReader(body))
		r2.ContentLength = int64(len(body))
		r2.TransferEncoding = nil
	}
	s.Fallback.ServeHTTP(w, r2)
}

// bufferedResponse collects an answer of the fallback in memory.
type bufferedResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(code int) {
	if b.code == 0 {
		b.code = code
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.code == 0 {
		b.code = http.StatusOK
	}
	return b.body.Write(p)
}

// relay sends the buffered answer to w.
func (b *bufferedResponse) relay(w http.ResponseWriter) {
	for k, vv := range b.header {
		w.Header()[k] = vv
	}
	w.Header().Del("Content-Length")
	code := b.code
	if code == 0 {
		code = http.StatusBadGateway
	}
	w.WriteHeader(code)
	_, _ = w.Write(b.body.Bytes())
}
