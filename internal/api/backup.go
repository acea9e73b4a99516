package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/hush-secrets/hush/internal/backup"
	"github.com/hush-secrets/hush/internal/errdefs"
)

// BackupSource writes an encrypted backup of the node to w, under a key
// derived from secret. It writes nothing to w when it fails before the
// backup has started.
type BackupSource interface {
	Backup(ctx context.Context, secret []byte, w io.Writer) error
}

// MaxBackupKeyBytes bounds the key file contents a client may send.
const MaxBackupKeyBytes = backup.MaxKeyBytes

// BackupErrorTrailer carries the error of a backup that failed after its
// first bytes were sent (the status is 200 by then). A client must treat a
// stream without its final chunk as failed whether or not this is set.
const BackupErrorTrailer = "Hush-Backup-Error"

// BackupRequest is the body of POST /hush/v1/backup.
type BackupRequest struct {
	// Key is the contents of the key file (base64 in JSON).
	Key []byte
}

func (s *Server) backupRoutes() {
	if s.Backup != nil {
		s.mux.HandleFunc("POST /hush/v1/backup", s.backup)
	}
}

func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	// base64 of the largest key, plus the JSON around it.
	dec := json.NewDecoder(io.LimitReader(r.Body, MaxBackupKeyBytes*4/3+1024))
	dec.DisallowUnknownFields()
	var req BackupRequest
	defer func() { clear(req.Key) }()
	if err := dec.Decode(&req); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			err = errdefs.BadRequest("got EOF while reading request body")
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			// Names the field: hush acts on none but Key.
			err = errdefs.BadRequest("%s: POST /hush/v1/backup takes only Key", err.Error())
		default:
			err = errdefs.BadRequest("invalid backup request (want {\"Key\": base64 of the key file, at most %d bytes})", MaxBackupKeyBytes)
		}
		s.writeError(w, r, err)
		return
	}
	if dec.More() {
		s.writeError(w, r, errdefs.BadRequest("invalid backup request: data after the JSON object"))
		return
	}
	switch {
	case len(req.Key) == 0:
		s.writeError(w, r, errdefs.BadRequest("Key is required: the contents of the backup key file"))
		return
	case len(req.Key) > MaxBackupKeyBytes:
		s.writeError(w, r, errdefs.BadRequest("Key is larger than %d bytes", MaxBackupKeyBytes))
		return
	}
	w.Header().Set("Trailer", BackupErrorTrailer)
	sw := &startWriter{w: w}
	err := s.Backup.Backup(r.Context(), req.Key, sw)
	if err == nil {
		return
	}
	if !sw.started {
		s.writeError(w, r, err)
		return
	}
	msg, ok := message(err)
	if !ok {
		id := newErrorID()
		msg = opaqueMessage(id)
		s.log.Error("backup failed while streaming", "error_id", id, "err", err)
	} else {
		s.log.Error("backup failed while streaming", "err", err)
	}
	w.Header().Set(BackupErrorTrailer, oneLine(msg))
}

// startWriter sends the 200 and its headers with the first bytes.
type startWriter struct {
	w       http.ResponseWriter
	started bool
}

func (s *startWriter) Write(p []byte) (int, error) {
	if !s.started {
		s.started = true
		s.w.Header().Set("Content-Type", "application/octet-stream")
		s.w.WriteHeader(http.StatusOK)
	}
	return s.w.Write(p)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
