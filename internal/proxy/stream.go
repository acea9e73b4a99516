package proxy

import (
	"context"
	"io"
	"net/http"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// Open sends one request without a body to the engine and returns its
// answer unread, for a handler that consumes an engine stream itself
// rather than relaying it (hush's /events merges the engine's with its
// own). pathQuery is the path with any /vX.Y prefix and the raw query. The
// caller closes the body; ctx ending, or Close of the Proxy, aborts it.
//
// An engine that cannot be reached is errdefs.ErrUnavailable, with the
// text the pass-through answers then.
func (p *Proxy) Open(ctx context.Context, method, pathQuery string, h http.Header) (*http.Response, error) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(p.base, cancel)
	req, err := http.NewRequestWithContext(ctx, method, "http://"+engineHost+pathQuery, nil)
	if err != nil {
		stop()
		cancel()
		return nil, errdefs.BadRequest("%s", err.Error())
	}
	for k, vv := range h {
		req.Header[k] = vv
	}
	removeHopByHop(req.Header)
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""}
	}
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		stop()
		cancel()
		if p.base.Err() != nil {
			return nil, errdefs.Unavailable("hush: hushd is shutting down")
		}
		return nil, errdefs.Unavailable("%s", p.unreachable(err).Error())
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, done: func() { stop(); cancel() }}
	return resp, nil
}

// cancelBody releases the request's context when the body is closed.
type cancelBody struct {
	io.ReadCloser
	done func()
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}
