package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/manager/standalone"
	"github.com/moby/moby/api/types/swarm"
)

// RotateRequest is the body of POST /hush/v1/{secrets,configs}/{id}/rotate.
type RotateRequest struct {
	Data []byte
}

// RollbackRequest is the body of POST /hush/v1/…/{id}/rollback. To 0 means
// the newest version before the current one.
type RollbackRequest struct {
	To int
}

// RotateResponse answers rotate and rollback: the current version after
// the call and whether the call made it (unchanged data makes none).
type RotateResponse struct {
	DataVersion int
	Changed     bool
}

// Holder is a task or a standalone container that holds a version.
type Holder struct {
	// Kind is "container" for a standalone container ("" for a task).
	Kind string `json:",omitempty"`
	// ContainerName names a standalone container.
	ContainerName string `json:",omitempty"`
	Task          string `json:",omitempty"`
	TaskName      string `json:",omitempty"`
	Service       string `json:",omitempty"`
	ContainerID   string `json:",omitempty"`
	// State and DesiredState are the task's, so a client can tell when a
	// rollout is done (`hush secret rotate --wait`).
	State        swarm.TaskState `json:",omitempty"`
	DesiredState swarm.TaskState `json:",omitempty"`
	// DeliveryError and DeliveryAttempts say that rotations keep failing
	// to reach this container (its version stays older until one does).
	DeliveryError    string `json:",omitempty"`
	DeliveryAttempts int    `json:",omitempty"`
}

// DeliveryFailures tells which containers a rotation keeps failing to
// reach (the standalone manager implements it on ContainerGrants).
type DeliveryFailures interface {
	DeliveryFailure(containerID string) (standalone.DeliveryFailure, bool)
}

// ServiceRollout is a service that mounts the object, with the state of
// its rollout ("" when it never had one).
type ServiceRollout struct {
	ID, Name      string
	UpdateState   swarm.UpdateState `json:",omitempty"`
	UpdateMessage string            `json:",omitempty"`
}

// VersionEntry is one version in a VersionsResponse.
type VersionEntry struct {
	Version     int
	CreatedAt   time.Time
	Fingerprint string
	Current     bool
	Destroyed   bool
	HeldBy      []Holder
}

// VersionsResponse answers GET /hush/v1/…/{id}/versions.
type VersionsResponse struct {
	ID          string
	Name        string
	Version     swarm.Version
	DataVersion int
	Versions    []VersionEntry
	Services    []ServiceRollout
}

func (s *Server) rotationRoutes(kind string, m *objects.Manager) {
	if m == nil {
		return
	}
	h := rotationHandlers{s: s, m: m}
	base := "/hush/v1/" + kind + "/{id}"
	s.mux.HandleFunc("POST "+base+"/rotate", h.rotate)
	s.mux.HandleFunc("POST "+base+"/rollback", h.rollback)
	s.mux.HandleFunc("GET "+base+"/versions", h.versions)
	s.mux.HandleFunc("DELETE "+base+"/versions/{n}", h.destroy)
}

type rotationHandlers struct {
	s *Server
	m *objects.Manager
}

// expectedVersion reads the optional ?version= (the object's Version.Index
// the client saw): a stale one is "update out of sequence".
func expectedVersion(r *http.Request) (uint64, error) {
	v := r.URL.Query().Get("version")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return 0, errdefs.BadRequest("invalid version %q: want the object's Version.Index", v)
	}
	return n, nil
}

// decodeStrict reads one JSON object of at most limit bytes into v, naming
// any field hush does not act on.
func decodeStrict(r *http.Request, limit int64, path string, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return errdefs.BadRequest("got EOF while reading request body")
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return errdefs.BadRequest("%s: %s does not take it", err.Error(), path)
		}
		return errdefs.BadRequest("invalid request body for %s", path)
	}
	if dec.More() {
		return errdefs.BadRequest("invalid request body for %s: data after the JSON object", path)
	}
	return nil
}

func (h rotationHandlers) rotate(w http.ResponseWriter, r *http.Request) {
	rev, err := expectedVersion(r)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	var req RotateRequest
	defer func() { keyring.Wipe(req.Data) }()
	if err := decodeStrict(r, maxBodyBytes, "rotate", &req); err != nil {
		h.s.writeError(w, r, err)
		return
	}
	n, changed, err := h.m.Rotate(r.Context(), r.PathValue("id"), rev, req.Data)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, RotateResponse{DataVersion: n, Changed: changed})
}

func (h rotationHandlers) rollback(w http.ResponseWriter, r *http.Request) {
	rev, err := expectedVersion(r)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	var req RollbackRequest
	if err := decodeStrict(r, 4096, "rollback", &req); err != nil {
		h.s.writeError(w, r, err)
		return
	}
	if req.To < 0 {
		h.s.writeError(w, r, errdefs.BadRequest("To must be a version number (0: the previous version)"))
		return
	}
	n, changed, err := h.m.Rollback(r.Context(), r.PathValue("id"), rev, req.To)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, RotateResponse{DataVersion: n, Changed: changed})
}

func (h rotationHandlers) destroy(w http.ResponseWriter, r *http.Request) {
	rev, err := expectedVersion(r)
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || n < 1 {
		h.s.writeError(w, r, errdefs.BadRequest("invalid version %q", r.PathValue("n")))
		return
	}
	if err := h.m.Destroy(r.Context(), r.PathValue("id"), rev, n); err != nil {
		h.s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h rotationHandlers) versions(w http.ResponseWriter, r *http.Request) {
	o, vs, err := h.m.Versions(r.Context(), r.PathValue("id"))
	if err != nil {
		h.s.writeError(w, r, err)
		return
	}
	// Name the holders: task name, service and container.
	holders := map[string]Holder{}
	services := []ServiceRollout{}
	if h.s.Services != nil {
		svcs, tasks, err := h.s.Services.Snapshot(r.Context())
		if err != nil {
			h.s.writeError(w, r, err)
			return
		}
		for _, svc := range svcs {
			if mounts(&svc.Spec, h.m.Kind(), o.ID) {
				ro := ServiceRollout{ID: svc.ID, Name: svc.Spec.Name}
				if svc.UpdateStatus != nil {
					ro.UpdateState, ro.UpdateMessage = svc.UpdateStatus.State, svc.UpdateStatus.Message
				}
				services = append(services, ro)
			}
		}
		{
			for _, t := range tasks {
				hd := Holder{Task: t.ID, TaskName: t.Name(), Service: t.ServiceName, State: t.Status.State, DesiredState: t.DesiredState}
				if t.Status.ContainerStatus != nil {
					hd.ContainerID = t.Status.ContainerStatus.ContainerID
				}
				holders[t.ID] = hd
			}
		}
	}
	resp := VersionsResponse{ID: o.ID, Name: o.Name, Version: swarm.Version{Index: o.Version}, DataVersion: o.DataVersion, Services: services}
	for _, v := range vs {
		e := VersionEntry{Version: v.Version, CreatedAt: v.Created, Fingerprint: v.Fingerprint, Current: v.Current, Destroyed: v.Destroyed, HeldBy: []Holder{}}
		for _, id := range v.HeldBy {
			if cid, name, ok := objects.ParseContainerHolder(id); ok {
				hd := Holder{Kind: "container", ContainerID: cid, ContainerName: name}
				if df, ok := h.s.Containers.(DeliveryFailures); ok && !v.Current {
					if f, failing := df.DeliveryFailure(cid); failing {
						hd.DeliveryError, hd.DeliveryAttempts = f.Err, f.Attempts
					}
				}
				e.HeldBy = append(e.HeldBy, hd)
				continue
			}
			hd, ok := holders[id]
			if !ok {
				hd = Holder{Task: id}
			}
			e.HeldBy = append(e.HeldBy, hd)
		}
		resp.Versions = append(resp.Versions, e)
	}
	writeJSON(w, http.StatusOK, resp)
}

// mounts reports whether a service spec references object id of kind.
func mounts(spec *swarm.ServiceSpec, kind objects.Kind, id string) bool {
	cs := spec.TaskTemplate.ContainerSpec
	if cs == nil {
		return false
	}
	if kind == objects.Secret {
		for _, r := range cs.Secrets {
			if r != nil && r.SecretID == id {
				return true
			}
		}
		return false
	}
	for _, r := range cs.Configs {
		if r != nil && r.ConfigID == id {
			return true
		}
	}
	return false
}
