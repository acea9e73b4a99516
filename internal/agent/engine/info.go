package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/moby/moby/api/types/system"
)

// Info returns the engine's /info answer, for hushd to merge its swarm
// section into.
func (e *Engine) Info(ctx context.Context) (system.Info, error) {
	var v system.Info
	return v, e.getJSON(ctx, "/info", &v)
}

// Version returns the engine's /version answer.
func (e *Engine) Version(ctx context.Context) (system.VersionResponse, error) {
	var v system.VersionResponse
	return v, e.getJSON(ctx, "/version", &v)
}

// getJSON reads an unversioned engine endpoint through the shared client's
// dialer; these two answers are passed on nearly verbatim, so the raw JSON
// is simplest.
func (e *Engine) getJSON(ctx context.Context, path string, v any) error {
	dial := e.cli.Dialer()
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
	}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://engine"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("engine %s: %w: %w", path, ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("engine %s: status %d: %w", path, resp.StatusCode, ErrUnavailable)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
