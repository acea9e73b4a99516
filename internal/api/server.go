package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/networks"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/moby/moby/api/types/swarm"
)

// maxBodyBytes caps request bodies. The largest legitimate body is a config
// of just under 1000 KiB, base64-encoded (about 1.34 MiB) plus its spec.
const maxBodyBytes = 2 << 20

// Node describes the local node for /info.
type Node struct {
	ID   string
	Addr string
}

// ClusterNodes describes the managers of a cluster for `docker node ls`.
type ClusterNodes interface {
	// Managers returns this node's manager status and the other nodes
	// (recorded spec, address and live manager status); ok is false on a
	// lone node, which is its own leader.
	Managers(ctx context.Context) (self *swarm.ManagerStatus, others []swarm.Node, ok bool, err error)
}

// ClusterSource reads the cluster object.
type ClusterSource interface {
	Cluster(ctx context.Context) (cluster.Cluster, error)
}

// Config wires the server to the manager.
type Config struct {
	Secrets *objects.Manager
	Configs *objects.Manager
	Cluster ClusterSource
	// Nodes lists the cluster's other managers (nil: this node alone).
	Nodes ClusterNodes
	// Swarm is the cluster lifecycle; nil means always active (tests).
	Swarm SwarmController
	// Services serves services, tasks and nodes; nil leaves them unrouted.
	Services *services.Manager
	// Networks serves swarm-scoped networks (local ones pass through to
	// the engine); nil leaves every network call to the fallback.
	Networks *networks.Manager
	// Logs streams container logs for service and task logs (nil: 503).
	Logs LogSource
	// RemoteLogs streams the logs of tasks on other nodes (nil: only this
	// node's tasks have logs).
	RemoteLogs RemoteLogSource
	// Engine gives the host engine's /info and /version (nil: hush's own).
	Engine EngineInfo
	// EngineVersion and MemoryBytes describe this node's engine in /nodes
	// (read once at start; "" and 0 when unknown).
	EngineVersion string
	MemoryBytes   int64
	Node          Node
	// Version is hushd's own version string.
	Version string
	// APIVersion is the API version advertised in /_ping: the lower of
	// hush's and the engine's, since the CLI uses it for passed-through
	// calls too.
	APIVersion string
	// Events is hush's own event stream, merged into the engine's on GET
	// /events (nil: /events goes to the fallback); EngineEvents opens the
	// engine's (nil: hush's events alone).
	Events       EventSource
	EngineEvents EngineStreamer
	// Fallback serves every request hush does not own (the engine proxy).
	// Nil answers them with dockerd's 404.
	Fallback http.Handler
	Logger   *slog.Logger
	// Backup takes encrypted backups (POST /hush/v1/backup); nil leaves it unrouted.
	Backup BackupSource
	// Containers gives secrets to containers created with io.hush.*
	// labels (nil: POST /containers/create passes through untouched).
	Containers ContainerGrants

	// EngineLabels are the engine's labels ("k=v", dockerd --label), shown
	// in the node's description and matched by `node ls --filter label=`.
	EngineLabels []string
}

// Server is the HTTP front of hushd.
type Server struct {
	Config
	log   *slog.Logger
	mux   *http.ServeMux
	start time.Time
}

// New builds a Server.
func New(c Config) *Server {
	s := &Server{Config: c, log: c.Logger, mux: http.NewServeMux(), start: time.Now()}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.routes()
	return s
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /_ping", s.ping)
	s.mux.HandleFunc("HEAD /_ping", s.ping)
	s.mux.HandleFunc("GET /version", s.version)
	s.mux.HandleFunc("GET /info", s.info)

	s.objectRoutes("/secrets", s.Secrets)
	if s.Configs != nil {
		s.objectRoutes("/configs", s.Configs)
	}
	if s.Services != nil {
		s.serviceRoutes()
	}
	if s.Networks != nil {
		s.networkRoutes(s.Networks)
	}
	if s.Swarm != nil {
		s.swarmRoutes()
		s.keyRoutes()
	}
	if s.Events != nil {
		s.mux.HandleFunc("GET /events", s.events)
	}
	s.backupRoutes()
	s.rotationRoutes("secrets", s.Secrets)
	s.rotationRoutes("configs", s.Configs)
	s.containerRoutes()
}

// ServeHTTP routes hush's own API and hands everything else, untouched, to
// the fallback.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	v, rest := splitVersion(r.URL.Path)
	r2 := r.Clone(r.Context())
	r2.URL.Path = rest
	r2.URL.RawPath = ""
	if cv, ok := isContainerCreate(r); ok && s.Containers != nil {
		s.containerCreate(w, r, cv)
		return
	}
	if _, pattern := s.mux.Handler(r2); pattern == "" {
		if s.Fallback != nil {
			s.Fallback.ServeHTTP(w, r)
			return
		}
		writeJSON(w, http.StatusNotFound, errorBody{Message: "page not found"})
		return
	}
	rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
	if err := checkVersion(v); err != nil {
		s.writeError(rec, r, err)
	} else if err := s.checkState(rest); err != nil {
		s.writeError(rec, r, err)
	} else {
		body := &cappedBody{rc: r2.Body, left: maxBodyBytes}
		r2.Body = body
		s.mux.ServeHTTP(rec, r2)
		if body.hit {
			// Read what the client is still sending (bounded) before the
			// answer goes out, so it sees the 413 rather than a reset.
			_, _ = io.CopyN(io.Discard, body.rc, maxDrainBytes)
		}
	}
	// Paths and status only: bodies and query values may carry labels, and
	// hush never logs what a client sent.
	s.log.Debug("api", "method", r.Method, "path", r.URL.Path, "status", rec.code, "dur", time.Since(start))
}

// checkState refuses swarm calls while the node is locked, not in a
// cluster or waiting for its cluster's quorum, with Swarm's texts.
func (s *Server) checkState(path string) error {
	if s.Swarm == nil {
		return nil
	}
	if lifecycleExempt(path) {
		// A manager waiting for its quorum cannot tell what its cluster
		// is, nor change it: its state is all it describes.
		// Init decides once it has read the request (swarmInit).
		if (path == "/swarm" || strings.HasPrefix(path, "/swarm/")) && path != "/swarm/init" && s.state() == swarm.LocalNodeStatePending {
			return s.Swarm.CheckServing()
		}
		return nil
	}
	return s.Swarm.CheckServing()
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// Flush passes on to the connection: streaming handlers (logs -f, events)
// assert http.Flusher, and without it their lines sit in the server's
// buffer until it fills.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (Hijack,
// deadlines) through the recorder.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// maxDrainBytes bounds how much of an oversized body is read and dropped.
const maxDrainBytes = 64 << 20

// cappedBody fails reads past its limit with http.MaxBytesError, like
// http.MaxBytesReader, but without marking the connection for closing: the
// rest of the body is drained instead (see ServeHTTP).
type cappedBody struct {
	rc   io.ReadCloser
	left int64
	hit  bool
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// Probe for one more byte: only a body that really goes on is
		// too large.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n == 0 {
			return 0, err
		}
		b.hit = true
		return 0, &http.MaxBytesError{Limit: maxBodyBytes}
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *cappedBody) Close() error { return b.rc.Close() }

// decodeUpdate reads an update call: the `version` query parameter (dockerd's
// "invalid <noun> version" when missing or malformed) and the JSON body.
func decodeUpdate(r *http.Request, noun string, v any) (uint64, error) {
	version, err := strconv.ParseUint(r.URL.Query().Get("version"), 10, 64)
	if err != nil {
		return 0, errdefs.BadRequest("invalid %s version", noun)
	}
	return version, decodeBody(r, v)
}

// decodeBody decodes a JSON request body into v with dockerd's texts for
// the common mistakes.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return err
		case errors.Is(err, io.EOF):
			return errdefs.BadRequest("got EOF while reading request body")
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Struct != "" && te.Type != nil {
			// Newer Go spells the field's full embedded path; dockerd's
			// clients have always seen only the leaf field name.
			leaf := te.Field[strings.LastIndexByte(te.Field, '.')+1:]
			return errdefs.BadRequest("json: cannot unmarshal %s into Go struct field %s.%s of type %s", te.Value, te.Struct, leaf, te.Type)
		}
		return errdefs.BadRequest("%s", err.Error())
	}
	return nil
}
