package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// client talks to hushd over its unix socket.
type client struct {
	ep    endpoint
	hc    *http.Client
	debug io.Writer
}

func newClient(ep endpoint, debug io.Writer) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", ep.Socket)
		},
		DisableCompression: true,
	}
	// No overall timeout: a backup streams for as long as the store is
	// large. Interrupting hush ends the request.
	return &client{ep: ep, hc: &http.Client{Transport: tr}, debug: debug}
}

// apiError is an answer of hushd other than 2xx.
type apiError struct {
	Status int
	Msg    string
}

func (e *apiError) Error() string { return e.Msg }

// do sends one request. Any status but 2xx is an error carrying hushd's
// message; the caller closes the body of a successful answer.
func (c *client) do(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://hushd"+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("User-Agent", "hush/"+version)
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted: %w", ctx.Err())
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("cannot connect to hushd at %s (from %s): %v; is hushd running?", c.ep.Host, c.ep.Source, err)
	}
	if c.debug != nil {
		fmt.Fprintf(c.debug, "hush: debug: %s %s on %s: %s\n", method, path, c.ep.Host, resp.Status)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb struct {
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &eb) == nil && eb.Message != "" {
		msg = eb.Message
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	if resp.StatusCode == http.StatusNotFound && (msg == "page not found" || msg == "404 page not found") {
		return nil, &apiError{Status: resp.StatusCode, Msg: fmt.Sprintf(
			"%s does not serve %s %s (404 page not found): it is not a hushd, or a hushd older than this hush", c.ep.Host, method, path)}
	}
	return nil, &apiError{Status: resp.StatusCode, Msg: msg}
}

// call sends a request and decodes a JSON answer into out.
func (c *client) call(ctx context.Context, method, path string, body []byte, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
		return fmt.Errorf("%s %s: hushd's answer is not the JSON expected: %v", method, path, err)
	}
	return nil
}
