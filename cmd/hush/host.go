package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// endpoint is where hushd is and how hush learnt it (for error messages).
type endpoint struct {
	Host   string // unix:///path
	Socket string // /path
	Source string // "--host", "DOCKER_HOST", `context "x"`, "default"
}

const defaultContext = "default"

// resolveHost finds hushd the way the docker CLI finds its daemon
// (cli/command.resolveContextName and the default context), except that
// the default is hushd's socket, not dockerd's.
func resolveHost(g globals, e *env) (endpoint, error) {
	if g.hostSet && g.contextSet {
		return endpoint{}, &usageError{msg: "conflicting options: either specify --host or --context, not both", global: true}
	}
	if g.hostSet {
		ep, err := parseHost(g.host, "--host")
		if err != nil {
			return endpoint{}, &usageError{msg: err.Error(), global: true}
		}
		return ep, nil
	}
	name, err := contextName(g, e)
	if err != nil {
		return endpoint{}, err
	}
	if name == defaultContext {
		if h := e.getenv("DOCKER_HOST"); h != "" {
			return parseHost(h, "DOCKER_HOST")
		}
		return defaultEndpoint(e), nil
	}
	return contextEndpoint(name, configDir(g, e))
}

func contextName(g globals, e *env) (string, error) {
	switch {
	case g.contextSet:
		return g.context, nil
	case e.getenv("DOCKER_HOST") != "":
		return defaultContext, nil
	case e.getenv("DOCKER_CONTEXT") != "":
		return e.getenv("DOCKER_CONTEXT"), nil
	}
	cur, err := currentContext(configDir(g, e))
	if err != nil || cur == "" {
		return defaultContext, err
	}
	return cur, nil
}

func configDir(g globals, e *env) string {
	if g.configSet {
		return g.config
	}
	if d := e.getenv("DOCKER_CONFIG"); d != "" {
		return d
	}
	return filepath.Join(e.home, ".docker")
}

// currentContext reads "currentContext" from the docker CLI's config.json;
// a missing file means no current context.
func currentContext(dir string) (string, error) {
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("docker config: %w", err)
	}
	var cfg struct {
		CurrentContext string `json:"currentContext"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return "", fmt.Errorf("docker config %s is not valid JSON: %v", path, err)
	}
	return cfg.CurrentContext, nil
}

// contextEndpoint reads a context's docker endpoint from the docker CLI's
// context store: contexts/meta/<sha256 of the name>/meta.json.
func contextEndpoint(name, dir string) (endpoint, error) {
	if name == defaultContext {
		return endpoint{}, errors.New("internal: the default context has no metadata")
	}
	sum := sha256.Sum256([]byte(name))
	path := filepath.Join(dir, "contexts", "meta", hex.EncodeToString(sum[:]), "meta.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return endpoint{}, fmt.Errorf("context %q does not exist (no %s)", name, path)
	}
	if err != nil {
		return endpoint{}, fmt.Errorf("context %q: %w", name, err)
	}
	var meta struct {
		Name      string
		Endpoints map[string]struct {
			Host string
		}
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return endpoint{}, fmt.Errorf("context %q: %s is not valid JSON: %v", name, path, err)
	}
	if meta.Name != name {
		return endpoint{}, fmt.Errorf("context %q: %s describes context %q", name, path, meta.Name)
	}
	ep, ok := meta.Endpoints["docker"]
	if !ok || ep.Host == "" {
		return endpoint{}, fmt.Errorf("context %q has no docker endpoint host", name)
	}
	return parseHost(ep.Host, fmt.Sprintf("context %q", name))
}

// parseHost accepts unix:///absolute/path only, and names what it refuses.
func parseHost(h, source string) (endpoint, error) {
	scheme, rest, ok := strings.Cut(h, "://")
	switch {
	case !ok:
		return endpoint{}, fmt.Errorf("%s: host %q has no scheme: hush reaches hushd on its unix socket only (unix:///path/to/hushd.sock)", source, h)
	case scheme != "unix":
		return endpoint{}, fmt.Errorf("%s: host %q: scheme %s is not supported: hushd serves its API on a unix socket only (unix:///path/to/hushd.sock)", source, h, scheme)
	case !strings.HasPrefix(rest, "/"):
		return endpoint{}, fmt.Errorf("%s: host %q: want unix:///absolute/path/to/hushd.sock", source, h)
	}
	return endpoint{Host: h, Socket: filepath.Clean(rest), Source: source}, nil
}

// defaultEndpoint is the socket hushd listens on with no --socket (see
// cmd/hushd's defaultPaths).
func defaultEndpoint(e *env) endpoint {
	sock := "/run/hush/hushd.sock"
	if e.euid != 0 {
		sock = filepath.Join(e.home, ".local", "share", "hush", "hushd.sock")
	}
	return endpoint{Host: "unix://" + sock, Socket: sock, Source: "default"}
}
