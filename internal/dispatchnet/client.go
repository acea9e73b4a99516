package dispatchnet

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
)

// Client bounds on what a manager answers.
const (
	maxResponse     = 16 << 20
	maxRegistryAuth = 1 << 20
	// defaultOpenTimeout bounds opening a session with one manager: dial,
	// handshake, answer and first frame.
	defaultOpenTimeout = 10 * time.Second
	// Bounds on the heartbeat period a manager asks for.
	minPeriod = 100 * time.Millisecond
	maxPeriod = time.Hour
)

// errTransport marks a call that got no answer (as opposed to a
// manager's refusal).
var errTransport = errors.New("dispatcher unreachable")

// ClientConfig wires a Connector.
type ClientConfig struct {
	// Managers are the managers' dispatcher addresses (host:port), tried
	// in order from the one after the last used.
	Managers []string
	// TLS builds the dialling configuration, per dial so that renewed
	// certificates and rotated roots are used (pki.TLSParams.ClientConfig).
	TLS func() (*tls.Config, error)
	// Dial opens the TCP connection (nil: net.Dialer); tests wrap it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MinBackoff and MaxBackoff bound the wait between rounds of failed
	// dials (0: 100 ms and 10 s).
	MinBackoff, MaxBackoff time.Duration
	// OpenTimeout bounds opening a session with one manager, from the dial
	// to the hello (0: 10 s): a manager that accepts connections but does
	// not answer (stopped, overloaded) is left for the next.
	OpenTimeout time.Duration
	// Describe says what this node is, sent as each session opens (nil:
	// nothing).
	Describe func() Description
	// Opened is called after each session opens (its hello read): the
	// node is then recorded Ready, or the manager gave up waiting for it
	// (ServerConfig.AwaitReady). nil: not told.
	Opened func()
	Logger *slog.Logger
	// Logs opens a task's logs for a manager's logs request
	// (agent.Agent.TaskLogs, which serves only this node's tasks); nil
	// refuses every request.
	Logs func(ctx context.Context, taskID string, o agent.LogOptions) (io.ReadCloser, error)
	// LogsDeadline bounds how long this node answers a logs request that
	// does not follow (0: DefaultLogsDeadline plus nodeLogsGrace, so the
	// manager, which bounds it too, normally ends it first).
	LogsDeadline time.Duration
}

// Connector opens dispatcher sessions with the managers; it implements
// agent.Connector.
type Connector struct {
	c   ClientConfig
	log *slog.Logger

	mu    sync.Mutex
	next  int // manager to try first
	fails int // failed rounds in a row
	// managers is the list tried, first ClientConfig.Managers, then the
	// one each session's hello gives.
	managers []string
}

var _ agent.Connector = (*Connector)(nil)

// NewConnector returns a connector.
func NewConnector(c ClientConfig) (*Connector, error) {
	if len(c.Managers) == 0 || c.TLS == nil {
		return nil, errors.New("dispatchnet: a connector needs managers and a TLS configuration")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = d.DialContext
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 10 * time.Second
	}
	if c.OpenTimeout <= 0 {
		c.OpenTimeout = defaultOpenTimeout
	}
	if c.LogsDeadline <= 0 {
		c.LogsDeadline = DefaultLogsDeadline + nodeLogsGrace
	}
	return &Connector{c: c, log: c.Logger, managers: slices.Clone(c.Managers)}, nil
}

// backoff is the wait before a round after fails failed ones, with
// jitter so that nodes of a restarted manager do not come back at once.
func (c *Connector) backoff(fails int) time.Duration {
	if fails == 0 {
		return 0
	}
	d := c.c.MaxBackoff
	if fails < 30 && c.c.MinBackoff<<(fails-1) < d {
		d = c.c.MinBackoff << (fails - 1)
	}
	return d/2 + rand.N(d/2+1)
}

// Open opens a session with the first manager that answers, starting
// after the one the previous session used. The session lives until ctx
// ends or it breaks (then the agent opens another, on the next manager).
func (c *Connector) Open(ctx context.Context) (agent.Session, error) {
	c.mu.Lock()
	start, wait, mgrs := c.next, c.backoff(c.fails), c.managers
	c.mu.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	var errs []error
	n := len(mgrs)
	for i := range n {
		idx := (start + i) % n
		s, err := c.openAt(ctx, mgrs[idx])
		if err == nil {
			c.mu.Lock()
			c.next, c.fails = (idx+1)%n, 0
			if len(s.managers) > 0 {
				// The answering manager's view of the managers replaces
				// the list; the next open starts after this manager.
				c.managers, c.next = s.managers, 0
				if j := slices.Index(s.managers, mgrs[idx]); j >= 0 {
					c.next = (j + 1) % len(s.managers)
				}
			}
			c.mu.Unlock()
			c.log.Info("dispatcher session opened", "manager", mgrs[idx])
			if c.c.Opened != nil {
				c.c.Opened()
			}
			return s, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		c.log.Warn("dispatcher unreachable", "manager", mgrs[idx], "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", mgrs[idx], err))
	}
	c.mu.Lock()
	c.fails++
	c.mu.Unlock()
	return nil, fmt.Errorf("no manager's dispatcher answered: %w: %w", errdefs.ErrUnavailable, errors.Join(errs...))
}

func (c *Connector) transport() *http.Transport {
	var p http.Protocols
	p.SetHTTP2(true)
	return &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			cfg, err := c.c.TLS()
			if err != nil {
				return nil, err
			}
			cfg.NextProtos = []string{"h2"}
			raw, err := c.c.Dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(raw, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			return tc, nil
		},
		ForceAttemptHTTP2:      true,
		Protocols:              &p,
		MaxResponseHeaderBytes: 16 << 10,
		HTTP2:                  &http.HTTP2Config{SendPingTimeout: 15 * time.Second, PingTimeout: 15 * time.Second},
	}
}

// openAt opens a session with one manager: the stream, its hello, and
// the goroutines that read it and keep its heartbeats.
func (c *Connector) openAt(ctx context.Context, addr string) (*Session, error) {
	tr := c.transport()
	sctx, cancel := context.WithCancelCause(ctx)
	s := &Session{
		hc: &http.Client{Transport: tr}, tr: tr, base: "https://" + addr, log: c.log.With("manager", addr),
		ctx: sctx, cancel: cancel, msgs: make(chan model.Assignments, 1), done: make(chan struct{}),
		logs: c.c.Logs, logSem: make(chan struct{}, MaxLogStreams), logsDeadline: c.c.LogsDeadline,
	}
	// The whole opening is bounded, the dial and TLS handshake included:
	// a stopped manager's kernel still accepts the connection, and only
	// this timer moves the node on to the next manager.
	stall := time.AfterFunc(c.c.OpenTimeout, func() { cancel(errdefs.Unavailable("no hello from the dispatcher")) })
	fail := func(err error) (*Session, error) {
		stall.Stop()
		if c := context.Cause(sctx); c != nil && ctx.Err() == nil {
			err = c
		}
		cancel(err)
		tr.CloseIdleConnections()
		return nil, err
	}
	var desc []byte
	if c.c.Describe != nil {
		desc, _ = json.Marshal(c.c.Describe())
	}
	req, err := http.NewRequestWithContext(sctx, http.MethodPost, s.base+pathSession, bytes.NewReader(desc))
	if err != nil {
		return fail(err)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		err := readError(resp)
		resp.Body.Close()
		return fail(err)
	}
	typ, body, err := readFrame(resp.Body, maxControlFrame)
	if !stall.Stop() && err == nil {
		// The timer fired as the hello came: the session is cancelled.
		err = errdefs.Unavailable("no hello from the dispatcher in time")
	}
	if err == nil && typ != frameHello {
		err = fmt.Errorf("%w: stream opened with frame type %d", errFrame, typ)
	}
	var h hello
	if err == nil {
		err = json.Unmarshal(body, &h)
	}
	if err == nil && (h.Session == "" || len(h.Session) > 128) {
		err = fmt.Errorf("%w: hello without a session", errFrame)
	}
	if err != nil {
		resp.Body.Close()
		return fail(err)
	}
	s.id = h.Session
	s.period = clampPeriod(h.HeartbeatMillis)
	s.managers = validManagers(h.Managers)
	go s.read(resp.Body)
	go s.heartbeats()
	return s, nil
}

func clampPeriod(ms int64) time.Duration {
	return min(max(time.Duration(ms)*time.Millisecond, minPeriod), maxPeriod)
}

// Session is a node's session with one manager; it implements
// agent.Session.
type Session struct {
	hc   *http.Client
	tr   *http.Transport
	base string
	id   string
	log  *slog.Logger
	// managers is the manager list the hello gave (nil: none).
	managers []string
	ctx      context.Context
	cancel   context.CancelCauseFunc

	mu     sync.Mutex
	period time.Duration

	// logs serves logs requests, at most MaxLogStreams at once (logSem).
	logs   func(ctx context.Context, taskID string, o agent.LogOptions) (io.ReadCloser, error)
	logSem chan struct{}
	// logsDeadline bounds the answer to a request that does not follow.
	logsDeadline time.Duration

	msgs chan model.Assignments
	done chan struct{} // closed when the stream ended; err says why
	err  error
}

var _ agent.Session = (*Session)(nil)

// read delivers the stream's messages until it ends, wiping each frame
// once decoded.
func (s *Session) read(body io.ReadCloser) {
	defer body.Close()
	err := func() error {
		for {
			typ, b, err := readFrame(body, MaxFrame)
			if err != nil {
				if c := context.Cause(s.ctx); c != nil {
					return c
				}
				return err
			}
			switch typ {
			case frameAssignments:
				m, err := decodeAssignments(b)
				clear(b)
				if err != nil {
					return err
				}
				select {
				case s.msgs <- m:
				case <-s.ctx.Done():
					m.Wipe()
					return context.Cause(s.ctx)
				}
			case frameLogs:
				if len(b) > maxControlFrame {
					return errFrame
				}
				go s.serveLogs(b)
			case frameEnd:
				var we wireError
				if len(b) > maxControlFrame || json.Unmarshal(b, &we) != nil {
					return errFrame
				}
				return fromWire(we)
			default:
				clear(b)
				return fmt.Errorf("%w: frame type %d", errFrame, typ)
			}
		}
	}()
	s.err = fmt.Errorf("dispatcher session ended: %w", err)
	s.cancel(s.err)
	close(s.done)
	// A message nobody took is wiped: the agent never owned it.
	select {
	case m := <-s.msgs:
		m.Wipe()
	default:
	}
	s.tr.CloseIdleConnections()
}

// heartbeats keeps the session alive; a session that cannot beat for the
// grace the server allows ends, so the agent moves to another manager.
func (s *Session) heartbeats() {
	last := time.Now()
	for {
		s.mu.Lock()
		p := s.period
		s.mu.Unlock()
		t := time.NewTimer(p)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		var r heartbeatResponse
		// Each heartbeat is bounded, as Swarm's agent bounds it (5 s): a
		// manager cut off silently never answers, and only this moves the
		// node to another manager before the managers' grace runs out
		// (HTTP/2's ping would notice after about 30 s).
		cctx, cancelCall := context.WithTimeout(s.ctx, heartbeatTimeout(p))
		err := s.call(cctx, pathHeartbeat, struct{}{}, &r)
		silent := err != nil && errors.Is(cctx.Err(), context.DeadlineExceeded) && s.ctx.Err() == nil
		cancelCall()
		switch {
		case silent:
			s.cancel(fmt.Errorf("no heartbeat answer within %s: %w", heartbeatTimeout(p), err))
			return
		case err == nil:
			last = time.Now()
			s.mu.Lock()
			s.period = clampPeriod(r.HeartbeatMillis)
			s.mu.Unlock()
		case !errors.Is(err, errTransport):
			// The manager answered: it no longer holds the session, or
			// refuses the node.
			s.cancel(err)
			return
		case time.Since(last) > graceBeats*p:
			s.cancel(fmt.Errorf("heartbeats failing: %w", err))
			return
		}
	}
}

// heartbeatTimeout bounds one heartbeat call: a period, at least a second
// (a loaded manager is not a gone one) and at most Swarm's 5 s.
func heartbeatTimeout(period time.Duration) time.Duration {
	return min(max(period, time.Second), 5*time.Second)
}

// Next returns the next assignments message.
func (s *Session) Next(ctx context.Context) (model.Assignments, error) {
	select {
	case m := <-s.msgs:
		return m, nil
	default:
	}
	select {
	case m := <-s.msgs:
		return m, nil
	case <-s.done:
		return model.Assignments{}, s.err
	case <-ctx.Done():
		return model.Assignments{}, ctx.Err()
	}
}

// call posts req as JSON to path and decodes the answer into out.
func (s *Session) call(ctx context.Context, path string, req, out any) error {
	resp, err := s.post(ctx, path, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return errdefs.Unavailable("dispatcher answer: %v", err)
	}
	if len(b) > maxResponse {
		return errdefs.Unavailable("dispatcher answer over %d bytes", maxResponse)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("dispatcher answer: %w: %w", errdefs.ErrInternal, err)
	}
	return nil
}

// post sends a call; a non-200 answer is returned as its error.
func (s *Session) post(ctx context.Context, path string, req any) (*http.Response, error) {
	if err := context.Cause(s.ctx); err != nil {
		return nil, errdefs.Unavailable("dispatcher session ended: %v", err)
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	// A call ends with the session too.
	ctx, stop := mergeCancel(ctx, s.ctx)
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+path, bytes.NewReader(b))
	if err != nil {
		stop()
		return nil, err
	}
	r.Header.Set(SessionHeader, s.id)
	r.Header.Set("Content-Type", "application/json")
	resp, err := s.hc.Do(r)
	if err != nil {
		stop()
		if ctx.Err() != nil && context.Cause(s.ctx) != nil {
			return nil, errdefs.Unavailable("dispatcher session ended: %v", context.Cause(s.ctx))
		}
		return nil, fmt.Errorf("%w: %w: %v", errTransport, errdefs.ErrUnavailable, err)
	}
	if resp.StatusCode != http.StatusOK {
		err := readError(resp)
		resp.Body.Close()
		stop()
		return nil, err
	}
	resp.Body = stopOnClose{resp.Body, stop}
	return resp, nil
}

type stopOnClose struct {
	io.ReadCloser
	stop func() bool
}

func (b stopOnClose) Close() error {
	b.stop()
	return b.ReadCloser.Close()
}

// mergeCancel is ctx, also cancelled when other ends.
func mergeCancel(ctx, other context.Context) (context.Context, func() bool) {
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(other, func() { cancel(context.Cause(other)) })
	return ctx, func() bool { cancel(nil); return stop() }
}

// readError decodes a wire error answer.
func readError(resp *http.Response) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxControlFrame))
	var we wireError
	if err != nil || json.Unmarshal(b, &we) != nil {
		return errdefs.Unavailable("dispatcher answered %s", resp.Status)
	}
	return fromWire(we)
}

// Task reads one of this node's tasks afresh.
func (s *Session) Task(ctx context.Context, id string) (*model.Task, error) {
	var t model.Task
	if err := s.call(ctx, pathTask, taskRequest{TaskID: id}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// ReportStatus reports a task's status and returns the task as stored.
func (s *Session) ReportStatus(ctx context.Context, r model.StatusReport) (*model.Task, error) {
	var t model.Task
	if err := s.call(ctx, pathStatus, r, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// RemoveTask deletes the record of an ended task desired removed.
func (s *Session) RemoveTask(ctx context.Context, id string) error {
	var out struct{}
	return s.call(ctx, pathRemove, taskRequest{TaskID: id}, &out)
}

// Attachments gives a task's networks, to realise on this node's engine,
// and DNS aliases.
func (s *Session) Attachments(ctx context.Context, taskID string) (nets []model.TaskNetwork, aliases []string, err error) {
	var a attachmentsResponse
	if err := s.call(ctx, pathAttachments, taskRequest{TaskID: taskID}, &a); err != nil {
		return nil, nil, err
	}
	return a.Networks, a.Aliases, nil
}

// RegistryAuth gives the credentials for pulling a task's image (nil:
// none), read into one buffer of the announced size, which the caller
// wipes.
func (s *Session) RegistryAuth(ctx context.Context, taskID string) ([]byte, error) {
	resp, err := s.post(ctx, pathRegistryAuth, taskRequest{TaskID: taskID})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.ContentLength < 0 || resp.ContentLength > maxRegistryAuth {
		return nil, errdefs.Unavailable("registry credentials of unannounced or excessive size")
	}
	if resp.ContentLength == 0 {
		return nil, nil
	}
	b := make([]byte, resp.ContentLength)
	if _, err := io.ReadFull(resp.Body, b); err != nil {
		clear(b)
		return nil, errdefs.Unavailable("registry credentials: %v", err)
	}
	return b, nil
}

// Close ends the session.
func (s *Session) Close() {
	s.cancel(errors.New("session closed"))
	<-s.done
}
