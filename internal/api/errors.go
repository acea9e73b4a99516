package api

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// grpcCode names a category as swarmkit's gRPC status would, because dockerd
// passes control-API errors to clients as "rpc error: code = X desc = msg".
func grpcCode(err error) string {
	switch {
	case errors.Is(err, errdefs.ErrOutOfSequence):
		// Swarm's code for it; the status is still a conflict's.
		return "Unknown"
	case errors.Is(err, errdefs.ErrFailedPrecondition):
		return "FailedPrecondition"
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return "InvalidArgument"
	case errors.Is(err, errdefs.ErrNotFound):
		return "NotFound"
	case errors.Is(err, errdefs.ErrAlreadyExists):
		return "AlreadyExists"
	case errors.Is(err, errdefs.ErrConflict):
		return "FailedPrecondition"
	case errors.Is(err, errdefs.ErrUnavailable):
		return "Unavailable"
	case errors.Is(err, errdefs.ErrUnauthorized):
		return "Unauthenticated"
	case errors.Is(err, errdefs.ErrForbidden):
		return "PermissionDenied"
	}
	return "Unknown"
}

// statusOf is dockerd's mapping of error kinds to HTTP status codes.
func statusOf(err error) int {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, errdefs.ErrAlreadyExists), errors.Is(err, errdefs.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errdefs.ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, errdefs.ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, errdefs.ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, errdefs.ErrNoSpace):
		// Swarm has no store quota; 507 says "storage is full" without
		// suggesting that a retry alone will help (as 503 would).
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

// message renders the client-facing text. ok is false when err carries no
// text meant for clients (an uncategorised error, or an internal one not
// built by errdefs): its chain may name files, keys or wrapped causes, so
// the caller answers with an opaque text instead.
func message(err error) (msg string, ok bool) {
	var e *errdefs.Error
	if errors.As(err, &e) {
		if e.Control {
			return fmt.Sprintf("rpc error: code = %s desc = %s", grpcCode(err), e.Msg), true
		}
		return e.Msg, true
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Sprintf("request body too large: the limit is %d bytes", mbe.Limit), true
	}
	switch code := statusOf(err); {
	case errors.Is(err, errdefs.ErrNoLeader):
		// dockerd's own error, not a control-API one: no rpc prefix.
		return errdefs.NoLeaderMessage, true
	case code == http.StatusServiceUnavailable:
		return "rpc error: code = Unavailable desc = the cluster store is unavailable, try again", true
	case code >= 500:
		return "", false
	}
	// A categorised 4xx built from a sentinel (store.ErrNotFound...): its
	// text is hush's own.
	return err.Error(), true
}

// opaqueMessage is what a client sees for an error whose text stays in
// the log; the ID ties the two together.
func opaqueMessage(id string) string {
	return fmt.Sprintf("internal error (ID %s): see hushd's log", id)
}

// newErrorID returns a short random ID for one failed request.
func newErrorID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

type errorBody struct {
	Message string `json:"message"`
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := statusOf(err)
	msg, ok := message(err)
	switch {
	case !ok:
		id := newErrorID()
		msg = opaqueMessage(id)
		s.log.Error("request failed", "error_id", id, "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	case code >= 500:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	}
	writeJSON(w, code, errorBody{Message: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
