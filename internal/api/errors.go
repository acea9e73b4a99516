package api

import (
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
	}
	return http.StatusInternalServerError
}

// message renders the client-facing text. Internal errors are not shown in
// full: their chains may name files and keys that clients need not see.
func message(err error) string {
	var e *errdefs.Error
	if errors.As(err, &e) {
		if e.Control {
			return fmt.Sprintf("rpc error: code = %s desc = %s", grpcCode(err), e.Msg)
		}
		return e.Msg
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Sprintf("request body too large: the limit is %d bytes", mbe.Limit)
	}
	switch {
	case errors.Is(err, errdefs.ErrUnavailable):
		return "rpc error: code = Unavailable desc = the cluster store is unavailable, try again"
	case errors.Is(err, errdefs.ErrInternal):
		return "internal error: see the hushd log"
	}
	return err.Error()
}

type errorBody struct {
	Message string `json:"message"`
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := statusOf(err)
	if code >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	}
	writeJSON(w, code, errorBody{Message: message(err)})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
