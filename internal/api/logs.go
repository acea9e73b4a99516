package api

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
)

// LogSource streams a container's logs as the engine frames them.
type LogSource interface {
	Logs(ctx context.Context, id string, follow bool, tail string, timestamps bool, since string) (io.ReadCloser, error)
}

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
	var mine []*model.Task
	for _, t := range tasks {
		if t.ServiceID == svc.ID {
			mine = append(mine, t)
		}
	}
	s.streamLogs(w, r, mine)
}

func (s *Server) taskLogs(w http.ResponseWriter, r *http.Request) {
	t, err := s.Services.GetTask(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.streamLogs(w, r, []*model.Task{t})
}

// streamLogs merges the tasks' container logs into one multiplexed stream.
// Every line is prefixed with the task context the docker CLI expects
// (node, service and task IDs) so `docker service logs` can name the task.
func (s *Server) streamLogs(w http.ResponseWriter, r *http.Request, tasks []*model.Task) {
	if s.Logs == nil {
		s.writeError(w, r, errdefs.Unavailable("logs need the Docker Engine, which is not reachable"))
		return
	}
	q := r.URL.Query()
	follow, _ := strconv.ParseBool(q.Get("follow"))
	ts, _ := strconv.ParseBool(q.Get("timestamps"))
	wantOut, _ := strconv.ParseBool(q.Get("stdout"))
	wantErr, _ := strconv.ParseBool(q.Get("stderr"))
	if !wantOut && !wantErr {
		s.writeError(w, r, errdefs.BadRequest("Bad parameters: you must choose at least one stream"))
		return
	}
	w.Header().Set("Content-Type", "application/vnd.docker.multiplexed-stream")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, t := range tasks {
		if t.Status.ContainerStatus == nil || t.Status.ContainerStatus.ContainerID == "" {
			continue
		}
		rc, err := s.Logs.Logs(r.Context(), t.Status.ContainerStatus.ContainerID, follow, q.Get("tail"), ts, q.Get("since"))
		if err != nil {
			continue
		}
		prefix := []byte("com.docker.swarm.node.id=" + t.NodeID + ",com.docker.swarm.service.id=" + t.ServiceID + ",com.docker.swarm.task.id=" + t.ID + " ")
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer rc.Close()
			_ = relayFrames(rc, func(stream byte, line []byte) error {
				if stream == 1 && !wantOut || stream == 2 && !wantErr {
					return nil
				}
				mu.Lock()
				defer mu.Unlock()
				if err := writeFrame(w, stream, ts, prefix, line); err != nil {
					return err
				}
				if flusher != nil {
					flusher.Flush()
				}
				return nil
			})
		}()
	}
	wg.Wait()
}

// relayFrames reads an engine log stream (8-byte headers: stream, 0, 0, 0,
// big-endian length) and calls fn per line.
func relayFrames(rd io.Reader, fn func(stream byte, line []byte) error) error {
	br := bufio.NewReader(rd)
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		n := binary.BigEndian.Uint32(hdr[4:])
		buf := make([]byte, n)
		if _, err := io.ReadFull(br, buf); err != nil {
			return err
		}
		for len(buf) > 0 {
			i := len(buf)
			for j, c := range buf {
				if c == '\n' {
					i = j + 1
					break
				}
			}
			if err := fn(hdr[0], buf[:i]); err != nil {
				return err
			}
			buf = buf[i:]
		}
	}
}

// writeFrame writes one multiplexed frame; with timestamps the engine's
// timestamp stays first, and the context goes after it, where the CLI
// looks for it.
func writeFrame(w io.Writer, stream byte, ts bool, prefix, line []byte) error {
	var body []byte
	if ts {
		if i := indexByte(line, ' '); i >= 0 {
			body = append(append(append(body, line[:i+1]...), prefix...), line[i+1:]...)
		} else {
			body = append(append(body, prefix...), line...)
		}
	} else {
		body = append(append(body, prefix...), line...)
	}
	var hdr [8]byte
	hdr[0] = stream
	binary.BigEndian.PutUint32(hdr[4:], uint32(len(body)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(body)
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
