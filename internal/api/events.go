package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	hushevents "github.com/hush-secrets/hush/internal/manager/events"
	"github.com/moby/moby/api/types/events"
)

// EventSource is hush's own event stream (internal/manager/events).
type EventSource interface {
	Subscribe(ctx context.Context, f hushevents.Filter, since, until time.Time, live bool) ([]events.Message, *hushevents.Subscription, error)
}

// EngineStreamer opens a request to the host's engine and returns its
// answer unread (internal/proxy).
type EngineStreamer interface {
	Open(ctx context.Context, method, pathQuery string, h http.Header) (*http.Response, error)
}

// maxEngineEventLine bounds one line of the engine's event stream; an event
// is a few hundred bytes, a container with many labels a few kilobytes.
const maxEngineEventLine = 1 << 20

// events serves GET /events: the engine's stream with hush's own swarm
// events merged in, one JSON object per line, each flushed.
//
// The engine knows nothing of hush's objects, and hush's history knows
// nothing of the engine's, so a request with history (since or until) is
// served in two parts to keep the lines in time order: first the engine's
// events up to now (until=now, a finite answer) merged by time with hush's
// history, then the live part (since=now) of both as they come. The
// client's filters go to the engine unchanged and are applied to hush's
// events here; a filter the engine's events cannot match (type=secret)
// simply yields none of them.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	since, err := hushevents.ParseTime(q.Get("since"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	until, err := hushevents.ParseTime(q.Get("until"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !until.IsZero() && until.Before(since) {
		s.writeError(w, r, errdefs.BadRequest("`since` time (%s) cannot be after `until` time (%s)", q.Get("since"), q.Get("until")))
		return
	}
	f, err := hushevents.ParseFilters(q.Get("filters"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	now := time.Now()
	history := !since.IsZero() || !until.IsZero()
	pastOnly := !until.IsZero() && until.Before(now)

	past, sub, err := s.Events.Subscribe(ctx, f, since, until, !pastOnly)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if sub != nil {
		defer sub.Close()
	}

	es := &eventStream{w: w, flush: flusherOf(w)}
	// The engine request of the first part: the whole answer when only the
	// past is asked, the history up to now otherwise. A since in the future
	// has no history to fetch.
	var first *http.Response
	if s.EngineEvents != nil && (pastOnly || (history && !since.After(now))) {
		fq := cloneValues(q)
		if !pastOnly {
			fq.Set("until", unixNano(now))
		}
		if first, err = s.openEngineEvents(ctx, r, fq); err != nil {
			s.writeError(w, r, err)
			return
		}
		defer first.Body.Close()
		if first.StatusCode != http.StatusOK {
			relayEngineError(w, first)
			return
		}
		es.start(first.Header.Get("Content-Type"))
		if err := es.mergeByTime(first.Body, past); err != nil {
			return
		}
		_ = first.Body.Close()
	} else {
		// With an engine, the stream starts with its answer (and its
		// content type) unless there is something to send before.
		if s.EngineEvents == nil || len(past) > 0 {
			es.start("")
		}
		for _, m := range past {
			if es.event(m) != nil {
				return
			}
		}
	}
	if pastOnly {
		return
	}

	// The live part.
	var lines <-chan []byte
	if s.EngineEvents != nil {
		lq := cloneValues(q)
		if history {
			// One nanosecond on: the first part already had what the
			// engine recorded up to now, inclusive.
			lq.Set("since", unixNano(now.Add(time.Nanosecond)))
			if since.After(now) {
				lq.Set("since", q.Get("since"))
			}
		}
		resp, err := s.openEngineEvents(ctx, r, lq)
		if err != nil {
			if !es.started {
				s.writeError(w, r, err)
			}
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			if !es.started {
				relayEngineError(w, resp)
			}
			return
		}
		es.start(resp.Header.Get("Content-Type"))
		ch := make(chan []byte)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			readLines(ctx, resp.Body, ch)
		}()
		// Whoever ends first, the reader is stopped and waited for: the
		// body is closed and ctx cancelled before the wait.
		defer wg.Wait()
		defer resp.Body.Close()
		defer cancel()
		lines = ch
	} else {
		es.start("")
	}
	var deadline <-chan time.Time
	if !until.IsZero() {
		t := time.NewTimer(time.Until(until))
		defer t.Stop()
		deadline = t.C
	}
	for {
		select {
		case b, ok := <-lines:
			if !ok {
				return // the engine ended its stream
			}
			if es.line(b) != nil {
				return
			}
		case m, ok := <-sub.C:
			if !ok {
				if sub.Dropped() {
					s.log.Warn("events: client too slow, stream ended", "path", r.URL.Path)
				}
				return
			}
			if es.event(m) != nil {
				return
			}
		case <-deadline:
			return
		case <-ctx.Done():
			return
		}
	}
}

// openEngineEvents opens the engine's /events with query q, on the path
// the client used (so its API version applies).
func (s *Server) openEngineEvents(ctx context.Context, r *http.Request, q url.Values) (*http.Response, error) {
	path, _, _ := strings.Cut(r.RequestURI, "?")
	if path == "" {
		path = r.URL.Path
	}
	h := http.Header{}
	for _, k := range []string{"Accept", "User-Agent"} {
		if v, ok := r.Header[k]; ok {
			h[k] = v
		}
	}
	pq := path
	if enc := q.Encode(); enc != "" {
		pq += "?" + enc
	}
	return s.EngineEvents.Open(ctx, http.MethodGet, pq, h)
}

// relayEngineError passes on an engine refusal (bounded) as it came.
func relayEngineError(w http.ResponseWriter, resp *http.Response) {
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, io.LimitReader(resp.Body, 64<<10))
}

// readLines sends each non-empty line of body on ch until the body ends or
// ctx does, then closes ch. A line over maxEngineEventLine ends the stream.
func readLines(ctx context.Context, body io.Reader, ch chan<- []byte) {
	defer close(ch)
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), maxEngineEventLine)
	for sc.Scan() {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		select {
		case ch <- bytes.Clone(b):
		case <-ctx.Done():
			return
		}
	}
}

// eventStream writes event lines, each flushed.
type eventStream struct {
	w       http.ResponseWriter
	flush   func()
	started bool
}

// start sends the 200 and headers once, with the engine's content type
// (dockerd's depends on the API version) or dockerd's default.
func (e *eventStream) start(contentType string) {
	if e.started {
		return
	}
	e.started = true
	if contentType == "" {
		contentType = "application/json"
	}
	e.w.Header().Set("Content-Type", contentType)
	e.w.WriteHeader(http.StatusOK)
	e.flush()
}

func (e *eventStream) line(b []byte) error {
	if _, err := e.w.Write(append(b, '\n')); err != nil {
		return err
	}
	e.flush()
	return nil
}

func (e *eventStream) event(m events.Message) error {
	b, err := json.Marshal(&m)
	if err != nil {
		return fmt.Errorf("events: encode: %w", err)
	}
	return e.line(b)
}

// mergeByTime writes the engine's finite, time-ordered answer and hush's
// time-ordered events past as one time-ordered stream.
func (e *eventStream) mergeByTime(engine io.Reader, past []events.Message) error {
	sc := bufio.NewScanner(engine)
	sc.Buffer(make([]byte, 0, 64<<10), maxEngineEventLine)
	for sc.Scan() {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var t struct {
			TimeNano int64 `json:"timeNano"`
		}
		// A line without a time goes out where it is.
		_ = json.Unmarshal(b, &t)
		for len(past) > 0 && past[0].TimeNano <= t.TimeNano {
			if err := e.event(past[0]); err != nil {
				return err
			}
			past = past[1:]
		}
		if err := e.line(bytes.Clone(b)); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	for _, m := range past {
		if err := e.event(m); err != nil {
			return err
		}
	}
	return nil
}

// flusherOf returns the connection's Flush, or a no-op for a writer that
// has none.
func flusherOf(w http.ResponseWriter) func() {
	if f, ok := w.(http.Flusher); ok {
		return f.Flush
	}
	return func() {}
}

func cloneValues(q url.Values) url.Values {
	out := make(url.Values, len(q))
	for k, v := range q {
		out[k] = append([]string(nil), v...)
	}
	return out
}

// unixNano formats t as dockerd reads a since/until parameter.
func unixNano(t time.Time) string {
	return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond())
}
