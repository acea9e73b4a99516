package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/enginehost"
	"github.com/hush-secrets/hush/internal/testutil"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"
	"github.com/moby/moby/client/pkg/versions"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// These tests run against the real local Docker Engine (see enginetest for
// the skip/fail policy). Every container they create is named
// "hushtest<run>..." and removed in t.Cleanup.

var runID = randHex(4)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// syncBuffer collects log output from many goroutines.
type syncBuffer = testutil.SyncBuffer

func testLogger(w io.Writer) *slog.Logger {
	if w == nil {
		if !testing.Verbose() {
			return nil
		}
		w = os.Stderr
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newEngine returns an Engine on the real engine and the busybox test image.
func newEngine(t *testing.T, logTo io.Writer) (*Engine, string) {
	t.Helper()
	img := enginetest.BusyboxImage(t)
	cli, err := enginehost.NewClient(enginehost.Host{Path: enginetest.Socket})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	e := New(cli, testLogger(logTo))
	return e, img
}

// taskSpec returns a spec for a new task of service "hushtest<run><svc>"
// with the Swarm labels set.
func taskSpec(img, svc string, command ...string) Spec {
	service := "hushtest" + runID + svc
	taskID := "t" + randHex(12)
	return Spec{
		Name: service + ".1." + taskID,
		Labels: map[string]string{
			LabelServiceID:   "s" + randHex(8),
			LabelServiceName: service,
			LabelTaskID:      taskID,
			LabelTaskName:    service + ".1",
			LabelNodeID:      "hushtestnode",
			"org.hush.test":  runID,
		},
		Image:   img,
		Command: command,
	}
}

// create creates the container and removes it in t.Cleanup.
func create(t *testing.T, e *Engine, s Spec) string {
	t.Helper()
	id, err := e.Create(t.Context(), s)
	if err != nil {
		t.Fatalf("Create(%s): %v", s.Name, err)
	}
	t.Cleanup(func() { removeNow(t, e, id) })
	return id
}

func removeNow(t *testing.T, e *Engine, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Remove(ctx, id); err != nil {
		t.Errorf("cleanup: Remove(%s): %v", id, err)
	}
}

func start(t *testing.T, e *Engine, id string) {
	t.Helper()
	if err := e.Start(t.Context(), id); err != nil {
		t.Fatalf("Start(%s): %v", id, err)
	}
}

// logs returns the container's stdout and stderr so far, demultiplexed.
func logs(t *testing.T, e *Engine, id string) string {
	t.Helper()
	rc, err := e.Logs(t.Context(), id, false, "", false, "")
	if err != nil {
		t.Fatalf("Logs(%s): %v", id, err)
	}
	defer rc.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil {
		t.Fatalf("Logs(%s): demux: %v", id, err)
	}
	return out.String()
}

// waitLogs polls the logs until they contain every want.
func waitLogs(t *testing.T, e *Engine, id string, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := logs(t, e, id)
		if !slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(got, w) }) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("logs of %s = %q, want them to contain %q", id, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitExited polls until the container has exited.
func waitExited(t *testing.T, e *Engine, id string) State {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := e.Inspect(t.Context(), id)
		if err != nil {
			t.Fatalf("Inspect(%s): %v", id, err)
		}
		if st.Status == "exited" {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s still %s", id, st.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPingNegotiatesDown(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t, nil)
	v, err := e.Ping(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := e.cli.Ping(t.Context(), client.PingOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := raw.APIVersion
	if versions.GreaterThan(want, client.MaxAPIVersion) {
		want = client.MaxAPIVersion
	}
	if v != want {
		t.Fatalf("negotiated API %q, engine speaks %q (client max %s): want %q", v, raw.APIVersion, client.MaxAPIVersion, want)
	}
	t.Logf("engine API %s, client max %s, negotiated %s", raw.APIVersion, client.MaxAPIVersion, v)
	// A versioned call must work at the negotiated version.
	if _, err := e.ListTasks(t.Context()); err != nil {
		t.Fatalf("ListTasks at API %s: %v", v, err)
	}
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	cli, err := enginehost.NewClient(enginehost.Host{Path: filepath.Join(t.TempDir(), "no-engine.sock")})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	e := New(cli, nil)
	if _, err := e.Ping(t.Context()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ping on a missing socket: %v, want ErrUnavailable", err)
	}
	if _, err := e.Inspect(t.Context(), "abc"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Inspect on a missing socket: %v, want ErrUnavailable", err)
	}
	exits, errc := e.Exits(t.Context())
	select {
	case err := <-errc:
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Exits on a missing socket: %v, want ErrUnavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Exits on a missing socket reported no error")
	}
	if _, ok := <-exits; ok {
		t.Fatal("exit channel not closed after the stream broke")
	}
}

func TestSecretBindEnvLabelsLogs(t *testing.T) {
	t.Parallel()
	var logBuf syncBuffer
	e, img := newEngine(t, &logBuf)
	ctx := t.Context()

	const secret = "s3cret-value-4b1d"
	const envValue = "env-value-9f3c"
	secretFile := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}

	// Command+Args as Swarm: entrypoint "sh -c", the script as its argument.
	s := taskSpec(img, "secret", "sh", "-c")
	s.Args = []string{`cat /run/secrets/x; echo "env=$HUSH_TEST_ENV"; echo "pwd=$(pwd) host=$(hostname)"; grep ' /run/secrets/x ' /proc/mounts; sleep 30`}
	s.Env = []string{"HUSH_TEST_ENV=" + envValue}
	s.Binds = []Bind{{HostPath: secretFile, ContainerPath: "/run/secrets/x"}}
	s.Dir = "/tmp"
	s.Hostname = "hush-task-host"
	no := false
	s.Init = &no

	id := create(t, e, s)
	start(t, e, id)
	out := waitLogs(t, e, id, secret, "env="+envValue, "pwd=/tmp host=hush-task-host", "/run/secrets/x")
	mountLine := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, " /run/secrets/x ") {
			mountLine = l
		}
	}
	if !strings.Contains(mountLine, " ro,") && !strings.Contains(mountLine, " ro ") {
		t.Errorf("bind is not mounted read-only: %q", mountLine)
	}

	st, err := e.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Running || st.Status != "running" || st.Pid <= 0 || st.StartedAt.IsZero() || st.ID != id || st.Name != s.Name {
		t.Fatalf("Inspect = %+v, want running %s with a pid", st, s.Name)
	}
	for k, v := range s.Labels {
		if st.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, st.Labels[k], v)
		}
	}

	// The engine's own view of the mount and config.
	raw, err := e.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, m := range raw.Container.Mounts {
		if m.Destination == "/run/secrets/x" {
			found = true
			if m.RW || m.Type != mount.TypeBind || m.Propagation != mount.PropagationRPrivate || m.Source != secretFile {
				t.Errorf("secret mount = %+v, want read-only rprivate bind of %s", m, secretFile)
			}
		}
	}
	if !found {
		t.Errorf("no mount at /run/secrets/x in %+v", raw.Container.Mounts)
	}
	// As on Swarm, the grace period is applied by Stop, not stored.
	if c := raw.Container.Config; c.StopTimeout != nil {
		t.Errorf("StopTimeout = %v, want none", *c.StopTimeout)
	}
	if hc := raw.Container.HostConfig; hc.Init == nil || *hc.Init {
		t.Errorf("Init = %v, want false", hc.Init)
	}

	if err := e.Start(ctx, id); err != nil {
		t.Errorf("Start of a running container: %v", err)
	}
	zero := time.Duration(0)
	if err := e.Stop(ctx, id, &zero); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Inspect(ctx, id); err != nil || st.Running || st.Status != "exited" || st.FinishedAt.IsZero() {
		t.Fatalf("after Stop: %+v, %v", st, err)
	}
	if err := e.Stop(ctx, id, &zero); err != nil {
		t.Errorf("Stop of a stopped container: %v", err)
	}

	if l := logBuf.String(); strings.Contains(l, envValue) || strings.Contains(l, secret) {
		t.Errorf("engine logged an env value or secret content:\n%s", l)
	}
}

func TestBindIsReadOnly(t *testing.T) {
	t.Parallel()
	e, img := newEngine(t, nil)
	secretFile := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(secretFile, []byte("original\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := taskSpec(img, "ro", "sh", "-c", `echo y > /run/secrets/x || echo RO; cat /run/secrets/x`)
	s.Binds = []Bind{{HostPath: secretFile, ContainerPath: "/run/secrets/x"}}
	id := create(t, e, s)
	start(t, e, id)
	st := waitExited(t, e, id)
	out := logs(t, e, id)
	if !strings.Contains(out, "RO") || !strings.Contains(out, "original") {
		t.Fatalf("logs = %q (exit %d), want the write refused (RO) and the content intact", out, st.ExitCode)
	}
	if b, _ := os.ReadFile(secretFile); string(b) != "original\n" {
		t.Fatalf("host file changed to %q", b)
	}
}

func TestExitsReportsExitCodeAndRemoval(t *testing.T) {
	t.Parallel()
	e, img := newEngine(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	exits, errc := e.Exits(ctx)

	s := taskSpec(img, "exit", "sh", "-c", "exit 3")
	id := create(t, e, s)
	start(t, e, id)

	next := func(what string) Exit {
		t.Helper()
		timeout := time.After(15 * time.Second)
		for {
			select {
			case x, ok := <-exits:
				if !ok {
					t.Fatalf("exit channel closed waiting for %s", what)
				}
				if x.ContainerID == id {
					return x
				}
			case err := <-errc:
				t.Fatalf("event stream: %v", err)
			case <-timeout:
				t.Fatalf("no event for %s", what)
			}
		}
	}
	x := next("die")
	if x.ExitCode != 3 || x.TaskID != s.Labels[LabelTaskID] || x.Removed || x.Time.IsZero() {
		t.Fatalf("Exit = %+v, want code 3 for task %s", x, s.Labels[LabelTaskID])
	}
	if st := waitExited(t, e, id); st.ExitCode != 3 {
		t.Fatalf("Inspect exit code %d, want 3", st.ExitCode)
	}
	if err := e.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if x := next("destroy"); !x.Removed || x.TaskID != s.Labels[LabelTaskID] {
		t.Fatalf("Exit = %+v, want a removal", x)
	}

	cancel()
	for range exits {
	}
	if err, ok := <-errc; ok {
		t.Fatalf("error after cancel: %v", err)
	}
}

func TestStop(t *testing.T) {
	t.Parallel()
	e, img := newEngine(t, nil)

	t.Run("trapsTERM", func(t *testing.T) {
		t.Parallel()
		s := taskSpec(img, "trap", "sh", "-c", `trap "exit 0" TERM; echo ready; while :; do sleep 0.1; done`)
		id := create(t, e, s)
		start(t, e, id)
		waitLogs(t, e, id, "ready")
		grace := time.Second
		t0 := time.Now()
		if err := e.Stop(t.Context(), id, &grace); err != nil {
			t.Fatal(err)
		}
		took := time.Since(t0)
		st, err := e.Inspect(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("stop took %v, exit %d", took, st.ExitCode)
		// Exit 0 is the proof that TERM reached the trap: a container
		// killed at the end of the grace period exits 137. (No bound on
		// the time taken: a loaded machine may be slow.)
		if st.Running || st.ExitCode != 0 {
			t.Fatalf("after Stop: %+v, want exit 0 from the TERM trap", st)
		}
	})

	t.Run("ignoresTERM", func(t *testing.T) {
		t.Parallel()
		// PID 1 without a handler ignores TERM: the engine kills it after
		// the 1s grace period given to Stop.
		s := taskSpec(img, "noterm", "sh", "-c", `echo ready; while :; do sleep 0.1; done`)
		grace := time.Second
		id := create(t, e, s)
		start(t, e, id)
		waitLogs(t, e, id, "ready")
		t0 := time.Now()
		if err := e.Stop(t.Context(), id, &grace); err != nil {
			t.Fatal(err)
		}
		took := time.Since(t0)
		st, err := e.Inspect(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("stop took %v, exit %d", took, st.ExitCode)
		if st.Running || st.ExitCode != 137 {
			t.Fatalf("after Stop: %+v, want killed (137)", st)
		}
		// At least the spec's 1s grace, and short of the engine's 10s
		// default (which a Stop that ignored the spec would wait).
		if took < 900*time.Millisecond || took >= 9*time.Second {
			t.Fatalf("Stop took %v, want the 1s grace period (not the 10s default)", took)
		}
	})
}

func TestListTasks(t *testing.T) {
	t.Parallel()
	e, img := newEngine(t, nil)
	ctx := t.Context()

	running := taskSpec(img, "lista", "sh", "-c", "sleep 30")
	runningID := create(t, e, running)
	start(t, e, runningID)
	created := taskSpec(img, "listb", "sh", "-c", "sleep 30")
	createdID := create(t, e, created)

	// A container without the task label must never be listed.
	res, err := e.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:   "hushtest" + runID + "-nolabel",
		Config: &container.Config{Image: img, Cmd: []string{"sleep", "30"}, Labels: map[string]string{"org.hush.test": runID}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeNow(t, e, res.ID) })

	list, err := e.ListTasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]State{}
	for _, st := range list {
		byID[st.ID] = st
		if _, ok := st.Labels[LabelTaskID]; !ok {
			t.Errorf("listed a container without the task label: %+v", st)
		}
	}
	if st, ok := byID[runningID]; !ok || !st.Running || st.Name != running.Name || st.Labels[LabelTaskID] != running.Labels[LabelTaskID] {
		t.Errorf("running task: %+v (listed %v)", st, ok)
	}
	if st, ok := byID[createdID]; !ok || st.Running || st.Status != "created" || st.Name != created.Name {
		t.Errorf("created task: %+v (listed %v)", st, ok)
	}
	if _, ok := byID[res.ID]; ok {
		t.Errorf("unlabelled container was listed")
	}
}

func TestCreateIsIdempotent(t *testing.T) {
	t.Parallel()
	e, img := newEngine(t, nil)
	s := taskSpec(img, "idem", "sh", "-c", "sleep 30")
	id := create(t, e, s)
	again, err := e.Create(t.Context(), s)
	if err != nil || again != id {
		t.Fatalf("second Create = %q, %v; want %q", again, err, id)
	}
	start(t, e, id)
	if again, err := e.Create(t.Context(), s); err != nil || again != id {
		t.Fatalf("Create of a running task = %q, %v; want %q", again, err, id)
	}

	other := s
	other.Labels = map[string]string{LabelTaskID: "another-task"}
	if _, err := e.Create(t.Context(), other); !errors.Is(err, ErrConflict) {
		t.Fatalf("Create with the name of another task's container: %v, want ErrConflict", err)
	}
}

func TestNotFoundAndGone(t *testing.T) {
	t.Parallel()
	e, img := newEngine(t, nil)
	ctx := t.Context()

	s := taskSpec(img, "gone", "sh", "-c", "sleep 30")
	id := create(t, e, s)
	start(t, e, id)
	if err := e.Remove(ctx, id); err != nil {
		t.Fatalf("Remove of a running container: %v", err)
	}
	if err := e.Remove(ctx, id); err != nil {
		t.Fatalf("Remove of a gone container: %v", err)
	}
	if _, err := e.Inspect(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Inspect of a removed container: %v, want ErrNotFound", err)
	}
	unknown := "hushtest" + runID + "-does-not-exist"
	if _, err := e.Inspect(ctx, unknown); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Inspect(unknown): %v, want ErrNotFound", err)
	}
	if err := e.Remove(ctx, unknown); err != nil {
		t.Fatalf("Remove(unknown): %v", err)
	}
	if err := e.Stop(ctx, unknown, nil); err != nil {
		t.Fatalf("Stop(unknown): %v", err)
	}
	if err := e.Start(ctx, unknown); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Start(unknown): %v, want ErrNotFound", err)
	}
	if _, err := e.Logs(ctx, unknown, false, "", false, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Logs(unknown): %v, want ErrNotFound", err)
	}
}

func TestImages(t *testing.T) {
	t.Parallel()
	e, img := newEngine(t, nil)
	ctx := t.Context()
	if ok, err := e.HasImage(ctx, img); err != nil || !ok {
		t.Fatalf("HasImage(%s) = %v, %v", img, ok, err)
	}
	missing := "hush-test/does-not-exist-" + runID + ":latest"
	if ok, err := e.HasImage(ctx, missing); err != nil || ok {
		t.Fatalf("HasImage(%s) = %v, %v; want false", missing, ok, err)
	}
	s := taskSpec(missing, "noimg", "true")
	if id, err := e.Create(ctx, s); !errors.Is(err, ErrImageNotFound) {
		if err == nil {
			removeNow(t, e, id)
		}
		t.Fatalf("Create with a missing image: %v, want ErrImageNotFound", err)
	}
}

func TestLogsTail(t *testing.T) {
	t.Parallel()
	e, img := newEngine(t, nil)
	s := taskSpec(img, "logs", "sh", "-c", "echo one; echo two >&2; sleep 0.2; echo three")
	id := create(t, e, s)
	start(t, e, id)
	waitExited(t, e, id)

	rc, err := e.Logs(t.Context(), id, false, "1", true, "")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, rc); err != nil {
		t.Fatalf("not a multiplexed stream: %v", err)
	}
	// tail=1 applies to the merged stream: only the last line, stamped.
	if got := stdout.String(); !strings.HasSuffix(got, " three\n") || strings.Contains(got, "one") || stderr.Len() != 0 {
		t.Fatalf("tail 1 with timestamps: stdout %q stderr %q", got, stderr.String())
	}

	rc2, err := e.Logs(t.Context(), id, true, "all", false, "")
	if err != nil {
		t.Fatal(err)
	}
	defer rc2.Close()
	stdout.Reset()
	stderr.Reset()
	// follow on an exited container ends by itself.
	if _, err := stdcopy.StdCopy(&stdout, &stderr, rc2); err != nil {
		t.Fatal(err)
	}
	if stdout.String() != "one\nthree\n" || stderr.String() != "two\n" {
		t.Fatalf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	if _, err := e.Logs(t.Context(), id, false, "x", false, ""); err == nil {
		t.Fatal("Logs with tail \"x\" did not fail")
	}
}

func TestNetworks(t *testing.T) {
	t.Parallel()
	e, img := newEngine(t, nil)
	ctx := t.Context()

	var nets []string
	for _, n := range []string{"n1", "n2"} {
		name := "hushtest" + runID + "-" + n
		if _, err := e.cli.NetworkCreate(ctx, name, client.NetworkCreateOptions{
			Driver:   "bridge",
			Internal: true,
			Labels:   map[string]string{"org.hush.test": runID},
		}); err != nil {
			t.Fatal(err)
		}
		// Registered before any container: runs after they are removed.
		t.Cleanup(func() {
			if _, err := e.cli.NetworkRemove(context.Background(), name, client.NetworkRemoveOptions{}); err != nil {
				t.Errorf("cleanup: remove network %s: %v", name, err)
			}
		})
		nets = append(nets, name)
	}
	alias := "svc" + runID

	srv := taskSpec(img, "srv", "sh", "-c", "sleep 30")
	srv.Networks = nets
	srv.NetworkAliases = []string{alias}
	srvID := create(t, e, srv)
	if again, err := e.Create(ctx, srv); err != nil || again != srvID {
		t.Fatalf("second Create = %q, %v", again, err)
	}
	start(t, e, srvID)

	raw, err := e.cli.ContainerInspect(ctx, srvID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nets {
		ep, ok := raw.Container.NetworkSettings.Networks[n]
		if !ok || ep == nil || !slices.Contains(ep.Aliases, alias) {
			t.Errorf("network %s: endpoint %+v, want alias %s", n, ep, alias)
		}
	}
	if len(raw.Container.NetworkSettings.Networks) != len(nets) {
		t.Errorf("attached to %d networks, want %d", len(raw.Container.NetworkSettings.Networks), len(nets))
	}

	// Another task on the second network reaches the service by name.
	cli := taskSpec(img, "cli", "sh", "-c", "nslookup "+alias+" && echo RESOLVED")
	cli.Networks = nets[1:]
	cliID := create(t, e, cli)
	start(t, e, cliID)
	st := waitExited(t, e, cliID)
	if out := logs(t, e, cliID); st.ExitCode != 0 || !strings.Contains(out, "RESOLVED") {
		t.Fatalf("resolving %s from another container: exit %d, logs %q", alias, st.ExitCode, out)
	}
}
