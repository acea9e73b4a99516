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
	"slices"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// maxErrorBody bounds how much of an unexpected response is kept for the
// report: enough for a Docker {"message": ...} body, never a whole listing.
const maxErrorBody = 512

// statusError is an HTTP response with a status code the benchmark did not
// expect. It is counted per status code rather than treated as fatal, so that
// a server that fails some requests under load still gets measured.
type statusError struct {
	Method string
	Path   string
	Status int
	Body   string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.Path, e.Status, strings.TrimSpace(e.Body))
}

// engineClient speaks the Docker Engine secrets API over a unix socket with
// plain net/http, so hushbench measures the server and not a client library.
type engineClient struct {
	http    *http.Client
	root    string // scheme and host; the host is ignored by the unix dialer
	prefix  string // "/v1.41" or ""
	timeout time.Duration
}

func newEngineClient(socket, api string, conns int, timeout time.Duration) *engineClient {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socket)
		},
		// Every worker keeps its own connection alive between requests;
		// with the default of 2 idle connections the higher concurrency
		// levels would mostly measure connection setup.
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	prefix := ""
	if api != "" {
		prefix = "/" + api
	}
	return &engineClient{
		http:    &http.Client{Transport: transport},
		root:    "http://docker",
		prefix:  prefix,
		timeout: timeout,
	}
}

func (c *engineClient) close() { c.http.CloseIdleConnections() }

// do sends one request and reads the whole response body, so that a timed
// call includes transferring the response. A status outside want is
// returned as *statusError.
func (c *engineClient) do(ctx context.Context, method, path string, query url.Values, body []byte, want ...int) ([]byte, int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	u := c.root + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, resp.StatusCode, fmt.Errorf("%s %s: reading response: %w", method, path, err)
	}
	if !slices.Contains(want, resp.StatusCode) {
		return nil, resp.StatusCode, &statusError{Method: method, Path: path, Status: resp.StatusCode, Body: truncate(data, maxErrorBody)}
	}
	return data, resp.StatusCode, nil
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}

// createSecret creates a secret and returns its ID. The secret value only
// ever travels in the request body and is never logged.
func (c *engineClient) createSecret(ctx context.Context, name string, labels map[string]string, data []byte) (string, error) {
	spec := swarm.SecretSpec{
		Annotations: swarm.Annotations{Name: name, Labels: labels},
		Data:        data, // encoding/json writes []byte as base64, as the API wants
	}
	body, err := json.Marshal(spec)
	if err != nil {
		return "", err
	}
	resp, _, err := c.do(ctx, http.MethodPost, c.prefix+"/secrets/create", nil, body, http.StatusCreated)
	if err != nil {
		return "", err
	}
	var created swarm.SecretCreateResponse
	if err := json.Unmarshal(resp, &created); err != nil || created.ID == "" {
		return "", fmt.Errorf("POST /secrets/create: response has no secret ID: %q", truncate(resp, maxErrorBody))
	}
	return created.ID, nil
}

func (c *engineClient) inspectSecret(ctx context.Context, id string) error {
	_, _, err := c.do(ctx, http.MethodGet, c.prefix+"/secrets/"+url.PathEscape(id), nil, nil, http.StatusOK)
	return err
}

// listSecrets returns the raw JSON array; decoding is left to callers that
// need it so that timed list calls do not include client-side JSON work.
// With a non-empty label ("key=value") only matching secrets are listed.
func (c *engineClient) listSecrets(ctx context.Context, label string) ([]byte, error) {
	var q url.Values
	if label != "" {
		f, err := json.Marshal(map[string]map[string]bool{"label": {label: true}})
		if err != nil {
			return nil, err
		}
		q = url.Values{"filters": {string(f)}}
	}
	body, _, err := c.do(ctx, http.MethodGet, c.prefix+"/secrets", q, nil, http.StatusOK)
	return body, err
}

// removeSecret deletes a secret. Docker answers 204; 200 is accepted too
// because the API documentation has listed both over time.
func (c *engineClient) removeSecret(ctx context.Context, id string) error {
	_, _, err := c.do(ctx, http.MethodDelete, c.prefix+"/secrets/"+url.PathEscape(id), nil, nil, http.StatusNoContent, http.StatusOK)
	return err
}

// decodeSecrets parses a GET /secrets response.
func decodeSecrets(body []byte) ([]swarm.Secret, error) {
	var list []swarm.Secret
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("decoding secret list: %w", err)
	}
	return list, nil
}

// serverInfo describes the server under test for the report. All fields are
// best effort: hushd need not implement /version.
type serverInfo struct {
	Header     string `json:"server_header,omitempty"`
	Version    string `json:"version,omitempty"`
	APIVersion string `json:"api_version,omitempty"`
	OS         string `json:"os,omitempty"`
	Arch       string `json:"arch,omitempty"`
}

func (s serverInfo) String() string {
	var parts []string
	if s.Version != "" {
		parts = append(parts, "version "+s.Version)
	}
	if s.APIVersion != "" {
		parts = append(parts, "API "+s.APIVersion)
	}
	if s.OS != "" {
		parts = append(parts, s.OS+"/"+s.Arch)
	}
	if s.Header != "" {
		parts = append(parts, "Server: "+s.Header)
	}
	if len(parts) == 0 {
		return "unknown"
	}
	return strings.Join(parts, ", ")
}

// probeServer collects serverInfo without failing: a missing /version is
// not a reason to refuse to benchmark.
func (c *engineClient) probeServer(ctx context.Context) serverInfo {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var info serverInfo
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.root+c.prefix+"/version", nil)
	if err != nil {
		return info
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return info
	}
	defer resp.Body.Close()
	info.Header = resp.Header.Get("Server")
	if resp.StatusCode == http.StatusOK {
		var v struct{ Version, APIVersion, Os, Arch string }
		if json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&v) == nil {
			info.Version, info.APIVersion, info.OS, info.Arch = v.Version, v.APIVersion, v.Os, v.Arch
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return info
}

// preflight checks that the secrets API answers before any load is sent,
// so that e.g. a daemon that is not a swarm manager (503) gives one clear
// message instead of thousands of counted errors.
func (c *engineClient) preflight(ctx context.Context, label string) error {
	if _, err := c.listSecrets(ctx, label); err != nil {
		var se *statusError
		if errors.As(err, &se) {
			return fmt.Errorf("secrets API not usable: %w", err)
		}
		return fmt.Errorf("cannot reach server: %w", err)
	}
	return nil
}
