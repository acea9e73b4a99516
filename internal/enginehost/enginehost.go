package enginehost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/moby/moby/client"
)

// DefaultPath is the engine socket hushd uses when --engine is not given.
const DefaultPath = "/var/run/docker.sock"

// maxPath bounds a socket path: the kernel's sun_path holds 108 bytes.
const maxPath = 107

// Host is a parsed --engine value: the engine's unix socket.
type Host struct {
	// Path is the socket's absolute path.
	Path string
}

// Parse reads an --engine value: an absolute or relative path to a unix
// socket, or a unix:// URL ("unix:///var/run/docker.sock"). Any other
// scheme is refused with its name.
func Parse(s string) (Host, error) {
	if s == "" {
		return Host{}, errors.New("no engine socket given")
	}
	path := s
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		if !strings.EqualFold(scheme, "unix") {
			return Host{}, fmt.Errorf("scheme %q is not supported: the engine must be this host's, reached over a unix socket (a path or unix:///path), because hush bind-mounts task secrets from this host", scheme)
		}
		path = rest
		if path == "" {
			return Host{}, fmt.Errorf("%q names no socket path", s)
		}
	}
	if strings.ContainsAny(path, "?#\x00") {
		return Host{}, fmt.Errorf("%q is not a socket path (it holds '?', '#' or a NUL byte)", s)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return Host{}, fmt.Errorf("socket path %q: %w", path, err)
	}
	if len(abs) > maxPath {
		return Host{}, fmt.Errorf("socket path %q is longer than %d bytes", abs, maxPath)
	}
	return Host{Path: abs}, nil
}

// String is the host as a Docker host URL ("unix:///var/run/docker.sock").
func (h Host) String() string { return "unix://" + h.Path }

// DialContext connects to the engine's socket whatever network and address
// it is asked for: HTTP clients built on it send every request there.
func (h Host) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", h.Path)
}

// NewClient returns the Docker Engine client for h, dialling through
// h.DialContext. It does not connect. The client negotiates the API version
// down to the engine's on its first request (the engine may be older than
// the client).
func NewClient(h Host) (*client.Client, error) {
	if h.Path == "" {
		return nil, errors.New("enginehost: no engine socket")
	}
	cli, err := client.New(
		client.WithHost(h.String()),
		client.WithDialContext(h.DialContext),
		client.WithUserAgent("hushd"),
	)
	if err != nil {
		return nil, fmt.Errorf("engine client for %s: %w", h, err)
	}
	return cli, nil
}
