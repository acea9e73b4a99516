package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"
)

// engineHost is the placeholder authority of requests sent over the engine
// socket when the client sent no Host of its own.
const engineHost = "docker"

// Engine is how the proxy reaches the engine: the daemon's one engine
// dialer (enginehost.Host), shared with its engine client.
type Engine interface {
	// DialContext connects to the engine, whatever network and address.
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Proxy forwards Docker Engine API requests to the engine's unix socket.
// It is safe for concurrent use.
type Proxy struct {
	// socket names the engine in messages.
	socket    string
	engine    Engine
	log       *slog.Logger
	transport *http.Transport

	// base is cancelled by Close; every request and tunnel in flight is
	// tied to it.
	base   context.Context
	cancel context.CancelFunc
}

// New returns a Proxy for the engine that engine dials; name (its socket
// path) is what messages call it. A nil log discards.
func New(engine Engine, name string, log *slog.Logger) *Proxy {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{socket: name, engine: engine, log: log}
	p.base, p.cancel = context.WithCancel(context.Background())
	p.transport = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return p.dial(ctx)
		},
		// The engine decides encodings; the client gets exactly its bytes.
		DisableCompression:  true,
		MaxIdleConns:        32,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
		// No response-header timeout: `docker wait`, `docker pull` and the
		// like legitimately take as long as they take.
	}
	return p
}

// Close aborts every request and tunnel in flight and drops idle engine
// connections. http.Server.Shutdown does not wait for hijacked connections
// nor end endless streams (`docker logs -f`, `docker events`); call Close
// after it. The Proxy must not be used afterwards.
func (p *Proxy) Close() error {
	p.cancel()
	p.transport.CloseIdleConnections()
	return nil
}

// dialError marks a failure to reach the engine socket at all.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func (p *Proxy) dial(ctx context.Context) (net.Conn, error) {
	c, err := p.engine.DialContext(ctx, "unix", p.socket)
	if err != nil {
		return nil, &dialError{err}
	}
	return c, nil
}

// Ping does GET /_ping on the engine and returns its API-Version header.
func (p *Proxy) Ping(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+engineHost+"/_ping", nil)
	if err != nil {
		return "", err
	}
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		return "", p.unreachable(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("hush: the Docker Engine at %s answered /_ping with %s", p.socket, resp.Status)
	}
	v := resp.Header.Get("API-Version")
	if v == "" {
		return "", fmt.Errorf("hush: the Docker Engine at %s sent no API-Version in /_ping", p.socket)
	}
	return v, nil
}

func (p *Proxy) unreachable(err error) error {
	return fmt.Errorf("hush: the Docker Engine at %s is not reachable: %w", p.socket, err)
}

// ServeHTTP forwards r to the engine and relays the answer.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if wantsHijack(r) {
		p.serveHijack(w, r)
		return
	}
	p.servePlain(w, r)
}

func (p *Proxy) servePlain(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(p.base, cancel)()

	out := outgoing(ctx, r)
	removeHopByHop(out.Header)

	rc := http.NewResponseController(w)
	// The engine may answer before it has read the whole body (or stream
	// progress while reading it); keep the request body readable after the
	// response has started.
	_ = rc.EnableFullDuplex()

	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		p.fail(w, r, start, err)
		return
	}
	defer resp.Body.Close()

	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	removeHopByHop(h)
	w.WriteHeader(resp.StatusCode)
	_ = rc.Flush()
	err = copyFlush(w, rc, resp.Body)
	p.logDone(r, resp.StatusCode, start, err)
}

// fail answers a request the engine did not answer.
func (p *Proxy) fail(w http.ResponseWriter, r *http.Request, start time.Time, err error) {
	var de *dialError
	switch {
	case errors.As(err, &de):
		writeError(w, http.StatusServiceUnavailable, p.unreachable(de.err).Error())
		p.log.Warn("engine unreachable", "socket", p.socket, "method", r.Method, "path", r.URL.Path, "err", de.err)
	case r.Context().Err() != nil:
		// The client went away; nobody is left to answer.
		p.logDone(r, 0, start, r.Context().Err())
	case p.base.Err() != nil:
		writeError(w, http.StatusServiceUnavailable, "hush: hushd is shutting down")
		p.logDone(r, http.StatusServiceUnavailable, start, p.base.Err())
	default:
		writeError(w, http.StatusBadGateway, fmt.Sprintf("hush: the Docker Engine at %s failed: %v", p.socket, err))
		p.log.Warn("engine request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
}

func (p *Proxy) logDone(r *http.Request, status int, start time.Time, err error) {
	// Method, path and status only: bodies and query values may carry
	// secrets.
	attrs := []any{"method", r.Method, "path", r.URL.Path, "status", status, "dur", time.Since(start)}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	p.log.Debug("engine", attrs...)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(struct {
		Message string `json:"message"`
	}{msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// outgoing builds the engine request for r: same method, path, raw query,
// headers and body.
func outgoing(ctx context.Context, r *http.Request) *http.Request {
	out := r.Clone(ctx)
	out.RequestURI = ""
	out.URL = &url.URL{
		Scheme:   "http",
		Host:     engineHost,
		Path:     r.URL.Path,
		RawPath:  r.URL.RawPath,
		RawQuery: r.URL.RawQuery,
	}
	if out.Host == "" {
		out.Host = engineHost
	}
	out.Body = r.Body // Clone keeps it; be explicit: streamed, not copied.
	if r.ContentLength == 0 && len(r.TransferEncoding) == 0 {
		out.Body = nil
	}
	if out.Header == nil {
		out.Header = make(http.Header)
	}
	// net/http would add its own User-Agent when the client sent none.
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = []string{""}
	}
	out.Close = false
	return out
}

// hopByHop are the headers that describe one connection, not the message
// (RFC 9110 section 7.6.1); a proxy must not forward them.
var hopByHop = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopByHop {
		h.Del(k)
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyFlush copies src to w, flushing after every write so that streams
// (logs -f, events, pull and build progress) arrive as the engine sends
// them.
func copyFlush(w io.Writer, rc *http.ResponseController, src io.Reader) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
				return err
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
