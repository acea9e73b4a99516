package dispatchnet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/errdefs"
)

// Remote logs: a manager asks a node for a task's logs with a logs frame on
// the node's session stream; the node answers by posting the engine's log
// stream as the body of POST pathLogs (LogsHeader names the request), or a
// wire error (logsErrorHeader set). The manager hands that body to its
// reader as it arrives: HTTP/2 flow control paces the node to the reader.
const (
	frameLogs byte = 4

	pathLogs = "/hush.dispatcher/v1/logs"
	// LogsHeader names the logs request an answer belongs to.
	LogsHeader      = "Hush-Logs"
	logsErrorHeader = "Hush-Logs-Error"

	// MaxLogStreams bounds the log streams open between a manager and one
	// node, each way (a request past it is refused).
	MaxLogStreams = 8
	// logsAnswerTimeout bounds the wait for a node to start answering.
	logsAnswerTimeout = 30 * time.Second
)

// logsRequest is the body of a logs frame.
type logsRequest struct {
	ID     string
	TaskID string
	agent.LogOptions
}

// pendingLogs is a logs request waiting for, or being answered by, the
// node.
type pendingLogs struct {
	answer  chan logsAnswer // buffered: the one answer never blocks
	abandon chan struct{}   // closed when the manager's reader is done
	once    sync.Once
	taken   bool // an answer arrived (under srvSession.mu)
}

type logsAnswer struct {
	body io.Reader
	err  error
}

func (p *pendingLogs) close() { p.once.Do(func() { close(p.abandon) }) }

// Logs asks node, which must hold a session with this manager, for the
// logs of its task taskID, and returns them as the engine sends them
// (multiplexed frames, or raw bytes for a TTY). The caller names the task
// from the store's record of it (placed on node); the node checks that it
// is its own. Closing the reader ends the node's stream.
func (h *Handler) Logs(ctx context.Context, node, taskID string, o agent.LogOptions) (io.ReadCloser, error) {
	h.mu.Lock()
	s := h.sessions[node]
	h.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("%w: %w", ErrNoSession, errdefs.Unavailable("node %s holds no dispatcher session with this manager", node))
	}
	id, err := newSessionID()
	if err != nil {
		return nil, err
	}
	p := &pendingLogs{answer: make(chan logsAnswer, 1), abandon: make(chan struct{})}
	s.mu.Lock()
	if len(s.logs) >= MaxLogStreams {
		s.mu.Unlock()
		return nil, errdefs.Unavailable("node %s is already sending %d log streams to this manager", node, MaxLogStreams)
	}
	s.logs[id] = p
	s.mu.Unlock()
	release := func() {
		p.close()
		s.mu.Lock()
		delete(s.logs, id)
		s.mu.Unlock()
	}
	b, _ := json.Marshal(logsRequest{ID: id, TaskID: taskID, LogOptions: o})
	t := time.NewTimer(logsAnswerTimeout)
	defer t.Stop()
	fail := func(err error) (io.ReadCloser, error) {
		release()
		return nil, err
	}
	noAnswer := errdefs.Unavailable("node %s did not answer the logs request", node)
	select {
	case s.ctl <- frame(frameLogs, b):
	case <-s.ctx.Done():
		return fail(noAnswer)
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-t.C:
		return fail(noAnswer)
	}
	select {
	case a := <-p.answer:
		if a.err != nil {
			return fail(a.err)
		}
		// A caller that goes away without closing still ends the stream.
		stop := context.AfterFunc(ctx, release)
		return &remoteLogs{body: a.body, release: func() { stop(); release() }}, nil
	case <-s.ctx.Done():
		return fail(noAnswer)
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-t.C:
		return fail(noAnswer)
	}
}

// remoteLogs reads a node's answer; Close lets the answer's handler
// return, which ends the node's stream (a Read in progress then fails).
type remoteLogs struct {
	body    io.Reader
	release func()
	closed  atomic.Bool
}

func (r *remoteLogs) Read(p []byte) (int, error) {
	if r.closed.Load() {
		return 0, io.ErrClosedPipe
	}
	return r.body.Read(p)
}

func (r *remoteLogs) Close() error {
	if r.closed.CompareAndSwap(false, true) {
		r.release()
	}
	return nil
}

// serveLogsAnswer serves a node's answer to one of its session's logs
// requests: it keeps the request open while the manager's reader reads
// its body, and returns when that reader is closed, the node goes or its
// session ends.
func (h *Handler) serveLogsAnswer(w http.ResponseWriter, r *http.Request) {
	s, err := h.session(r)
	if err != nil {
		h.fail(w, err)
		return
	}
	id := r.Header.Get(LogsHeader)
	s.mu.Lock()
	p := s.logs[id]
	if p != nil && p.taken {
		p = nil
	}
	if p != nil {
		p.taken = true
	}
	s.mu.Unlock()
	if p == nil {
		h.fail(w, errdefs.NotFound("no such logs request"))
		return
	}
	if r.Header.Get(logsErrorHeader) != "" {
		b, err := h.readBody(w, r, maxCallBody+maxErrorText)
		var we wireError
		if err != nil || json.Unmarshal(b, &we) != nil {
			we = wireError{Kind: "unavailable", Msg: "the node's logs answer was malformed"}
		}
		p.answer <- logsAnswer{err: fromWire(we)}
		w.WriteHeader(http.StatusOK)
		return
	}
	p.answer <- logsAnswer{body: r.Body}
	// The stream ends with the session it answers: a removed node, or one
	// whose heartbeats stopped, is not followed on a connection that
	// lingers.
	select {
	case <-p.abandon:
	case <-r.Context().Done():
	case <-s.ctx.Done():
	}
	// A Read of r.Body still in progress fails once this returns (the
	// server breaks the body's pipe), and the node's request ends.
	w.WriteHeader(http.StatusOK)
}

// serveLogs answers a manager's logs request on the node: it opens the
// task's logs with the agent (which serves only its own tasks) and posts
// them until they end, the manager stops reading, or the session ends.
func (s *Session) serveLogs(b []byte) {
	var req logsRequest
	if err := json.Unmarshal(b, &req); err != nil || req.ID == "" || len(req.ID) > 64 || len(req.TaskID) > 128 {
		s.log.Warn("malformed logs request from the manager")
		return
	}
	select {
	case s.logSem <- struct{}{}:
		defer func() { <-s.logSem }()
	default:
		s.answerLogs(req.ID, nil, errdefs.Unavailable("this node is already sending %d log streams", MaxLogStreams))
		return
	}
	var rc io.ReadCloser
	err := errdefs.Unavailable("this node serves no logs")
	if s.logs != nil {
		rc, err = s.logs(s.ctx, req.TaskID, req.LogOptions)
	}
	s.answerLogs(req.ID, rc, err)
}

// answerLogs posts rc (closed here) or err as the answer to request id.
func (s *Session) answerLogs(id string, rc io.ReadCloser, err error) {
	var body io.Reader = rc
	if err != nil {
		eb, _ := json.Marshal(toWire(err))
		body = bytes.NewReader(eb)
	}
	req, rerr := http.NewRequestWithContext(s.ctx, http.MethodPost, s.base+pathLogs, body)
	if rerr != nil {
		if rc != nil {
			rc.Close()
		}
		return
	}
	req.Header.Set(SessionHeader, s.id)
	req.Header.Set(LogsHeader, id)
	if err != nil {
		req.Header.Set(logsErrorHeader, "1")
	}
	// The transport closes the body (rc) when the request ends, which
	// also ends a followed stream's read.
	resp, derr := s.hc.Do(req)
	if derr != nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxControlFrame))
	resp.Body.Close()
}
