package dispatchnet

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/dispatcher"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/pki"
)

// Paths of the protocol. Every call is a POST naming its session in
// SessionHeader; none names a node.
const (
	pathSession   = "/hush.dispatcher/v1/session"
	pathHeartbeat = "/hush.dispatcher/v1/heartbeat"
	pathTask      = "/hush.dispatcher/v1/task"
	pathStatus    = "/hush.dispatcher/v1/status"
	pathRemove    = "/hush.dispatcher/v1/remove"
	// pathAttachments is v2 since attachments describe networks for the
	// node to realise (v1 gave the manager's engine network IDs): a node
	// and a manager of different shapes refuse each other's call rather
	// than start a task on no network (pathAttachmentsV1).
	pathAttachments   = "/hush.dispatcher/v2/attachments"
	pathAttachmentsV1 = "/hush.dispatcher/v1/attachments"
	pathRegistryAuth  = "/hush.dispatcher/v1/registry-auth"

	// SessionHeader carries the session a call belongs to.
	SessionHeader = "Hush-Session"
)

// Bounds on what a node sends.
const (
	// maxStatusBody bounds a status report: its message and error are
	// cut to 4 KiB by the dispatcher, the rest (container status, loaded
	// versions) is small.
	maxStatusBody = 64 << 10
	// maxCallBody bounds the other calls' bodies (a task ID).
	maxCallBody = 1 << 10
	// graceBeats is how many heartbeat periods a session outlives its
	// last heartbeat (Swarm's grace multiplier).
	graceBeats = 3
	// DefaultHeartbeatPeriod is Swarm's Dispatcher.HeartbeatPeriod.
	DefaultHeartbeatPeriod = 5 * time.Second
	// DefaultWriteTimeout bounds one frame's write to a node: a node that
	// reads slower is disconnected rather than buffered for.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultOpenBurst and DefaultOpenEvery bound a node's session opens
	// (ServerConfig.OpenBurst).
	DefaultOpenBurst = 10
	DefaultOpenEvery = time.Second
	// DefaultPingEvery is ServerConfig.PingEvery's default: three of
	// Swarm's heartbeat periods.
	DefaultPingEvery = 15 * time.Second
)

// Heartbeats records when a node was last heard from; the liveness logic
// that marks nodes down reads what it records.
type Heartbeats interface {
	Heartbeat(nodeID string, at time.Time)
}

// Opener opens a node's dispatcher session (dispatcher.Dispatcher through
// FromDispatcher).
type Opener interface {
	Open(ctx context.Context, nodeID string) (agent.Session, error)
}

// FromDispatcher adapts the in-process dispatcher.
func FromDispatcher(d *dispatcher.Dispatcher) Opener { return dispatcherOpener{d} }

type dispatcherOpener struct{ d *dispatcher.Dispatcher }

func (o dispatcherOpener) Open(ctx context.Context, nodeID string) (agent.Session, error) {
	s, err := o.d.Open(ctx, nodeID)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// ServerConfig wires a Handler.
type ServerConfig struct {
	// ClusterID is the cluster a node's certificate must belong to.
	ClusterID string
	// Refuse rejects a verified node anyway (pki.Refusals.Check); it is
	// consulted on every request, so a removal ends a live session at its
	// next heartbeat. nil refuses nothing.
	Refuse func(nodeID string, leaf *x509.Certificate) error
	// RefuseManager rejects a manager certificate although it verifies,
	// on every call (the relay's, and a session's or node call's made
	// under one): one whose node is no manager any more, or revoked (the
	// daemon's refusals by serial). It does not end the node's session:
	// the certificate may be an old one of a node whose current one is
	// fine. nil refuses nothing.
	RefuseManager func(ctx context.Context, nodeID string, leaf *x509.Certificate) error
	// RefuseWorker rejects a worker certificate although it verifies, on
	// every call: one its node's completed promotion superseded (the
	// daemon keeps which). Like RefuseManager, it ends only a session
	// opened under that very certificate, not the node's. nil refuses
	// nothing.
	RefuseWorker func(ctx context.Context, nodeID string, leaf *x509.Certificate) error
	Dispatcher   Opener
	// Heartbeats records heartbeats (nil: not recorded).
	Heartbeats Heartbeats
	// Managers lists the managers' dispatcher addresses, sent to a node
	// as its session opens (nil: none sent).
	Managers func(ctx context.Context) []string
	// Describe records what a session open tells of its node, on every
	// open: the IP its connection comes from (invalid when the transport
	// gives none) and what it says of itself (nil: it said nothing). nil:
	// ignored.
	Describe func(ctx context.Context, nodeID string, peer netip.Addr, d *Description) error
	// Vouching reports whether this manager can vouch for the nodes it
	// hears (its presence is renewed with the quorum). While it returns
	// an error, session opens and heartbeats are refused with it, so a
	// worker moves to a manager that can: otherwise a manager cut off into
	// a minority kept its workers' sessions while the others, no longer
	// seeing its claims, marked them Down and replaced their tasks. nil:
	// always vouching.
	Vouching func() error
	// AwaitReady is called as a session opens, its first heartbeat
	// recorded, before the hello is sent: the daemon vouches for the node
	// at once and waits (bounded) until it is recorded Ready, so that the
	// node's first session, which its join waits for, means Ready as in
	// Swarm. nil: the hello goes at once.
	AwaitReady func(ctx context.Context, nodeID string)
	// HeartbeatPeriod is the cluster spec's Dispatcher.HeartbeatPeriod,
	// read per session and heartbeat (nil or <= 0: 5 s).
	HeartbeatPeriod func() time.Duration
	// LocalNode and LocalLogs serve a relayed logs request for this
	// manager's own node: its agent holds no session here (it talks to
	// the dispatcher in process), so its tasks' logs come from LocalLogs,
	// which checks the task is assigned to it. nil: such requests get
	// ErrNoSession, as for any node without a session.
	LocalNode string
	LocalLogs func(ctx context.Context, taskID string, o agent.LogOptions) (io.ReadCloser, error)
	// OpenBurst and OpenEvery bound how often one node may open a
	// session: OpenBurst at once, then one per OpenEvery (0: 10 and 1 s).
	// Each open costs a full set (every data version the node's tasks
	// hold, read and decrypted again) and maybe a node record write; an
	// agent reopens after a break, with backoff, far less often.
	OpenBurst int
	OpenEvery time.Duration
	// WriteTimeout bounds one frame's write, and the read of a call's
	// body and the write of its answer (0: DefaultWriteTimeout).
	WriteTimeout time.Duration
	// LogsDeadline and LogsMaxBytes bound a node's answer to a logs
	// request that does not follow (0: DefaultLogsDeadline and
	// DefaultLogsMaxBytes): such a request asks for what is there now,
	// and a node that streams without end must not hold the client and a
	// log-stream slot for ever.
	LogsDeadline time.Duration
	LogsMaxBytes int64
	// PingEvery is how long a connection may go without a frame from
	// its node before the server pings it; a ping not answered within as
	// long closes it (0: DefaultPingEvery). A node gone without closing
	// its connection (a host cut off) otherwise held it, and its place
	// under MaxConnsPerWorker, until the idle timeout after its last
	// stream's write deadline: minutes. A live session sends a heartbeat
	// every period, so it is not pinged.
	PingEvery time.Duration
	Logger    *slog.Logger
	Now       func() time.Time
}

// Handler serves dispatcher sessions to remote nodes. It must be served
// over TLS configured by pki.TLSParams.ServerConfig (see NewServer):
// it reads the node's identity from the verified client certificate of
// each request.
type Handler struct {
	c   ServerConfig
	log *slog.Logger
	mux *http.ServeMux

	opens *openLimiter
	conns *connLimiter

	mu       sync.Mutex
	sessions map[string]*srvSession // by node ID: one per node
}

type srvSession struct {
	id   string
	node string
	// serial is the certificate's the session was opened under (hex):
	// refused later, that certificate ends this session (endUnder).
	serial string
	ds     agent.Session
	period time.Duration
	ctx    context.Context
	cancel context.CancelCauseFunc
	watch  *time.Timer
	// ctl carries frames other than assignments (logs requests) to the
	// stream's writer.
	ctl chan []byte

	mu   sync.Mutex
	logs map[string]*pendingLogs // logs requests by ID (logs.go)
}

// Reasons a session ends, sent to the node in the end frame.
var (
	errReplaced = errdefs.Unavailable("session replaced by a newer session of the node")
	errMissed   = errdefs.Unavailable("session ended: heartbeats missed")
	errNoSess   = errdefs.Unavailable("no such session: open a new one")
)

// NewHandler returns a handler.
func NewHandler(c ServerConfig) *Handler {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = func() time.Time { return time.Now().UTC() }
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.OpenBurst <= 0 {
		c.OpenBurst = DefaultOpenBurst
	}
	if c.OpenEvery <= 0 {
		c.OpenEvery = DefaultOpenEvery
	}
	if c.LogsDeadline <= 0 {
		c.LogsDeadline = DefaultLogsDeadline
	}
	if c.LogsMaxBytes <= 0 {
		c.LogsMaxBytes = DefaultLogsMaxBytes
	}
	if c.PingEvery <= 0 {
		c.PingEvery = DefaultPingEvery
	}
	h := &Handler{c: c, log: c.Logger, mux: http.NewServeMux(), sessions: map[string]*srvSession{},
		opens: &openLimiter{burst: c.OpenBurst, every: c.OpenEvery, maxNodes: maxOpenBuckets},
		conns: newConnLimiter(c.ClusterID, c.Logger)}
	h.conns.refused = h.refusedNow
	h.mux.HandleFunc("POST "+pathSession, h.serveSession)
	h.mux.HandleFunc("POST "+pathHeartbeat, h.call(maxCallBody, h.heartbeat))
	h.mux.HandleFunc("POST "+pathTask, h.call(maxCallBody, h.task))
	h.mux.HandleFunc("POST "+pathStatus, h.call(maxStatusBody, h.status))
	h.mux.HandleFunc("POST "+pathRemove, h.call(maxCallBody, h.remove))
	h.mux.HandleFunc("POST "+pathAttachments, h.call(maxCallBody, h.attachments))
	h.mux.HandleFunc("POST "+pathAttachmentsV1, h.call(maxCallBody, h.attachmentsV1))
	h.mux.HandleFunc("POST "+pathRegistryAuth, h.registryAuth)
	h.mux.HandleFunc("POST "+pathLogs, h.serveLogsAnswer)
	h.mux.HandleFunc("POST "+pathRelayLogs, h.serveRelayLogs)
	return h
}

// NewServer returns an HTTP/2-only server for h under tlsCfg (from
// pki.TLSParams.ServerConfig), with its own bounds on headers, idle
// connections, concurrent streams, and connections per node
// (MaxConnsPerWorker, MaxConnsPerManager). Serve it with ServeTLS(ln,
// "", "").
func NewServer(h *Handler, tlsCfg *tls.Config) *http.Server {
	cfg := tlsCfg.Clone()
	cfg.NextProtos = []string{"h2"}
	static := cfg.Clone()
	static.GetConfigForClient = nil
	get := cfg.GetConfigForClient
	// pki builds a config per handshake; ALPN and the count of the
	// node's connections must be in that one.
	cfg.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		c := static
		if get != nil {
			gc, err := get(hi)
			if err != nil {
				return nil, err
			}
			if gc != nil {
				c = gc
			}
		}
		c = h.conns.guard(c, hi.Conn)
		c.NextProtos = []string{"h2"}
		return c, nil
	}
	var p http.Protocols
	p.SetHTTP2(true)
	return &http.Server{
		Handler:           h,
		TLSConfig:         cfg,
		Protocols:         &p,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    16 << 10,
		IdleTimeout:       2 * time.Minute,
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 32, MaxReceiveBufferPerStream: 256 << 10,
			SendPingTimeout: h.c.PingEvery, PingTimeout: h.c.PingEvery},
		ErrorLog:  slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
		ConnState: h.conns.connState,
		// peer moves a connection whose certificate is refused since its
		// handshake out of its node's count (connLimiter.moveRefused).
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
}

// connKey is the request context's key of its connection.
type connKey struct{}

// refusedNow says whether a verified certificate is refused (an
// Unauthorized answer of the hooks peer asks: a failed read refuses
// nothing here), for the count of its connections at the handshake.
func (h *Handler) refusedNow(ctx context.Context, id pki.Identity, leaf *x509.Certificate) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var err error
	if h.c.Refuse != nil {
		err = h.c.Refuse(id.NodeID, leaf)
	}
	check := h.c.RefuseWorker
	if id.Role == pki.RoleManager {
		check = h.c.RefuseManager
	}
	if err == nil && check != nil {
		err = check(ctx, id.NodeID, leaf)
	}
	return errors.Is(err, errdefs.ErrUnauthorized)
}

// refusedConn moves r's connection out of node's count: its certificate
// is refused.
func (h *Handler) refusedConn(r *http.Request, node string) {
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	h.conns.moveRefused(c, node)
}

// ServeHTTP checks the node's identity, then routes.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux.ServeHTTP(w, r)
}

// peer is the node a request comes from, from its verified certificate
// only. A refused node's session is ended too.
func (h *Handler) peer(r *http.Request) (string, error) {
	if r.TLS == nil {
		return "", errdefs.Unauthorized("the dispatcher is served over mutual TLS only")
	}
	id, err := pki.PeerIdentity(*r.TLS, h.c.ClusterID)
	if err != nil {
		return "", err
	}
	leaf := r.TLS.VerifiedChains[0][0]
	if h.c.Refuse != nil {
		if err := h.c.Refuse(id.NodeID, leaf); err != nil {
			h.end(id.NodeID, "", err)
			h.refusedConn(r, id.NodeID)
			return "", err
		}
	}
	// A worker agent calls with a worker certificate; a manager's is for
	// the relay. Refused without ending the node's session, unless that
	// session was opened under this very certificate: it may be an old
	// certificate of a node whose current one is fine.
	check := h.c.RefuseWorker
	if id.Role == pki.RoleManager {
		check = h.c.RefuseManager
	}
	if check != nil {
		if err := check(r.Context(), id.NodeID, leaf); err != nil {
			// A refusal, not a failed check (a store read): that one
			// is answered as it is, and the node asks again.
			if errors.Is(err, errdefs.ErrUnauthorized) {
				h.endUnder(id.NodeID, leaf, err)
				h.refusedConn(r, id.NodeID)
			}
			return "", err
		}
	}
	return id.NodeID, nil
}

// endUnder ends node's session if it was opened under leaf.
func (h *Handler) endUnder(node string, leaf *x509.Certificate, cause error) {
	serial := leaf.SerialNumber.Text(16)
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.sessions[node]; s != nil && s.serial == serial {
		s.cancel(cause)
		delete(h.sessions, node)
	}
}

func (h *Handler) period() time.Duration {
	if h.c.HeartbeatPeriod != nil {
		if p := h.c.HeartbeatPeriod(); p > 0 {
			return p
		}
	}
	return DefaultHeartbeatPeriod
}

// end cancels node's session (only the one named id, when id is given).
func (h *Handler) end(node, id string, cause error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.sessions[node]; s != nil && (id == "" || s.id == id) {
		s.cancel(cause)
		delete(h.sessions, node)
	}
}

// EndNode ends node's session now, telling it cause in the end frame
// (the daemon calls it on `docker node rm`, so a removed node does not
// wait for its next heartbeat to be refused).
func (h *Handler) EndNode(node string, cause error) {
	h.end(node, "", cause)
}

// lookup returns node's session named id.
func (h *Handler) lookup(node, id string) (*srvSession, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[node]
	if s == nil || subtle.ConstantTimeCompare([]byte(s.id), []byte(id)) != 1 {
		return nil, errNoSess
	}
	return s, nil
}

func newSessionID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

func (h *Handler) serveSession(w http.ResponseWriter, r *http.Request) {
	node, err := h.peer(r)
	if err != nil {
		h.fail(w, err)
		return
	}
	if err := h.vouching(); err != nil {
		h.fail(w, err)
		return
	}
	// Before anything an open costs (the description, the full set).
	if err := h.opens.allow(node, time.Now()); err != nil {
		h.fail(w, err)
		return
	}
	body, err := h.readBody(w, r, maxDescribeBody)
	if err != nil {
		h.fail(w, errdefs.BadRequest("request body over %d bytes or unreadable", maxDescribeBody))
		return
	}
	desc, err := decodeDescription(body)
	if err != nil {
		h.fail(w, err)
		return
	}
	h.describe(r.Context(), node, r.RemoteAddr, desc)
	ds, err := h.c.Dispatcher.Open(r.Context(), node)
	if err != nil {
		h.fail(w, err)
		return
	}
	sid, err := newSessionID()
	if err != nil {
		h.fail(w, err)
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	period := h.period()
	s := &srvSession{id: sid, node: node, serial: r.TLS.VerifiedChains[0][0].SerialNumber.Text(16), ds: ds, period: period,
		ctx: ctx, cancel: cancel, ctl: make(chan []byte), logs: map[string]*pendingLogs{}}
	s.watch = time.AfterFunc(graceBeats*period, func() { h.end(node, sid, errMissed) })
	defer s.watch.Stop()
	h.mu.Lock()
	if old := h.sessions[node]; old != nil {
		old.cancel(errReplaced)
	}
	h.sessions[node] = s
	h.mu.Unlock()
	defer h.end(node, sid, context.Canceled)
	h.beat(s)
	if h.c.AwaitReady != nil {
		h.c.AwaitReady(ctx, node)
	}
	log := h.log.With("node", node)
	log.Info("dispatcher session opened")

	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-hush-frames")
	w.WriteHeader(http.StatusOK)
	hl := hello{Session: sid, HeartbeatMillis: period.Milliseconds()}
	if h.c.Managers != nil {
		hl.Managers = validManagers(h.c.Managers(r.Context()))
	}
	hb, _ := json.Marshal(hl)
	err = h.write(rc, w, frame(frameHello, hb))
	// Assignments are read apart so that logs requests are written while
	// the dispatcher waits for a change; a message read but not written
	// when the session ends is wiped.
	msgs, nextErr := make(chan model.Assignments), make(chan error, 1)
	if err == nil {
		go func() {
			for {
				m, err := ds.Next(ctx)
				if err != nil {
					nextErr <- err
					return
				}
				select {
				case msgs <- m:
				case <-ctx.Done():
					m.Wipe()
					nextErr <- context.Cause(ctx)
					return
				}
			}
		}()
	}
	for err == nil {
		select {
		case m := <-msgs:
			var b []byte
			b, err = encodeAssignments(m)
			m.Wipe()
			if err != nil {
				break
			}
			err = h.write(rc, w, b)
			clear(b)
		case b := <-s.ctl:
			err = h.write(rc, w, b)
		case err = <-nextErr:
		}
	}
	if c := context.Cause(ctx); c != nil {
		err = c
	}
	log.Info("dispatcher session ended", "err", err)
	if r.Context().Err() == nil {
		eb, _ := json.Marshal(toWire(err))
		_ = h.write(rc, w, frame(frameEnd, eb))
	}
}

// write sends one frame within the write timeout: a node that does not
// read is cut off, never buffered for.
func (h *Handler) write(rc *http.ResponseController, w io.Writer, b []byte) error {
	if err := rc.SetWriteDeadline(time.Now().Add(h.c.WriteTimeout)); err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	if err := rc.Flush(); err != nil {
		return err
	}
	// The stream then waits on the store; an old deadline would cut it.
	return rc.SetWriteDeadline(time.Time{})
}

// readBody reads a request's body of at most max bytes within the call
// deadline (WriteTimeout): a node that starts a body and stalls would
// otherwise hold the handler, and the stream's buffers, for as long as it
// keeps its connection.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	rc := http.NewResponseController(w)
	// Served over HTTP/2 (NewServer), whose streams take deadlines.
	_ = rc.SetReadDeadline(time.Now().Add(h.c.WriteTimeout))
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	_ = rc.SetReadDeadline(time.Time{})
	return b, err
}

// answerDeadline bounds the write of a call's answer: a node that does
// not read it, or announces a zero flow-control window, is cut off (its
// stream reset) rather than holding the handler.
func (h *Handler) answerDeadline(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(h.c.WriteTimeout))
}

// vouching is ServerConfig.Vouching's verdict, as an Unavailable error.
func (h *Handler) vouching() error {
	if h.c.Vouching == nil {
		return nil
	}
	if err := h.c.Vouching(); err != nil {
		if errors.Is(err, errdefs.ErrUnavailable) {
			return err
		}
		return errdefs.Unavailable("%v", err)
	}
	return nil
}

// beat records a heartbeat of s and pushes its deadline back.
func (h *Handler) beat(s *srvSession) {
	s.watch.Reset(graceBeats * s.period)
	if h.c.Heartbeats != nil {
		h.c.Heartbeats.Heartbeat(s.node, h.c.Now())
	}
}

// call wraps a session call: identity, session, bounded JSON body.
func (h *Handler) call(max int64, f func(ctx context.Context, s *srvSession, body []byte) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, err := h.session(r)
		if err != nil {
			h.fail(w, err)
			return
		}
		body, err := h.readBody(w, r, max)
		if err != nil {
			h.fail(w, errdefs.BadRequest("request body over %d bytes or unreadable", max))
			return
		}
		out, err := f(r.Context(), s, body)
		if err != nil {
			h.fail(w, err)
			return
		}
		b, err := json.Marshal(out)
		if err != nil {
			h.fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		h.answerDeadline(w)
		_, _ = w.Write(b)
	}
}

// session is the caller's current session, named by SessionHeader and
// belonging to the node the certificate names.
func (h *Handler) session(r *http.Request) (*srvSession, error) {
	node, err := h.peer(r)
	if err != nil {
		return nil, err
	}
	return h.lookup(node, r.Header.Get(SessionHeader))
}

// taskRequest names one task of the session's node.
type taskRequest struct {
	TaskID string
}

type heartbeatResponse struct {
	HeartbeatMillis int64
}

// attachmentsResponse describes the networks, never a manager's engine
// network IDs: those mean nothing on the node's engine.
type attachmentsResponse struct {
	Networks []model.TaskNetwork
	Aliases  []string
}

func decodeBody[T any](body []byte) (T, error) {
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		return v, errdefs.BadRequest("malformed request body")
	}
	return v, nil
}

func (h *Handler) heartbeat(_ context.Context, s *srvSession, _ []byte) (any, error) {
	if err := h.vouching(); err != nil {
		h.end(s.node, s.id, err)
		return nil, err
	}
	h.beat(s)
	return heartbeatResponse{HeartbeatMillis: s.period.Milliseconds()}, nil
}

func (h *Handler) task(ctx context.Context, s *srvSession, body []byte) (any, error) {
	req, err := decodeBody[taskRequest](body)
	if err != nil {
		return nil, err
	}
	return s.ds.Task(ctx, req.TaskID)
}

func (h *Handler) status(ctx context.Context, s *srvSession, body []byte) (any, error) {
	req, err := decodeBody[model.StatusReport](body)
	if err != nil {
		return nil, err
	}
	return s.ds.ReportStatus(ctx, req)
}

func (h *Handler) remove(ctx context.Context, s *srvSession, body []byte) (any, error) {
	req, err := decodeBody[taskRequest](body)
	if err != nil {
		return nil, err
	}
	return struct{}{}, s.ds.RemoveTask(ctx, req.TaskID)
}

func (h *Handler) attachments(ctx context.Context, s *srvSession, body []byte) (any, error) {
	req, err := decodeBody[taskRequest](body)
	if err != nil {
		return nil, err
	}
	nets, aliases, err := s.ds.Attachments(ctx, req.TaskID)
	return attachmentsResponse{Networks: nets, Aliases: aliases}, err
}

// attachmentsV1 refuses a node of the former shape, which would read no
// network IDs in the answer and start a networked task on none.
func (h *Handler) attachmentsV1(context.Context, *srvSession, []byte) (any, error) {
	return nil, errdefs.FailedPrecondition("this manager describes a task's networks for its node to realise on its own engine: upgrade this node's hushd to run networked tasks")
}

// registryAuth answers with the credentials' bytes as the body (never
// through JSON), then wipes them.
func (h *Handler) registryAuth(w http.ResponseWriter, r *http.Request) {
	s, err := h.session(r)
	if err != nil {
		h.fail(w, err)
		return
	}
	body, err := h.readBody(w, r, maxCallBody)
	if err != nil {
		h.fail(w, errdefs.BadRequest("request body over %d bytes or unreadable", maxCallBody))
		return
	}
	req, err := decodeBody[taskRequest](body)
	if err != nil {
		h.fail(w, err)
		return
	}
	auth, err := s.ds.RegistryAuth(r.Context(), req.TaskID)
	if err != nil {
		h.fail(w, err)
		return
	}
	defer clear(auth)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(auth)))
	h.answerDeadline(w)
	_, _ = w.Write(auth)
}

// fail answers err as a wire error with a status for readability.
func (h *Handler) fail(w http.ResponseWriter, err error) {
	we := toWire(err)
	if we.Kind == "internal" {
		h.log.Warn("dispatcher call failed", "err", err)
	}
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, errdefs.ErrUnauthorized):
		code = http.StatusUnauthorized
	case errors.Is(err, errdefs.ErrForbidden):
		code = http.StatusForbidden
	case errors.Is(err, errdefs.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, errdefs.ErrInvalidArgument):
		code = http.StatusBadRequest
	case errors.Is(err, errdefs.ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, errdefs.ErrUnavailable):
		code = http.StatusServiceUnavailable
	}
	b, _ := json.Marshal(we)
	w.Header().Set("Content-Type", "application/json")
	h.answerDeadline(w)
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// LastSeen records the last heartbeat of each node in memory (one entry
// per node that ever held a session: bounded by the certificates issued).
type LastSeen struct {
	mu sync.Mutex
	m  map[string]time.Time
}

// Heartbeat records a heartbeat.
func (l *LastSeen) Heartbeat(nodeID string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]time.Time{}
	}
	l.m[nodeID] = at
}

// Last returns when node was last heard from.
func (l *LastSeen) Last(nodeID string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.m[nodeID]
	return t, ok
}

// Heard lists the nodes heard from after since (at is the heartbeat's
// time as recorded).
func (l *LastSeen) Heard(since time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id, at := range l.m {
		if at.After(since) {
			out = append(out, id)
		}
	}
	return out
}

// current reports whether node holds a session.
func (h *Handler) current(node string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[node] != nil
}
