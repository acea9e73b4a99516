package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/backup"
	"github.com/hush-secrets/hush/internal/daemon"
)

// fakeHushd serves h on a unix socket and returns its host.
func fakeHushd(t *testing.T, h http.Handler) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hush-cli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "h.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return "unix://" + sock
}

type result struct {
	code           int
	stdout, stderr string
}

func runHush(t *testing.T, envv map[string]string, args ...string) result {
	t.Helper()
	var so, se bytes.Buffer
	if envv == nil {
		envv = map[string]string{}
	}
	if _, ok := envv["DOCKER_CONFIG"]; !ok {
		envv["DOCKER_CONFIG"] = t.TempDir()
	}
	e := &env{stdout: &so, stderr: &se, getenv: func(k string) string { return envv[k] }, home: t.TempDir(), euid: 0}
	code := run(context.Background(), append([]string{"hush"}, args...), e)
	r := result{code, so.String(), se.String()}
	if code != 0 && strings.Count(strings.TrimRight(r.stderr, "\n"), "\n") != 0 {
		t.Errorf("hush %q: the error is not one line:\n%s", args, r.stderr)
	}
	if code != 0 && !strings.HasPrefix(r.stderr, "hush: ") {
		t.Errorf("hush %q: the error does not start with \"hush: \": %q", args, r.stderr)
	}
	return r
}

// walk calls fn with the argument path of every command.
func walk(cmd *command, path []string, fn func([]string, *command)) {
	fn(path, cmd)
	for _, s := range cmd.subs {
		walk(s, append(append([]string{}, path...), s.name), fn)
	}
}

func TestHelpIsCompleteForEveryCommand(t *testing.T) {
	walk(rootCommand(), nil, func(path []string, cmd *command) {
		for _, form := range [][]string{append(append([]string{}, path...), "--help"), append([]string{"help"}, path...)} {
			r := runHush(t, nil, form...)
			if r.code != 0 || r.stderr != "" {
				t.Errorf("hush %q: exit %d, stderr %q", form, r.code, r.stderr)
				continue
			}
			want := []string{"Usage:", strings.TrimSpace(strings.SplitN(strings.TrimSpace(cmd.help), "\n", 2)[0])}
			for _, s := range cmd.subs {
				want = append(want, s.name, s.summary)
			}
			if cmd.setup != nil {
				fs := newFlagSet(cmd)
				fs.VisitAll(func(f *flagT) {
					want = append(want, "-"+f.Name, f.Usage)
				})
			}
			if len(path) == 0 {
				for _, g := range globalFlags {
					want = append(want, "--"+g.long, g.usage)
				}
				want = append(want, "Exit status", "DOCKER_HOST", "DOCKER_CONTEXT", "cli-plugins")
			}
			for _, w := range want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("hush %q: help lacks %q:\n%s", form, w, r.stdout)
				}
			}
		}
	})
}

func TestExitCodes(t *testing.T) {
	key := filepath.Join(t.TempDir(), "k")
	if err := os.WriteFile(key, []byte("pass"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	nowhere := map[string]string{"DOCKER_HOST": "unix:///nonexistent/hushd.sock"}
	cases := []struct {
		args []string
		env  map[string]string
		code int
		want string
	}{
		{nil, nil, exitUsage, "needs a command"},
		{[]string{"frobnicate"}, nil, exitUsage, `unknown command "frobnicate"`},
		{[]string{"key"}, nil, exitUsage, "hush key needs a command"},
		{[]string{"key", "spin"}, nil, exitUsage, `unknown command "spin" for hush key`},
		{[]string{"backup"}, nil, exitUsage, "exactly one FILE"},
		{[]string{"backup", "f"}, nil, exitUsage, "--key-file is required"},
		{[]string{"backup", "--key-file", key, "a", "b"}, nil, exitUsage, "exactly one FILE"},
		{[]string{"backup", "--key-file", key, "-"}, nil, exitUsage, "standard output"},
		{[]string{"backup", "--nope", "f"}, nil, exitUsage, "flag provided but not defined: -nope"},
		{[]string{"key", "rotate", "extra"}, nil, exitUsage, "takes no arguments"},
		{[]string{"--tls", "key", "rotate"}, nil, exitUsage, "--tls is not supported"},
		{[]string{"-H", "tcp://127.0.0.1:1", "key", "rotate"}, nil, exitUsage, "scheme tcp is not supported"},
		{[]string{"key", "rotate"}, map[string]string{"DOCKER_HOST": "tcp://127.0.0.1:1"}, exitError, "scheme tcp is not supported"},
		{[]string{"key", "rotate"}, nowhere, exitError, "cannot connect to hushd at unix:///nonexistent/hushd.sock (from DOCKER_HOST)"},
		{[]string{"backup", "--key-file", empty, filepath.Join(t.TempDir(), "b")}, nowhere, exitError, "is empty"},
		{[]string{"backup", "--key-file", "/nonexistent/key", filepath.Join(t.TempDir(), "b")}, nowhere, exitError, "no such file"},
		{[]string{"--version"}, nil, exitOK, ""},
	}
	for _, c := range cases {
		r := runHush(t, c.env, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("hush %q: exit %d stderr %q; want exit %d and %q", c.args, r.code, r.stderr, c.code, c.want)
		}
	}
	if r := runHush(t, nil, "-v"); r.stdout != "hush version "+version+"\n" {
		t.Errorf("hush -v: %q", r.stdout)
	}
}

// TestContracts keeps the CLI's copies of the wire contract and version
// equal to hushd's (the CLI does not link hushd's packages).
func TestContracts(t *testing.T) {
	if version != daemon.Version {
		t.Errorf("hush version %s, hushd %s", version, daemon.Version)
	}
	if backupTrailer != api.BackupErrorTrailer {
		t.Errorf("trailer %s, hushd's %s", backupTrailer, api.BackupErrorTrailer)
	}
	a, _ := json.Marshal(backupRequest{Key: []byte("k")})
	b, _ := json.Marshal(api.BackupRequest{Key: []byte("k")})
	if !bytes.Equal(a, b) {
		t.Errorf("backup request %s, hushd's %s", a, b)
	}
}

func TestPluginMetadata(t *testing.T) {
	r := runHush(t, nil, "docker-cli-plugin-metadata")
	var m map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || r.code != 0 {
		t.Fatalf("metadata: %v exit %d: %s", err, r.code, r.stdout)
	}
	want := map[string]string{"SchemaVersion": "0.1.0", "Vendor": "hush", "Version": version, "ShortDescription": m["ShortDescription"]}
	if len(m) != len(want) || m["ShortDescription"] == "" {
		t.Fatalf("metadata %v", m)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("metadata %s = %q, want %q", k, m[k], v)
		}
	}
}

func rotateHandler(t *testing.T, calls *int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != keyRotatePath {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"message":"page not found"}`)
			return
		}
		*calls++
		io.WriteString(w, `{"KeyID":"0123456789abcdef","Rewrapped":42}`)
	})
}

// TestPluginMode runs hush as the docker CLI runs a plugin: docker's
// global options first (as the user typed them), the plugin name, then
// the command.
func TestPluginMode(t *testing.T) {
	calls := 0
	host := fakeHushd(t, rotateHandler(t, &calls))
	penv := func() map[string]string {
		return map[string]string{pluginEnv: "docker", "DOCKER_HOST": "unix:///nonexistent.sock"}
	}
	for _, args := range [][]string{
		{"-H", host, "hush", "key", "rotate"},
		{"--host=" + host, "--log-level", "warn", "hush", "key", "rotate"},
		{"hush", "-H", host, "key", "rotate"},
	} {
		r := runHush(t, penv(), args...)
		if r.code != 0 || !strings.Contains(r.stdout, "0123456789abcdef") {
			t.Errorf("docker-hush %q: exit %d %q %q", args, r.code, r.stdout, r.stderr)
		}
	}
	e := penv()
	e["DOCKER_HOST"] = host
	if r := runHush(t, e, "hush", "key", "rotate", "-q"); r.code != 0 || r.stdout != "0123456789abcdef\n" {
		t.Errorf("plugin with DOCKER_HOST: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if calls != 4 {
		t.Errorf("%d rotate calls, want 4", calls)
	}
	if r := runHush(t, penv(), "hush", "--help"); r.code != 0 || !strings.Contains(r.stdout, "Usage:  docker hush [OPTIONS] COMMAND") {
		t.Errorf("docker hush --help: exit %d %q", r.code, r.stdout)
	}
	if r := runHush(t, penv(), "-H", host, "notthename", "key"); r.code != exitUsage {
		t.Errorf("plugin args without the plugin name: exit %d", r.code)
	}
	if r := runHush(t, penv(), "-H", host, "-H", "unix:///other", "hush", "key", "rotate"); r.code != exitUsage || !strings.Contains(r.stderr, "only one -H") {
		t.Errorf("two -H: exit %d %q", r.code, r.stderr)
	}
}

// TestPluginSocket: the docker CLI closing its socket cancels the command.
func TestPluginSocket(t *testing.T) {
	dir, _ := os.MkdirTemp("", "hush-plug-")
	defer os.RemoveAll(dir)
	ln, err := net.Listen("unix", filepath.Join(dir, "p.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, stop := watchPluginSocket(context.Background(), ln.Addr().String())
	defer stop()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatal("cancelled before the CLI closed its end")
	}
	conn.Close()
	<-ctx.Done()
	if ctx2, stop2 := watchPluginSocket(context.Background(), ""); ctx2.Err() != nil {
		t.Fatal("no socket: the context must stay as it is")
	} else {
		stop2()
	}
}

func TestKeyRotateAnswers(t *testing.T) {
	cases := []struct {
		name    string
		status  int
		body    string
		code    int
		want    string
		wantOut string
	}{
		{"ok", 200, `{"KeyID":"abc123","Rewrapped":7}`, 0, "", "Master key rotated: the new key is abc123; 7 data keys re-wrapped under it.\n"},
		{"not served yet", 404, `{"message":"page not found"}`, 1, "does not serve POST /hush/v1/key/rotate", ""},
		{"hushd's error", 503, `{"message":"Swarm is encrypted and needs to be unlocked before it can be used."}`, 1, "hush: Swarm is encrypted and needs to be unlocked before it can be used.\n", ""},
		{"multi-line error", 500, "{\"message\":\"internal error:\\nsee the log\"}", 1, "hush: internal error: see the log\n", ""},
		{"not JSON", 200, `not json`, 1, "not the JSON expected", ""},
		{"no key ID", 200, `{}`, 1, "no KeyID", ""},
		{"plain-text error", 502, "bad gateway\n", 1, "hush: bad gateway\n", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			host := fakeHushd(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost || r.URL.Path != keyRotatePath {
					t.Errorf("request %s %s", r.Method, r.URL.Path)
				}
				w.WriteHeader(c.status)
				io.WriteString(w, c.body)
			}))
			r := runHush(t, map[string]string{"DOCKER_HOST": host}, "key", "rotate")
			if r.code != c.code || !strings.Contains(r.stderr, c.want) || r.stdout != c.wantOut {
				t.Fatalf("exit %d stdout %q stderr %q; want exit %d, stderr with %q, stdout %q", r.code, r.stdout, r.stderr, c.code, c.want, c.wantOut)
			}
		})
	}
}

func TestKeyShowAnswers(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		status  int
		body    string
		code    int
		want    string
		wantOut string
	}{
		{"autolock on", nil, 200, `{"KeyID":"abc123","Autolock":true}`, 0, "", "Master key abc123 (autolock on)\n"},
		{"autolock off", nil, 200, `{"KeyID":"abc123","Autolock":false}`, 0, "", "Master key abc123 (autolock off)\n"},
		{"quiet", []string{"-q"}, 200, `{"KeyID":"abc123","Autolock":false}`, 0, "", "abc123\n"},
		{"locked", nil, 503, `{"message":"Swarm is encrypted and needs to be unlocked before it can be used."}`, 1, "hush: Swarm is encrypted", ""},
		{"no key ID", nil, 200, `{}`, 1, "no KeyID", ""},
		{"extra argument", []string{"x"}, 200, `{}`, exitUsage, "takes no arguments", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			host := fakeHushd(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodGet || r.URL.Path != keyShowPath {
					t.Errorf("request %s %s", r.Method, r.URL.Path)
				}
				w.WriteHeader(c.status)
				io.WriteString(w, c.body)
			}))
			r := runHush(t, map[string]string{"DOCKER_HOST": host}, append([]string{"key", "show"}, c.args...)...)
			if r.code != c.code || !strings.Contains(r.stderr, c.want) || r.stdout != c.wantOut {
				t.Fatalf("exit %d stdout %q stderr %q; want exit %d, stderr with %q, stdout %q", r.code, r.stdout, r.stderr, c.code, c.want, c.wantOut)
			}
		})
	}
}

// backupHandler speaks POST /hush/v1/backup as hushd does; cut, if set,
// ends the stream after that many bytes, with trailer as its error.
func backupHandler(t *testing.T, cut int, trailer string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req backupRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Key) == 0 {
			w.WriteHeader(400)
			io.WriteString(w, `{"message":"bad request"}`)
			return
		}
		s, err := backup.NewSealer(req.Key, backup.Config{})
		if err != nil {
			t.Error(err)
			return
		}
		var buf bytes.Buffer
		bw := s.NewWriter(&buf)
		m := &backup.Manifest{NodeID: "node1", ClusterID: "cluster1", Files: []backup.File{{Path: "node.json", Data: []byte(`{}`)}}}
		if err := backup.WriteManifest(bw, m); err != nil {
			t.Error(err)
		}
		bw.Write(bytes.Repeat([]byte("snapshot"), 20000))
		bw.Close()
		out := buf.Bytes()
		w.Header().Set("Trailer", backupTrailer)
		if cut > 0 {
			out = out[:cut]
		}
		w.Write(out)
		if trailer != "" {
			w.Header().Set(backupTrailer, trailer)
		}
	})
}

func TestBackupCommand(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("the passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "b.hush")
	host := fakeHushd(t, backupHandler(t, 0, ""))
	r := runHush(t, map[string]string{"DOCKER_HOST": host}, "backup", "--key-file", key, target)
	if r.code != 0 || !strings.Contains(r.stdout, "cluster cluster1") {
		t.Fatalf("backup: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	fi, err := os.Stat(target)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
	good, _ := os.ReadFile(target)
	f, _ := os.Open(target)
	if _, err := verify(f, []byte("the passphrase\n")); err != nil {
		t.Fatalf("the written file does not verify: %v", err)
	}
	f.Close()

	// A failed backup leaves the earlier file as it was and no temp file.
	for _, c := range []struct {
		name    string
		h       http.Handler
		wantErr string
	}{
		{"cut at a chunk boundary", backupHandler(t, 56+backup.DefaultChunkSize+16, ""), "does not verify"},
		{"cut mid-chunk", backupHandler(t, 56+1000, ""), "does not verify"},
		{"hushd failed while streaming", backupHandler(t, 56+1000, "backup: store: snapshot stream ended early"), "hushd: the backup failed: backup: store: snapshot stream ended early"},
		{"hushd refused", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(503)
			io.WriteString(w, `{"message":"another backup is running: try again when it has finished"}`)
		}), "hush: another backup is running"},
	} {
		t.Run(c.name, func(t *testing.T) {
			host := fakeHushd(t, c.h)
			r := runHush(t, map[string]string{"DOCKER_HOST": host}, "backup", "--key-file", key, target)
			if r.code != exitError || !strings.Contains(r.stderr, c.wantErr) {
				t.Fatalf("exit %d stderr %q; want 1 and %q", r.code, r.stderr, c.wantErr)
			}
			if b, _ := os.ReadFile(target); !bytes.Equal(b, good) {
				t.Fatal("a failed backup changed the earlier backup file")
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 2 {
				t.Fatalf("files left in the directory: %v", ents)
			}
		})
	}
}

type flagT = flag.Flag

// newFlagSet gives the flags a command defines.
func newFlagSet(cmd *command) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	cmd.setup(fs)
	return fs
}
