package proxy

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/enginehost"
	"github.com/hush-secrets/hush/internal/testutil"
)

const engineSocket = "/var/run/docker.sock"

// need skips the test, or fails it when CI=true: CI must run against a
// real engine.
func need(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if ok {
		return
	}
	testutil.SkipOrFail(t, format, args...)
}

// dockerCLI runs the real docker CLI against one daemon socket.
type dockerCLI struct {
	t    *testing.T
	bin  string
	env  []string
	host string
}

func newCLI(t *testing.T, bin, sock, configDir string) *dockerCLI {
	env := []string{"DOCKER_HOST=unix://" + sock, "DOCKER_CONFIG=" + configDir, "DOCKER_BUILDKIT=0", "DOCKER_CLI_HINTS=false"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_") {
			env = append(env, kv)
		}
	}
	return &dockerCLI{t: t, bin: bin, env: env, host: sock}
}

func (d *dockerCLI) cmd(ctx context.Context, stdin io.Reader, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, d.bin, args...)
	c.Env = d.env
	c.Stdin = stdin
	c.WaitDelay = 5 * time.Second
	return c
}

// run runs docker args with stdin and returns its stdout; it fails the
// test on error.
func (d *dockerCLI) run(stdin string, args ...string) string {
	d.t.Helper()
	out, err := d.try(stdin, args...)
	if err != nil {
		d.t.Fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (d *dockerCLI) try(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var in io.Reader
	if stdin != "" {
		in = strings.NewReader(stdin)
	}
	c := d.cmd(ctx, in, args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// rootfsTar is a busybox-only root filesystem.
func rootfsTar(t *testing.T, busybox string) []byte {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	for _, d := range []string{"bin/", "tmp/", "proc/", "sys/", "dev/", "etc/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode, ModTime: now})
	}
	_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb)), ModTime: now})
	_, _ = tw.Write(bb)
	for _, l := range []string{"sh", "cat", "echo", "sleep", "tty", "ls"} {
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + l, Linkname: "busybox", Mode: 0o777, ModTime: now})
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestRealEngine drives the real docker CLI through the proxy to the real
// engine.
func TestRealEngine(t *testing.T) {
	if testing.Short() {
		need(t, false, "-short")
	}
	bin, err := exec.LookPath("docker")
	need(t, err == nil, "docker CLI not found: %v", err)
	_, err = os.Stat("/bin/busybox")
	need(t, err == nil, "/bin/busybox missing (apt-get install -y busybox-static): %v", err)

	var log *slog.Logger
	if os.Getenv("HUSH_PROXY_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p := New(enginehost.Host{Path: engineSocket}, engineSocket, log)
	t.Cleanup(func() { _ = p.Close() })
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	apiVersion, err := p.Ping(pctx)
	cancel()
	need(t, err == nil, "Docker Engine at %s not usable: %v", engineSocket, err)

	sock := serveUnix(t, p)
	cfg := shortDir(t)
	docker := newCLI(t, bin, sock, cfg)
	direct := newCLI(t, bin, engineSocket, cfg) // for cleanup only

	// Names unique to this run: concurrent runs on one engine must not
	// move each other's tags or remove each other's containers.
	suffix := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	testImage := "hush-proxy-test:" + suffix
	builtImage := "hush-proxy-test:built-" + suffix
	var containers []string
	name := func(s string) string {
		n := "hush-proxy-test-" + s + "-" + suffix
		containers = append(containers, n)
		return n
	}
	t.Cleanup(func() {
		if len(containers) > 0 {
			_, _ = direct.try("", append([]string{"rm", "-f"}, containers...)...)
		}
		// Each import makes a new image; drop this run's. -f: --rm
		// containers may still be being removed by the engine.
		if out, err := direct.try("", "rmi", "-f", builtImage, testImage); err != nil {
			t.Logf("cleanup: %v %s", err, out)
		}
	})

	t.Run("version", func(t *testing.T) {
		out := docker.run("", "version", "--format", "{{.Server.APIVersion}}")
		if strings.TrimSpace(out) != apiVersion {
			t.Fatalf("server API version through the proxy = %q, engine says %q", out, apiVersion)
		}
		docker.run("", "version")
		docker.run("", "ps", "-a")
		docker.run("", "images")
		docker.run("", "info", "--format", "{{.ServerVersion}}")
	})

	// docker import streams the tarball through the proxy.
	docker.run(string(rootfsTar(t, "/bin/busybox")), "import", "-c", `CMD ["/bin/sh"]`, "-", testImage)
	if out := docker.run("", "images", "-q", testImage); strings.TrimSpace(out) == "" {
		t.Fatal("imported image not listed")
	}

	t.Run("run", func(t *testing.T) {
		if out := docker.run("", "run", "--rm", testImage, "echo", "hello"); out != "hello\n" {
			t.Fatalf("run echo = %q", out)
		}
	})
	t.Run("run -i", func(t *testing.T) {
		if out := docker.run("piped\n", "run", "--rm", "-i", testImage, "cat"); out != "piped\n" {
			t.Fatalf("run -i cat = %q", out)
		}
	})
	t.Run("exit code", func(t *testing.T) {
		_, err := docker.try("", "run", "--rm", testImage, "sh", "-c", "exit 3")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("want exit status 3, got %v", err)
		}
	})

	x := name("x")
	docker.run("", "run", "-d", "--name", x, testImage, "sh", "-c", "echo started; exec sleep 60")
	t.Run("exec", func(t *testing.T) {
		if out := docker.run("", "exec", x, "echo", "hi"); out != "hi\n" {
			t.Fatalf("exec echo = %q", out)
		}
	})
	t.Run("exec -i", func(t *testing.T) {
		if out := docker.run("abc\n", "exec", "-i", x, "cat"); out != "abc\n" {
			t.Fatalf("exec -i cat = %q", out)
		}
	})
	t.Run("exec -it and run -it", func(t *testing.T) {
		script, err := exec.LookPath("script")
		need(t, err == nil, "script(1) not installed (apt-get install bsdutils): no pty to drive docker -it")
		for _, args := range []string{
			"exec -it " + x + " sh -c 'tty -s && echo tty-ok'",
			"run --rm -it " + testImage + " sh -c 'tty -s && echo tty-ok'",
		} {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			c := exec.CommandContext(ctx, script, "-qec", bin+" "+args, "/dev/null")
			c.Env = docker.env
			c.WaitDelay = 5 * time.Second
			out, err := c.CombinedOutput()
			cancel()
			if err != nil || !strings.Contains(string(out), "tty-ok") {
				t.Fatalf("docker %s: %v: %q", args, err, out)
			}
		}
	})
	t.Run("logs", func(t *testing.T) {
		if out := docker.run("", "logs", x); out != "started\n" {
			t.Fatalf("logs = %q", out)
		}
	})
	t.Run("cp", func(t *testing.T) {
		dir := shortDir(t)
		src := filepath.Join(dir, "in.txt")
		if err := os.WriteFile(src, []byte("copied in\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		docker.run("", "cp", src, x+":/tmp/in.txt")
		if out := docker.run("", "exec", x, "cat", "/tmp/in.txt"); out != "copied in\n" {
			t.Fatalf("cp in: %q", out)
		}
		dst := filepath.Join(dir, "out.txt")
		docker.run("", "cp", x+":/tmp/in.txt", dst)
		if b, err := os.ReadFile(dst); err != nil || string(b) != "copied in\n" {
			t.Fatalf("cp out: %q %v", b, err)
		}
	})

	t.Run("logs -f and attach", func(t *testing.T) {
		y := name("y")
		docker.run("", "run", "-d", "--name", y, testImage, "sh", "-c", "echo one; sleep 2; echo two")
		if out := docker.run("", "attach", "--no-stdin", "--sig-proxy=false", y); !strings.Contains(out, "two") {
			t.Fatalf("attach = %q", out)
		}
		if out := docker.run("", "logs", "-f", y); out != "one\ntwo\n" {
			t.Fatalf("logs -f = %q", out)
		}
	})

	t.Run("events", func(t *testing.T) {
		out := docker.run("", "events", "--since", "2m", "--until", "0s", "--filter", "container="+x, "--format", "{{.Action}}")
		if !strings.Contains(out, "start") {
			t.Fatalf("events = %q", out)
		}
	})

	t.Run("build", func(t *testing.T) {
		dir := shortDir(t)
		df := "FROM " + testImage + "\nRUN echo built > /built\n"
		if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
			t.Fatal(err)
		}
		docker.run("", "build", "-q", "-t", builtImage, dir)
		if out := docker.run("", "run", "--rm", builtImage, "cat", "/built"); out != "built\n" {
			t.Fatalf("built image: %q", out)
		}
	})

	docker.run("", "rm", "-f", x)
	if out := docker.run("", "ps", "-a", "-q", "--filter", "name="+x); strings.TrimSpace(out) != "" {
		t.Fatalf("container still there after rm -f: %q", out)
	}
}
