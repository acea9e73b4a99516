package dispatchnet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
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

	// DefaultLogsDeadline and DefaultLogsMaxBytes bound a node's answer to
	// a logs request that does not follow ("what is there now"), from the
	// request: past either the manager ends the stream cleanly (the
	// client keeps what it got) and frees the slot. A real task's logs
	// fit with a wide margin: Docker's `local` log driver keeps at most
	// 5 files of 20 MB (100 MB; distributions set json-file to 5 x 10 MB), and
	// the stream adds 8 bytes of frame and at most ~40 of timestamp per
	// line, so 1 GiB is 10 times the largest default; 10 minutes moves it
	// at 1.8 MB/s, 100 MB at 170 KB/s. Docker sets neither bound on its
	// own `docker logs` (a json-file log without max-size grows without
	// end: past 1 GiB a remote task's log is cut where a local one is not).
	DefaultLogsDeadline       = 10 * time.Minute
	DefaultLogsMaxBytes int64 = 1 << 30
	// nodeLogsGrace is how much longer than the manager's deadline a node
	// answers a request that does not follow (the manager counts from its
	// request, which may wait logsAnswerTimeout for the answer to start):
	// a manager that never reads nor ends the answer does not hold the
	// node's slot and engine stream for ever.
	nodeLogsGrace = logsAnswerTimeout + time.Minute
)

// The bounds a cut answer names in the manager's log.
const (
	boundDeadline = "deadline"
	boundBytes    = "bytes"
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
	start := time.Now()
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
		rl := &remoteLogs{body: a.body, release: func() { stop(); release() }}
		if !o.Follow {
			rl.limit(h.c.LogsMaxBytes, time.Until(start.Add(h.c.LogsDeadline)), func(bound string) {
				limit := slog.Duration("limit", h.c.LogsDeadline)
				if bound == boundBytes {
					limit = slog.Int64("limit", h.c.LogsMaxBytes)
				}
				h.log.Warn("a node's answer to a logs request that does not follow reached its bound: the stream ends there",
					"node", node, "task", taskID, "bound", bound, limit)
			})
		}
		return rl, nil
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

	// The bounds of an answer that does not follow (limited): the bytes
	// the reader may still take (only Read uses left), and the deadline
	// (expired once it passed). Past either the answer ends cleanly, and
	// cut frees the slot at once, not only at the reader's Close.
	limited bool
	left    int64
	expired atomic.Bool
	timer   *time.Timer
	cutOnce sync.Once
	onCut   func(bound string)
}

// limit bounds the answer to maxBytes and to d from now; onCut is told
// which bound ended it.
func (r *remoteLogs) limit(maxBytes int64, d time.Duration, onCut func(bound string)) {
	r.limited, r.left, r.onCut = true, maxBytes, onCut
	r.timer = time.AfterFunc(d, func() {
		if r.closed.Load() {
			return
		}
		r.expired.Store(true)
		// Ends the node's request: a Read waiting on a trickle returns.
		r.cut(boundDeadline)
	})
}

// cut ends a bounded answer, once: the node's request ends and the slot
// is free. A Read that sees the bound waits here until both are done.
func (r *remoteLogs) cut(bound string) {
	r.cutOnce.Do(func() {
		r.onCut(bound)
		r.release()
	})
}

func (r *remoteLogs) Read(p []byte) (int, error) {
	if r.closed.Load() {
		return 0, io.ErrClosedPipe
	}
	if !r.limited {
		return r.body.Read(p)
	}
	if r.expired.Load() {
		r.cut(boundDeadline)
		return 0, io.EOF
	}
	if r.left <= 0 {
		r.cut(boundBytes)
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.body.Read(p)
	r.left -= int64(n)
	if err != nil && r.expired.Load() {
		// The deadline broke the body under this Read: what was read
		// stays, and the end is clean.
		r.cut(boundDeadline)
		return n, io.EOF
	}
	return n, err
}

func (r *remoteLogs) Close() error {
	if r.closed.CompareAndSwap(false, true) {
		if r.timer != nil {
			r.timer.Stop()
		}
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
		s.answerLogs(s.ctx, req.ID, nil, errdefs.Unavailable("this node is already sending %d log streams", MaxLogStreams))
		return
	}
	ctx := s.ctx
	if !req.Follow {
		// The manager bounds such an answer too (from its request, hence
		// the grace here); one that neither reads nor ends it must not
		// hold this slot and the engine's stream for the session's life.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(s.ctx, s.logsDeadline)
		defer cancel()
	}
	var rc io.ReadCloser
	err := errdefs.Unavailable("this node serves no logs")
	if s.logs != nil {
		rc, err = s.logs(ctx, req.TaskID, req.LogOptions)
	}
	s.answerLogs(ctx, req.ID, rc, err)
}

// answerLogs posts rc (closed here) or err as the answer to request id,
// until ctx ends.
func (s *Session) answerLogs(ctx context.Context, id string, rc io.ReadCloser, err error) {
	var body io.Reader = rc
	if err != nil {
		eb, _ := json.Marshal(toWire(err))
		body = bytes.NewReader(eb)
	}
	req, rerr := http.NewRequestWithContext(ctx, http.MethodPost, s.base+pathLogs, body)
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
