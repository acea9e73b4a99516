package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

const (
	hushdReadyTimeout = 30 * time.Second
	hushdStopTimeout  = 20 * time.Second
	dockerCmdTimeout  = 60 * time.Second
)

// ---- docker CLI ----

// dockerCLI runs the real docker CLI against one daemon socket, with an
// isolated, empty DOCKER_CONFIG.
type dockerCLI struct {
	t         testing.TB
	host      string // unix socket path
	configDir string
}

func newDockerCLI(t testing.TB, sock string) *dockerCLI {
	return &dockerCLI{t: t, host: sock, configDir: t.TempDir()}
}

// Docker runs `docker args...` and returns stdout, stderr and the exit code.
func (c *dockerCLI) Docker(args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	return c.DockerStdin("", args...)
}

// DockerStdin runs `docker args...` with stdin as its standard input.
func (c *dockerCLI) DockerStdin(stdin string, args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dockerCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, dockerBinary(), args...)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env,
		"DOCKER_HOST=unix://"+c.host,
		"DOCKER_CONFIG="+c.configDir,
		"DOCKER_CLI_HINTS=false",
	)
	cmd.Stdin = strings.NewReader(stdin)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	if ctx.Err() != nil {
		c.t.Fatalf("docker %s: timed out after %s\nstdout: %s\nstderr: %s", strings.Join(args, " "), dockerCmdTimeout, so.String(), se.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		code = 0
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		c.t.Fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	return so.String(), se.String(), code
}

// MustDocker runs docker and fails the test unless it exits 0; it returns stdout.
func (c *dockerCLI) MustDocker(args ...string) string {
	c.t.Helper()
	return c.MustDockerStdin("", args...)
}

func (c *dockerCLI) MustDockerStdin(stdin string, args ...string) string {
	c.t.Helper()
	out, errOut, code := c.DockerStdin(stdin, args...)
	if code != 0 {
		c.t.Fatalf("docker %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// ---- hushd ----

// Hushd is one hushd process under test (Nomad-style: h := startHushd(t)).
type Hushd struct {
	*dockerCLI

	Socket  string
	DataDir string
	LogPath string

	t        testing.TB
	logLevel string
	extra    []string
	// env is added to hushd's environment at each start (e.g.
	// HUSH_TEST_FAILPOINTS); a test may change it between restarts.
	env []string
	// wrap is a command hushd is started under (e.g. nsenter into a
	// network namespace); it must exec hushd, so that hushd keeps its pid.
	wrap []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	logFile *os.File
}

type hushdOption func(*Hushd)

// withArgs appends extra command-line arguments.
func withArgs(args ...string) hushdOption {
	return func(h *Hushd) { h.extra = append(h.extra, args...) }
}

// withEnv adds variables to hushd's environment.
func withEnv(kv ...string) hushdOption {
	return func(h *Hushd) { h.env = append(h.env, kv...) }
}

// startHushd builds nothing (TestMain did): it starts the hushd binary on a
// fresh data dir and socket, waits until GET /_ping answers 200, and stops it
// when the test ends.
func startHushd(t testing.TB, opts ...hushdOption) *Hushd {
	t.Helper()
	requireHushd(t)
	requireDockerCLI(t)

	// unix socket paths are limited to 108 bytes: keep it short, not under t.TempDir().
	sockDir, err := os.MkdirTemp("", "hush-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })

	h := &Hushd{
		t:        t,
		Socket:   filepath.Join(sockDir, "hushd.sock"),
		logLevel: "debug",
	}
	for _, o := range opts {
		o(h)
	}
	if h.DataDir == "" {
		h.DataDir = filepath.Join(t.TempDir(), "data")
	}
	h.LogPath = filepath.Join(t.TempDir(), "hushd.log")
	h.dockerCLI = newDockerCLI(t, h.Socket)

	t.Cleanup(func() {
		if h.running() {
			h.Stop()
		}
		if t.Failed() {
			t.Logf("hushd log tail (%s):\n%s", h.LogPath, tailFile(h.LogPath, 250))
		}
		// Task containers and their mounts outlive hushd by design; a test
		// must not leave them running on the shared engine.
		if b, err := os.ReadFile(filepath.Join(h.DataDir, "node.json")); err == nil {
			var ns struct{ NodeID string }
			if json.Unmarshal(b, &ns) == nil && ns.NodeID != "" {
				purgeNode(t, ns.NodeID)
			}
		}
	})
	h.start()
	return h
}

func (h *Hushd) running() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil {
		return false
	}
	select {
	case <-h.done:
		return false
	default:
		return true
	}
}

func (h *Hushd) start() {
	h.t.Helper()
	h.launch()
	h.waitReady()
}

// launch starts the hushd process without waiting for it to serve (a
// whole-cluster restart starts every manager before any can).
func (h *Hushd) launch() {
	h.t.Helper()
	if h.running() {
		h.t.Fatal("hushd: start while already running")
	}
	lf, err := os.OpenFile(h.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		h.t.Fatal(err)
	}
	fmt.Fprintf(lf, "==== e2e: starting hushd at %s ====\n", time.Now().Format(time.RFC3339Nano))
	args := append([]string{"--data-dir", h.DataDir, "--socket", h.Socket, "--log-level", h.logLevel}, h.extra...)
	cmd := exec.Command(hushdBin, args...)
	if len(h.wrap) > 0 {
		cmd = exec.Command(h.wrap[0], append(append(h.wrap[1:len(h.wrap):len(h.wrap)], hushdBin), args...)...)
	}
	cmd.Stdout = lf
	cmd.Stderr = lf
	if len(h.env) > 0 {
		cmd.Env = append(os.Environ(), h.env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		h.t.Fatalf("starting hushd: %v", err)
	}
	done := make(chan struct{})
	h.mu.Lock()
	h.cmd, h.done, h.waitErr, h.logFile = cmd, done, nil, lf
	h.mu.Unlock()
	go func() {
		err := cmd.Wait()
		h.mu.Lock()
		h.waitErr = err
		h.mu.Unlock()
		lf.Close()
		close(done)
	}()
}

// waitReady waits (bounded) until hushd answers GET /_ping with 200.
func (h *Hushd) waitReady() {
	h.t.Helper()
	h.mu.Lock()
	done := h.done
	h.mu.Unlock()
	client := unixHTTPClient(h.Socket)
	client.Timeout = 2 * time.Second
	deadline := time.Now().Add(hushdReadyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			h.t.Fatalf("hushd exited before becoming ready (%v); log:\n%s", h.exitErr(), tailFile(h.LogPath, 250))
		default:
		}
		resp, err := client.Get("http://docker/_ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("GET /_ping: status %d", resp.StatusCode)
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	h.Kill()
	h.t.Fatalf("hushd not ready after %s (last: %v); log:\n%s", hushdReadyTimeout, lastErr, tailFile(h.LogPath, 250))
}

func (h *Hushd) exitErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.waitErr
}

// Stop sends SIGTERM and waits; hushd must exit 0.
func (h *Hushd) Stop() {
	h.t.Helper()
	if !h.running() {
		return
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(hushdStopTimeout):
		// SIGQUIT first: the Go runtime writes every goroutine's stack to
		// the log, which names what the shutdown waited on.
		_ = h.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-h.done:
		case <-time.After(5 * time.Second):
		}
		_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-h.done
		h.t.Errorf("hushd did not exit within %s of SIGTERM (killed); its goroutines then:\n%s",
			hushdStopTimeout, hushStacks(h.LogPath))
		return
	}
	if err := h.exitErr(); err != nil {
		h.t.Errorf("hushd: SIGTERM should give a clean exit 0, got: %v", err)
	}
	// Anything else in its process group must be gone too.
	_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
}

// Kill sends SIGKILL (to hushd's whole process group) and waits.
func (h *Hushd) Kill() {
	h.t.Helper()
	if !h.running() {
		return
	}
	_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
	<-h.done
}

// Restart starts hushd again on the same data dir and socket (stopping it
// first with SIGTERM if it is still running).
func (h *Hushd) Restart() {
	h.t.Helper()
	h.Stop()
	h.start()
}

// Raw sends one HTTP request to hushd's socket.
func (h *Hushd) Raw(method, path, contentType string, body []byte) httpResult {
	h.t.Helper()
	return doRaw(h.t, h.Socket, method, path, contentType, body)
}

// hushStacks is the part of a goroutine dump in a hushd log that names
// hush's own code: the stacks of goroutines with a frame of hush.
func hushStacks(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	s := string(b)
	i := strings.LastIndex(s, "SIGQUIT: quit")
	if i < 0 {
		return "(no goroutine dump in the log)"
	}
	var out []string
	for _, g := range strings.Split(s[i:], "\n\n") {
		if strings.Contains(g, "hush-secrets/hush/") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

func tailFile(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// purgeNode force-removes every container labelled with hushd node's ID and
// unmounts any tmpfs left under /run/hush/<node>.
func purgeNode(t testing.TB, node string) {
	t.Helper()
	eng := newDockerCLI(t, enginetest.Socket)
	out, _, _ := eng.Docker("ps", "-aq", "--no-trunc", "--filter", "label="+hushNodeLabel+"="+node)
	if ids := strings.Fields(out); len(ids) > 0 {
		t.Logf("cleanup: force-removing %d container(s) left with %s=%s", len(ids), hushNodeLabel, node)
		eng.Docker(append([]string{"rm", "-f", "-v"}, ids...)...)
	}
	// The engine bridge networks that realised this hushd's swarm networks
	// (a hushd killed or stopped with its networks still defined leaves
	// them): only those labelled with this node's ID.
	out, _, _ = eng.Docker("network", "ls", "-q", "--no-trunc", "--filter", "label=io.hush.node.id="+node)
	if ids := strings.Fields(out); len(ids) > 0 {
		t.Logf("cleanup: removing %d network(s) left with io.hush.node.id=%s", len(ids), node)
		eng.Docker(append([]string{"network", "rm"}, ids...)...)
	}
	// The tasks' root, and the standalone containers' sibling root.
	for _, root := range []string{filepath.Join("/run/hush", node), filepath.Join("/run/hush", node+".containers")} {
		mps := mountsUnder(t, root)
		for i := len(mps) - 1; i >= 0; i-- {
			if err := syscall.Unmount(mps[i], syscall.MNT_DETACH); err != nil {
				t.Logf("cleanup: unmount %s: %v", mps[i], err)
			}
		}
		if len(mountsUnder(t, root)) == 0 {
			_ = os.RemoveAll(root)
		}
	}
}
