package enginehost

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

func TestParse(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	long := "/" + strings.Repeat("x", maxPath)
	cases := []struct {
		in      string
		want    string // Path; "" means an error
		errText string // in the error when want is ""
	}{
		{in: "/var/run/docker.sock", want: "/var/run/docker.sock"},
		{in: "unix:///var/run/docker.sock", want: "/var/run/docker.sock"},
		{in: "UNIX:///run/docker.sock", want: "/run/docker.sock"},
		{in: "unix:///var/run/../run/docker.sock", want: "/var/run/docker.sock"},
		{in: "docker.sock", want: filepath.Join(wd, "docker.sock")},
		{in: "unix://rel/docker.sock", want: filepath.Join(wd, "rel/docker.sock")},
		{in: "", errText: "no engine socket"},
		{in: "unix://", errText: "names no socket path"},
		{in: "tcp://127.0.0.1:2375", errText: `scheme "tcp" is not supported`},
		{in: "ssh://user@host", errText: `scheme "ssh" is not supported`},
		{in: "npipe:////./pipe/docker_engine", errText: `scheme "npipe" is not supported`},
		{in: "fd://", errText: `scheme "fd" is not supported`},
		{in: "unix:///var/run/docker.sock?x=1", errText: "is not a socket path"},
		{in: "/a\x00b", errText: "is not a socket path"},
		{in: long, errText: "longer than"},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			h, err := Parse(c.in)
			if c.want == "" {
				if err == nil {
					t.Fatalf("Parse(%q) = %+v, want an error containing %q", c.in, h, c.errText)
				}
				if !strings.Contains(err.Error(), c.errText) {
					t.Fatalf("Parse(%q): error %q does not contain %q", c.in, err, c.errText)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", c.in, err)
			}
			if h.Path != c.want {
				t.Fatalf("Parse(%q).Path = %q, want %q", c.in, h.Path, c.want)
			}
			if h.String() != "unix://"+c.want {
				t.Fatalf("String() = %q", h.String())
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"/var/run/docker.sock", "unix:///x", "tcp://h:1", "unix://", "a://b://c", "", "?"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := Parse(s)
		if err != nil {
			return
		}
		if !filepath.IsAbs(h.Path) || len(h.Path) > maxPath || strings.ContainsAny(h.Path, "?#\x00") {
			t.Fatalf("Parse(%q) accepted a bad path %q", s, h.Path)
		}
		// Parsing the canonical form again gives the same host.
		h2, err := Parse(h.String())
		if err != nil || h2 != h {
			t.Fatalf("Parse(%q) = %+v, but Parse(%q) = %+v, %v", s, h, h.String(), h2, err)
		}
	})
}

// TestClientDialsTheSocket checks that the client NewClient builds, and
// Host.DialContext, reach the socket whatever host the request names.
func TestClientDialsTheSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "enginehost-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "e.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_ping" {
			w.Header().Set("API-Version", "1.41")
			w.Header().Set("OSType", "linux")
			_, _ = w.Write([]byte("OK"))
			return
		}
		http.NotFound(w, r)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	h, err := Parse("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := NewClient(h)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := cli.Ping(ctx, pingOpts())
	if err != nil {
		t.Fatalf("ping through the client: %v", err)
	}
	if res.APIVersion != "1.41" {
		t.Fatalf("ping: API version %q, want 1.41", res.APIVersion)
	}
	c, err := h.DialContext(ctx, "tcp", "elsewhere:80")
	if err != nil {
		t.Fatalf("DialContext: %v", err)
	}
	c.Close()
	if _, err := NewClient(Host{}); err == nil {
		t.Fatal("NewClient(Host{}) should fail")
	}
}

func pingOpts() client.PingOptions { return client.PingOptions{} }
