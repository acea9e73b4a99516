package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// hushd's own API (not Docker's) lives under /hush/v1/. The hush CLI is its
// client.

// KeyInfo is GET /hush/v1/key.
type KeyInfo struct {
	KeyID    string
	Autolock bool
}

// KeyRotation is the answer of POST /hush/v1/key/rotate.
type KeyRotation struct {
	KeyID     string
	Rewrapped int
}

// KeyController is the master key as the API serves it. The Swarm
// controller implements it in hushd.
type KeyController interface {
	KeyInfo(ctx context.Context) (KeyInfo, error)
	RotateMasterKey(ctx context.Context) (KeyRotation, error)
}

// keyRoutes registers the key endpoints when the swarm controller serves
// them. Both answer 503 while the node is locked or has no cluster (the
// server's state check): a locked hushd opens nothing.
func (s *Server) keyRoutes() {
	kc, ok := s.Swarm.(KeyController)
	if !ok {
		return
	}
	s.mux.HandleFunc("GET /hush/v1/key", func(w http.ResponseWriter, r *http.Request) {
		if err := noOptions(r); err != nil {
			s.writeError(w, r, err)
			return
		}
		info, err := kc.KeyInfo(r.Context())
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, info)
	})
	s.mux.HandleFunc("POST /hush/v1/key/rotate", func(w http.ResponseWriter, r *http.Request) {
		if err := noOptions(r); err != nil {
			s.writeError(w, r, err)
			return
		}
		res, err := kc.RotateMasterKey(r.Context())
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
}

// noOptions refuses query parameters and body fields: these calls take
// none, and an option must never be accepted and ignored. An empty body
// or an empty JSON object is fine.
func noOptions(r *http.Request) error {
	for k := range r.URL.Query() {
		return errdefs.BadRequest("unknown query parameter %q: this call takes none", k)
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
	dec.DisallowUnknownFields()
	var body struct{}
	if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		return errdefs.BadRequest("invalid request body: %s (this call takes no options)", err.Error())
	}
	return nil
}
