package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/moby/moby/api/types/swarm"
)

// SwarmUpdateFlags are the rotations POST /swarm/update may ask for, and
// the spec's CA signing key, taken out of the spec so that it stays bytes
// that can be wiped (see swarmbody.go); the callee must not keep it.
type SwarmUpdateFlags struct {
	RotateWorkerToken, RotateManagerToken, RotateManagerUnlockKey bool
	SigningCAKey                                                  []byte
}

// SwarmController is the node's cluster lifecycle: init, lock state,
// autolock and leave.
type SwarmController interface {
	State() swarm.LocalNodeState
	// CheckServing returns the error to answer swarm calls with while the
	// node is locked or not in a cluster, or nil.
	CheckServing() error
	// InitWithKey is `docker swarm init`; caKey is the PEM key of
	// req.Spec.CAConfig.SigningCACert (req.Spec's own key field is empty),
	// which the callee must not keep.
	InitWithKey(ctx context.Context, req swarm.InitRequest, caKey []byte) (string, error)
	Inspect(ctx context.Context) (swarm.Swarm, error)
	Update(ctx context.Context, version uint64, spec swarm.Spec, f SwarmUpdateFlags) error
	UnlockKey(ctx context.Context) (string, error)
	// UnlockKeyDelivered is told that a client received key from
	// UnlockKey in full, so that a new unlock key is relied on only once
	// it can have reached an operator.
	UnlockKeyDelivered(ctx context.Context, key string) error
	// Warnings are lines for /info's Warnings (e.g. an unlock key that was
	// never fetched).
	Warnings() []string
	Unlock(ctx context.Context, key string) error
	// Join is `docker swarm join`.
	Join(ctx context.Context, req swarm.JoinRequest) error
	Leave(ctx context.Context, force bool) error
}

func (s *Server) swarmRoutes() {
	s.mux.HandleFunc("GET /swarm", s.swarmInspect)
	s.mux.HandleFunc("POST /swarm/init", s.swarmInit)
	s.mux.HandleFunc("POST /swarm/join", s.swarmJoin)
	s.mux.HandleFunc("POST /swarm/leave", s.swarmLeave)
	s.mux.HandleFunc("POST /swarm/update", s.swarmUpdate)
	s.mux.HandleFunc("GET /swarm/unlockkey", s.swarmUnlockKey)
	s.mux.HandleFunc("POST /swarm/unlock", s.swarmUnlock)
}

// lifecycleExempt lists the calls that work whatever the node's state: the
// ones that describe it and the ones that change it.
func lifecycleExempt(path string) bool {
	switch path {
	case "/_ping", "/version", "/info", "/swarm", "/swarm/init", "/swarm/join", "/swarm/leave",
		"/swarm/update", "/swarm/unlockkey", "/swarm/unlock",
		// Engine events flow in any state; hush's carry no secret data.
		"/events":
		return true
	}
	// Local networks work in any state; the network handlers check the
	// state themselves for swarm-scoped ones.
	return path == "/networks" || strings.HasPrefix(path, "/networks/")
}

func (s *Server) swarmInspect(w http.ResponseWriter, r *http.Request) {
	sw, err := s.Swarm.Inspect(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sw)
}

func (s *Server) swarmInit(w http.ResponseWriter, r *http.Request) {
	req, key, err := decodeInit(r)
	if (err != nil || !req.ForceNewCluster) && s.state() == swarm.LocalNodeStatePending {
		// A manager waiting for its quorum takes only the recovery:
		// init --force-new-cluster.
		if serr := s.Swarm.CheckServing(); serr != nil {
			keyring.Wipe(key)
			s.writeError(w, r, serr)
			return
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	id, err := s.Swarm.InitWithKey(r.Context(), req, key)
	keyring.Wipe(key)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, id)
}

func (s *Server) swarmJoin(w http.ResponseWriter, r *http.Request) {
	var req swarm.JoinRequest
	if err := decodeBody(r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.Swarm.Join(r.Context(), req); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) swarmLeave(w http.ResponseWriter, r *http.Request) {
	force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
	if err := s.Swarm.Leave(r.Context(), force); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) swarmUpdate(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	version, err := strconv.ParseUint(q.Get("version"), 10, 64)
	if err != nil {
		s.writeError(w, r, errdefs.BadRequest("invalid swarm version '%s': %v", q.Get("version"), err))
		return
	}
	spec, key, err := decodeSpec(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer keyring.Wipe(key)
	flag := func(k string) bool { b, _ := strconv.ParseBool(q.Get(k)); return b }
	f := SwarmUpdateFlags{
		RotateWorkerToken:      flag("rotateWorkerToken"),
		RotateManagerToken:     flag("rotateManagerToken"),
		RotateManagerUnlockKey: flag("rotateManagerUnlockKey"),
		SigningCAKey:           key,
	}
	if err := s.Swarm.Update(r.Context(), version, spec, f); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) swarmUnlockKey(w http.ResponseWriter, r *http.Request) {
	key, err := s.Swarm.UnlockKey(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// The key is shown to a manager's operator on request, as in Swarm;
	// it never goes to a log (the access log has no bodies).
	body, err := json.Marshal(swarm.UnlockKeyResponse{UnlockKey: key})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	body = append(body, '\n')
	defer keyring.Wipe(body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(body); err != nil {
		return
	}
	// Only an answer that left in full counts as the key reaching its
	// operator (a new key is relied on only from then).
	if err := http.NewResponseController(w).Flush(); err != nil {
		return
	}
	if err := s.Swarm.UnlockKeyDelivered(r.Context(), key); err != nil {
		s.log.Warn("recording that the unlock key was fetched", "err", err)
	}
}

func (s *Server) swarmUnlock(w http.ResponseWriter, r *http.Request) {
	var req swarm.UnlockRequest
	if err := decodeBody(r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.Swarm.Unlock(r.Context(), strings.TrimSpace(req.UnlockKey)); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// nodeTLSInfo is the node's view of the root CA: the root it trusts,
// which also issued its node certificate (a lone node's root rotation
// reissues it at once), as `docker swarm ca --rotate` waits to see on
// every node after a rotation.
func (s *Server) nodeTLSInfo(ctx context.Context) swarm.TLSInfo {
	if s.Cluster == nil {
		return swarm.TLSInfo{}
	}
	c, err := s.Cluster.Cluster(ctx)
	if err != nil {
		return swarm.TLSInfo{}
	}
	return c.Info().TLSInfo
}
