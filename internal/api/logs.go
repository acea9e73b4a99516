package api

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
)

// LogSource streams a container's logs as the engine sends them:
// multiplexed frames, or raw bytes for a container created with a TTY.
type LogSource interface {
	Logs(ctx context.Context, id string, follow bool, tail string, timestamps bool, since string) (io.ReadCloser, error)
}

// ErrNodeNotConnected: a RemoteLogSource wraps it when no manager holds a
// dispatcher session of the node (down, or removed): its logs cannot be had.
var ErrNodeNotConnected = errors.New("the node holds no dispatcher session")

// RemoteLogSource streams the logs of a task that runs on another node,
// from that node (as the engine there sends them).
type RemoteLogSource interface {
	TaskLogs(ctx context.Context, nodeID, taskID string, follow bool, tail string, timestamps bool, since string) (io.ReadCloser, error)
}

// maxPiece bounds what the log relay holds of one line: the workload
// controls the bytes, and a frame header may claim up to 4 GiB. Longer
// lines go out as several pieces, each with its own context, as Swarm sends
// a long line as partial messages.
const maxPiece = 16 << 10

// maxTimestamp bounds the engine timestamp kept for continuation pieces.
const maxTimestamp = 64

// Media types of a log stream (as dockerd names them).
const (
	mediaMultiplexed = "application/vnd.docker.multiplexed-stream"
	mediaRaw         = "application/vnd.docker.raw-stream"
)

func (s *Server) serviceLogs(w http.ResponseWriter, r *http.Request) {
	svc, err := s.Services.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	_, tasks, err := s.Services.Snapshot(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	cs := svc.Spec.TaskTemplate.ContainerSpec
	s.streamLogs(w, r, tasksOf(svc.ID, tasks), cs != nil && cs.TTY, func(ctx context.Context) ([]*model.Task, error) {
		if _, err := s.Services.Get(ctx, svc.ID); err != nil {
			return nil, err
		}
		_, tasks, err := s.Services.Snapshot(ctx)
		return tasksOf(svc.ID, tasks), err
	})
}

// tasksOf returns the tasks of service id.
func tasksOf(id string, tasks []*model.Task) []*model.Task {
	var mine []*model.Task
	for _, t := range tasks {
		if t.ServiceID == id {
			mine = append(mine, t)
		}
	}
	return mine
}

func hasContainer(t *model.Task) bool {
	return t.Status.ContainerStatus != nil && t.Status.ContainerStatus.ContainerID != ""
}

// followNewTasks adds to a followed service's stream the tasks that get a
// container after it began (an update, a restart, a scale-up, a node's
// replacement), from their first line, as Swarm's `service logs -f` does:
// it looks at the service's tasks every followRetry until the client goes
// or the service is removed (more fails with not found).
func (s *Server) followNewTasks(ctx context.Context, more func(context.Context) ([]*model.Task, error), started map[string]bool, start func(*model.Task, string)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(followRetry):
		}
		tasks, err := more(ctx)
		if errors.Is(err, errdefs.ErrNotFound) {
			return
		}
		if err != nil {
			// The store may answer again: keep what is followed.
			s.log.Debug("service logs: tasks unavailable", "err", err)
			continue
		}
		for _, t := range tasks {
			if !started[t.ID] && hasContainer(t) {
				started[t.ID] = true
				start(t, "all")
			}
		}
	}
}

func (s *Server) taskLogs(w http.ResponseWriter, r *http.Request) {
	t, err := s.Services.GetTask(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.streamLogs(w, r, []*model.Task{t}, taskTTY(t), nil)
}

func taskTTY(t *model.Task) bool {
	return t.Spec.ContainerSpec != nil && t.Spec.ContainerSpec.TTY
}

// streamLogs merges the tasks' container logs into one stream. As in Swarm,
// a TTY service's logs are a raw stream (the CLI prints them only with
// --raw) and others are multiplexed; with details, every line carries the
// task context the docker CLI needs to name the task.
func (s *Server) streamLogs(w http.ResponseWriter, r *http.Request, tasks []*model.Task, tty bool, more func(context.Context) ([]*model.Task, error)) {
	if s.Logs == nil {
		s.writeError(w, r, errdefs.Unavailable("logs need the Docker Engine, which is not reachable"))
		return
	}
	q := r.URL.Query()
	follow, _ := strconv.ParseBool(q.Get("follow"))
	ts, _ := strconv.ParseBool(q.Get("timestamps"))
	details, _ := strconv.ParseBool(q.Get("details"))
	wantOut, _ := strconv.ParseBool(q.Get("stdout"))
	wantErr, _ := strconv.ParseBool(q.Get("stderr"))
	if !wantOut && !wantErr {
		s.writeError(w, r, errdefs.BadRequest("Bad parameters: you must choose at least one stream"))
		return
	}
	if err := checkLogsParams(q.Get("tail"), q.Get("since")); err != nil {
		s.writeError(w, r, err)
		return
	}
	if tty {
		w.Header().Set("Content-Type", mediaRaw)
	} else {
		w.Header().Set("Content-Type", mediaMultiplexed)
	}
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	// unreachable: the nodes whose tasks' logs could not be had because no
	// manager holds a session of them (under mu).
	unreachable := map[string]bool{}
	// start streams task t's logs into the response (tail: how many of
	// its last lines).
	start := func(t *model.Task, tail string) {
		remote := t.NodeID != "" && t.NodeID != s.Node.ID && s.RemoteLogs != nil
		var rc io.ReadCloser
		var err error
		switch {
		case remote && follow:
			// Opened (and opened again) by followRemote below.
		case remote:
			// Another node's task: its container is on that node's engine.
			rc, err = s.RemoteLogs.TaskLogs(r.Context(), t.NodeID, t.ID, follow, tail, ts, q.Get("since"))
		default:
			rc, err = s.Logs.Logs(r.Context(), t.Status.ContainerStatus.ContainerID, follow, tail, ts, q.Get("since"))
		}
		if err != nil {
			s.log.Debug("task logs unavailable", "task", t.ID, "node", t.NodeID, "err", err)
			if errors.Is(err, ErrNodeNotConnected) {
				mu.Lock()
				unreachable[t.NodeID] = true
				mu.Unlock()
			}
			return
		}
		var prefix []byte
		if details {
			prefix = []byte("com.docker.swarm.node.id=" + t.NodeID + ",com.docker.swarm.service.id=" + t.ServiceID + ",com.docker.swarm.task.id=" + t.ID + " ")
		}
		out := &logWriter{w: w, mux: !tty, ts: ts, prefix: prefix}
		emit := func(stream byte, piece []byte, cont bool) error {
			if stream == 2 && !wantErr || stream != 2 && !wantOut {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			if err := out.write(stream, piece, cont); err != nil {
				return err
			}
			if flusher != nil {
				flusher.Flush()
			}
			return nil
		}
		read := readFrames
		if taskTTY(t) {
			// A TTY container's output is not framed: parsing it as
			// frames would read its bytes as lengths.
			read = readRaw
		}
		wg.Add(1)
		if rc == nil {
			go func() {
				defer wg.Done()
				s.followRemote(r.Context(), t, tail, q.Get("since"), ts, read, emit)
			}()
			return
		}
		go func() {
			defer wg.Done()
			defer rc.Close()
			_ = read(rc, emit)
		}()
	}
	started := map[string]bool{}
	for _, t := range tasks {
		if hasContainer(t) {
			started[t.ID] = true
			start(t, q.Get("tail"))
		}
	}
	if follow && more != nil {
		s.followNewTasks(r.Context(), more, started, start)
	}
	wg.Wait()
	if len(unreachable) > 0 {
		// As Swarm's log broker, whose subscription ends with this error
		// when a node of the tasks has no connection to it; dockerd writes
		// a stream's error on the system-error stream (3) of a multiplexed
		// stream, inline in a raw one, and the docker CLI prints it as
		// `error from daemon in stream: …` and exits 1. A followed stream
		// asks such nodes again and never ends by itself: nothing to say.
		nodes := make([]string, 0, len(unreachable))
		for n := range unreachable {
			nodes = append(nodes, n)
		}
		sort.Strings(nodes)
		reasons := make([]string, len(nodes))
		for i, n := range nodes {
			reasons[i] = "node " + n + " is not available"
		}
		msg := []byte("Error grabbing logs: rpc error: code = Unknown desc = warning: incomplete log stream. some logs could not be retrieved for the following reasons: " + strings.Join(reasons, ", ") + "\n")
		if !tty {
			var hdr [8]byte
			hdr[0] = 3
			binary.BigEndian.PutUint32(hdr[4:], uint32(len(msg)))
			msg = append(hdr[:], msg...)
		}
		_, _ = w.Write(msg)
	}
}

// followRetry is how long followRemote waits before it asks again for a
// stream that broke.
const followRetry = time.Second

// followRemote follows the logs of task t of another node for as long as
// the client reads and the task may still write. Such a stream comes
// through the node's dispatcher session (and, when another manager holds
// it, that manager's relay), so it breaks when the session moves to
// another manager or the relaying manager goes, while the task runs on; as
// Swarm's follow, which goes on across such moves, the stream is then
// asked for again, from just after the last line's time (hush always asks
// for timestamps, and drops them before the client unless it asked for
// them), so no line is lost or shown twice.
func (s *Server) followRemote(ctx context.Context, t *model.Task, tail, since string, ts bool, read func(io.Reader, pieceFunc) error, emit pieceFunc) {
	var last time.Time
	var clientGone bool
	track := func(stream byte, piece []byte, cont bool) error {
		if !cont {
			if i := indexByte(piece, ' '); i > 0 && i <= maxTimestamp {
				if at, err := time.Parse(time.RFC3339Nano, string(piece[:i])); err == nil {
					last = at
					if !ts {
						piece = piece[i+1:]
					}
				}
			}
		}
		if err := emit(stream, piece, cont); err != nil {
			clientGone = true
			return err
		}
		return nil
	}
	for {
		rc, err := s.RemoteLogs.TaskLogs(ctx, t.NodeID, t.ID, true, tail, true, since)
		if err == nil {
			_ = read(rc, track)
			rc.Close()
		} else {
			s.log.Debug("task logs unavailable", "task", t.ID, "node", t.NodeID, "err", err)
		}
		if clientGone || ctx.Err() != nil || !s.taskMayLog(ctx, t) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(followRetry):
		}
		if !last.IsZero() {
			// The engine's since is inclusive: start after the last line.
			next := last.Add(time.Nanosecond)
			since, tail = fmt.Sprintf("%d.%09d", next.Unix(), next.Nanosecond()), "all"
		}
	}
}

// taskMayLog reports whether a task may still write to its logs: it is
// still placed on the same node and has not reached a final state, and
// the node is asked to run it.
func (s *Server) taskMayLog(ctx context.Context, t *model.Task) bool {
	cur, err := s.Services.GetTask(ctx, t.ID)
	if err != nil {
		// The store is unreachable: the task may well run on; a removed
		// task writes nothing more.
		return !errors.Is(err, errdefs.ErrNotFound)
	}
	return cur.NodeID == t.NodeID && !model.Terminal(cur.Status.State) && model.Runs(cur.DesiredState)
}

// checkLogsParams refuses a tail or since the engine would refuse for
// each container, in Swarm's order and with its texts (Swarm answers 500;
// it is the client's error, so hush answers 400). Checked here, before the
// 200 goes out: an engine refusal per container could only be dropped.
func checkLogsParams(tail, since string) error {
	if tail != "" && tail != "all" {
		n, err := strconv.Atoi(tail)
		if err != nil {
			return errdefs.BadRequest(`tail value must be a positive integer or "all"`)
		}
		if n < 0 {
			return errdefs.BadRequest("negative tail values not supported")
		}
	}
	if since != "" {
		sec, frac, hasFrac := strings.Cut(since, ".")
		_, err := strconv.ParseInt(sec, 10, 64)
		if err == nil && hasFrac {
			_, err = strconv.ParseInt(frac, 10, 64)
		}
		if err != nil {
			return errdefs.BadRequest("could not parse since timestamp: %s", err.Error())
		}
	}
	return nil
}

// pieceFunc receives one piece of a line: at most maxPiece bytes, ending
// with its newline if it has one; cont marks a piece that continues the
// previous piece of the same stream. The slice is only valid during the call.
type pieceFunc func(stream byte, piece []byte, cont bool) error

// readFrames reads an engine log stream of multiplexed frames (8-byte
// header: stream, 0, 0, 0, big-endian length) and passes on their lines.
// Payloads are read in bounded pieces, so memory stays bounded whatever
// length a header claims.
func readFrames(rd io.Reader, fn pieceFunc) error {
	br := bufio.NewReaderSize(rd, maxPiece)
	buf := make([]byte, maxPiece)
	var hdr [8]byte
	cont := map[byte]bool{}
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		// Only stdout and stderr exist in a log stream; anything else is
		// passed on as stdout rather than as a stream the client rejects.
		stream := byte(1)
		if hdr[0] == 2 {
			stream = 2
		}
		for left := int64(binary.BigEndian.Uint32(hdr[4:])); left > 0; {
			n := min(left, maxPiece)
			if _, err := io.ReadFull(br, buf[:n]); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
			left -= n
			for chunk := buf[:n]; len(chunk) > 0; {
				i := len(chunk)
				for j, c := range chunk {
					if c == '\n' {
						i = j + 1
						break
					}
				}
				if err := fn(stream, chunk[:i], cont[stream]); err != nil {
					return err
				}
				cont[stream] = chunk[i-1] != '\n'
				chunk = chunk[i:]
			}
		}
	}
}

// readRaw reads a TTY container's log stream (raw bytes, all stdout) and
// passes on its lines in bounded pieces.
func readRaw(rd io.Reader, fn pieceFunc) error {
	br := bufio.NewReaderSize(rd, maxPiece)
	cont := false
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if ferr := fn(1, line, cont); ferr != nil {
				return ferr
			}
			cont = line[len(line)-1] != '\n'
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			return nil
		default:
			return err
		}
	}
}

// logWriter writes pieces to the client: framed (mux) or raw, with the
// task context after the engine's timestamp, where the CLI looks for it.
type logWriter struct {
	w      io.Writer
	mux    bool
	ts     bool
	prefix []byte
	// lastTS is the timestamp of the line being continued, per stream, so
	// that every piece has the "timestamp context message" form.
	lastTS map[byte][]byte
	body   []byte
}

func (lw *logWriter) write(stream byte, piece []byte, cont bool) error {
	body := lw.body[:0]
	switch {
	case lw.ts && !cont:
		i := indexByte(piece, ' ')
		if i < 0 || i > maxTimestamp {
			i = -1
		}
		if lw.lastTS == nil {
			lw.lastTS = map[byte][]byte{}
		}
		lw.lastTS[stream] = append(lw.lastTS[stream][:0], piece[:i+1]...)
		body = append(append(append(body, piece[:i+1]...), lw.prefix...), piece[i+1:]...)
	case lw.ts:
		body = append(append(append(body, lw.lastTS[stream]...), lw.prefix...), piece...)
	default:
		body = append(append(body, lw.prefix...), piece...)
	}
	lw.body = body
	if lw.mux {
		var hdr [8]byte
		hdr[0] = stream
		binary.BigEndian.PutUint32(hdr[4:], uint32(len(body)))
		if _, err := lw.w.Write(hdr[:]); err != nil {
			return err
		}
	}
	_, err := lw.w.Write(body)
	return err
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}
