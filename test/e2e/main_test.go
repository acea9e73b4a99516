package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/testutil"
)

var update = flag.Bool("update", false, "regenerate testdata/swarm/*.golden from live Docker Swarm")

var (
	repoRoot      string
	hushdBin      string
	hushdBuildErr error
)

const (
	targetAll       = "all"
	targetSwarmOnly = "swarm-only"
	targetHushdOnly = "hushd-only"
)

// e2eTarget reports HUSH_E2E_TARGET (a debugging aid: run only one side).
func e2eTarget() string {
	switch v := os.Getenv("HUSH_E2E_TARGET"); v {
	case "", targetAll:
		return targetAll
	case targetSwarmOnly, targetHushdOnly:
		return v
	default:
		fmt.Fprintf(os.Stderr, "e2e: unknown HUSH_E2E_TARGET=%q (want all, swarm-only or hushd-only)\n", v)
		os.Exit(2)
		return ""
	}
}

// skipOrFatal skips the test locally, but fails it under CI=true: CI must
// never silently skip.
func skipOrFatal(t testing.TB, format string, args ...any) {
	t.Helper()
	testutil.SkipOrFail(t, format, args...)
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := findRepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	repoRoot = root
	if e2eTarget() != targetSwarmOnly {
		if p := os.Getenv("HUSH_E2E_HUSHD"); p != "" {
			hushdBin = p
		} else {
			tmp, err := os.MkdirTemp("", "hush-e2e-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, "e2e:", err)
				return 1
			}
			defer os.RemoveAll(tmp)
			hushdBin = filepath.Join(tmp, "hushd")
			// With the failpoints the kill -9 tests hang hushd at (a
			// production build has none).
			cmd := exec.Command("go", "build", "-tags", "hushfailpoints", "-o", hushdBin, "./cmd/hushd")
			cmd.Dir = repoRoot
			out, err := cmd.CombinedOutput()
			if err != nil {
				// Reported by every test that needs hushd (swarm-side tests still run).
				hushdBuildErr = fmt.Errorf("go build ./cmd/hushd: %v\n%s", err, out)
			}
		}
	}
	return m.Run()
}

func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// dockerBinary is the docker CLI to drive: HUSH_E2E_DOCKER, else "docker"
// from PATH. The goldens were recorded with the docker CLI 28.2.
func dockerBinary() string {
	if p := os.Getenv("HUSH_E2E_DOCKER"); p != "" {
		return p
	}
	return "docker"
}

var dockerVersionOnce sync.Once

// requireDockerCLI skips (fails under CI) when the docker CLI is missing.
func requireDockerCLI(t testing.TB) {
	t.Helper()
	p, err := exec.LookPath(dockerBinary())
	if err != nil {
		skipOrFatal(t, "the docker CLI is not on PATH (%v); these tests drive the real docker CLI", err)
	}
	dockerVersionOnce.Do(func() {
		out, _ := exec.Command(p, "version", "--format", "{{.Client.Version}}").Output()
		t.Logf("docker CLI %s, version %s (goldens recorded with 28.2)", p, strings.TrimSpace(string(out)))
	})
}

// requireHushd skips when the run is restricted to Swarm, and fails when
// hushd could not be built.
func requireHushd(t testing.TB) {
	t.Helper()
	if e2eTarget() == targetSwarmOnly {
		skipOrFatal(t, "HUSH_E2E_TARGET=swarm-only: hushd side not run")
	}
	if hushdBuildErr != nil {
		t.Fatal(hushdBuildErr)
	}
}

// ---- Swarm (the reference) ----

func swarmSocket() string {
	if s := os.Getenv("HUSH_E2E_SWARM_SOCK"); s != "" {
		return s
	}
	return "/var/run/docker.sock"
}

// swarmAPI is the API version prefix used for raw requests to the reference engine (20.10).
const swarmAPI = "/v1.41"

var (
	swarmOnce   sync.Once
	swarmReason string // empty when Swarm is usable
)

// swarmUsable reports whether the host engine is an active swarm manager.
func swarmUsable() (bool, string) {
	swarmOnce.Do(func() {
		c := unixHTTPClient(swarmSocket())
		resp, err := c.Get("http://docker" + swarmAPI + "/info")
		if err != nil {
			swarmReason = fmt.Sprintf("no Docker engine at %s: %v", swarmSocket(), err)
			return
		}
		defer resp.Body.Close()
		var info struct {
			Swarm struct {
				LocalNodeState   string
				ControlAvailable bool
			}
		}
		if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
			swarmReason = fmt.Sprintf("GET /info on %s: %v", swarmSocket(), err)
			return
		}
		if info.Swarm.LocalNodeState != "active" || !info.Swarm.ControlAvailable {
			swarmReason = fmt.Sprintf("the engine at %s is not an active swarm manager (state %q, manager %v); run: docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377",
				swarmSocket(), info.Swarm.LocalNodeState, info.Swarm.ControlAvailable)
		}
	})
	return swarmReason == "", swarmReason
}

// requireSwarm skips (fails under CI or with -update) when Swarm is not usable.
func requireSwarm(t testing.TB) {
	t.Helper()
	if e2eTarget() == targetHushdOnly {
		if *update {
			t.Fatal("-update needs live Swarm, but HUSH_E2E_TARGET=hushd-only")
		}
		skipOrFatal(t, "HUSH_E2E_TARGET=hushd-only: live Swarm side not run (hushd is still compared with the golden files)")
	}
	requireDockerCLI(t)
	if ok, why := swarmUsable(); !ok {
		if *update {
			t.Fatalf("-update needs live Swarm: %s", why)
		}
		skipOrFatal(t, "live Swarm comparison: %s", why)
	}
}

// swarmCLI is a docker CLI pointed at the reference engine.
func swarmCLI(t testing.TB) *dockerCLI {
	return newDockerCLI(t, swarmSocket())
}

// ---- raw HTTP over a unix socket ----

func unixHTTPClient(sock string) *http.Client {
	return &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		},
	}
}

type httpResult struct {
	Status      int
	ContentType string
	Body        []byte
}

// doRawEager sends one request on a fresh connection, writing the body
// concurrently with reading the answer: a server may answer (and close)
// before it has read a large body, and net/http's client then reports the
// write error ("broken pipe") instead of the answer.
func doRawEager(t testing.TB, sock, method, path, contentType string, body []byte) httpResult {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	req, err := http.NewRequest(method, "http://docker"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	req.Close = true
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	go func() { _ = req.Write(conn) }() // write errors are expected when the server answers early
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatalf("%s %s on %s: reading the answer: %v", method, path, sock, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return httpResult{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: b}
}

func doRaw(t testing.TB, sock, method, path, contentType string, body []byte) httpResult {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequest(method, "http://docker"+path, rd)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := unixHTTPClient(sock).Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, sock, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return httpResult{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: b}
}

// awaitSwarmContainersGone waits, after a `service rm` on the reference
// Swarm, for the containers list names (this test's own, by their
// labels) to go, and removes those still there after timeout: a cleanup
// leaves the shared engine as the test found it.
func awaitSwarmContainersGone(sw *dockerCLI, timeout time.Duration, list func() []string) {
	deadline := time.Now().Add(timeout)
	for {
		ids := list()
		if len(ids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			sw.Docker(append([]string{"rm", "-f"}, ids...)...)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// swarmServiceContainers lists the reference Swarm's containers (any
// state) of the service named service.
func swarmServiceContainers(sw *dockerCLI, service string) []string {
	out, _, _ := sw.Docker("ps", "-aq", "--filter", "label="+svcNameLabel+"="+service)
	return strings.Fields(out)
}
