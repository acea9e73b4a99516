package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeContext writes a docker CLI context as `docker context create`
// stores it.
func writeContext(t *testing.T, cfgDir, name, host string) {
	t.Helper()
	sum := sha256.Sum256([]byte(name))
	dir := filepath.Join(cfgDir, "contexts", "meta", hex.EncodeToString(sum[:]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	meta := `{"Name":"` + name + `","Metadata":{},"Endpoints":{"docker":{"Host":"` + host + `","SkipTLSVerify":false}}}`
	if err := os.WriteFile(filepath.Join(dir, "meta.json"), []byte(meta), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeConfig(t *testing.T, cfgDir, body string) {
	t.Helper()
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestResolveHost(t *testing.T) {
	home := t.TempDir()
	cfg := t.TempDir() // a DOCKER_CONFIG
	writeContext(t, cfg, "prod", "unix:///run/prod/hushd.sock")
	writeContext(t, cfg, "staging", "unix:///run/staging/hushd.sock")
	writeContext(t, cfg, "remote", "tcp://10.0.0.1:2376")
	writeContext(t, cfg, "ssh", "ssh://user@host")
	writeConfig(t, cfg, `{"auths":{},"currentContext":"prod"}`)
	other := t.TempDir() // a --config with its own current context
	writeContext(t, other, "staging", "unix:///run/other-staging.sock")
	writeConfig(t, other, `{"currentContext":"staging"}`)
	homeCfg := filepath.Join(home, ".docker") // ~/.docker
	writeContext(t, homeCfg, "mine", "unix:///home/me/hushd.sock")
	writeConfig(t, homeCfg, `{"currentContext":"mine"}`)
	broken := t.TempDir()
	writeConfig(t, broken, `{"currentContext":`)

	cases := []struct {
		name    string
		args    []string
		env     map[string]string
		euid    int
		want    string // socket path
		source  string
		wantErr string
		usage   bool
	}{
		{name: "flag beats everything", args: []string{"-H", "unix:///x/flag.sock"},
			env: map[string]string{"DOCKER_HOST": "unix:///x/env.sock", "DOCKER_CONTEXT": "staging", "DOCKER_CONFIG": cfg}, want: "/x/flag.sock", source: "--host"},
		{name: "long flag with =", args: []string{"--host=unix:///x/flag.sock"}, want: "/x/flag.sock", source: "--host"},
		{name: "DOCKER_HOST beats DOCKER_CONTEXT and the current context",
			env: map[string]string{"DOCKER_HOST": "unix:///x/env.sock", "DOCKER_CONTEXT": "staging", "DOCKER_CONFIG": cfg}, want: "/x/env.sock", source: "DOCKER_HOST"},
		{name: "DOCKER_CONTEXT beats the current context",
			env: map[string]string{"DOCKER_CONTEXT": "staging", "DOCKER_CONFIG": cfg}, want: "/run/staging/hushd.sock", source: `context "staging"`},
		{name: "current context of DOCKER_CONFIG", env: map[string]string{"DOCKER_CONFIG": cfg}, want: "/run/prod/hushd.sock", source: `context "prod"`},
		{name: "current context of ~/.docker", want: "/home/me/hushd.sock", source: `context "mine"`},
		{name: "--config beats DOCKER_CONFIG", args: []string{"--config", other}, env: map[string]string{"DOCKER_CONFIG": cfg},
			want: "/run/other-staging.sock", source: `context "staging"`},
		{name: "--context beats DOCKER_HOST", args: []string{"--context", "staging"},
			env: map[string]string{"DOCKER_HOST": "unix:///x/env.sock", "DOCKER_CONFIG": cfg}, want: "/run/staging/hushd.sock", source: `context "staging"`},
		{name: "-c shorthand", args: []string{"-c", "staging"}, env: map[string]string{"DOCKER_CONFIG": cfg}, want: "/run/staging/hushd.sock"},
		{name: "context default is hushd's default socket as root", args: []string{"--context", "default"},
			env: map[string]string{"DOCKER_CONFIG": cfg}, want: "/run/hush/hushd.sock", source: "default"},
		{name: "DOCKER_CONTEXT=default with no DOCKER_HOST", env: map[string]string{"DOCKER_CONTEXT": "default", "DOCKER_CONFIG": cfg},
			want: "/run/hush/hushd.sock", source: "default"},
		{name: "no config at all, root", env: map[string]string{"DOCKER_CONFIG": t.TempDir()}, want: "/run/hush/hushd.sock", source: "default"},
		{name: "no config at all, a user", env: map[string]string{"DOCKER_CONFIG": t.TempDir()}, euid: 1000,
			want: filepath.Join(home, ".local/share/hush/hushd.sock"), source: "default"},
		{name: "--host and --context", args: []string{"-H", "unix:///a", "--context", "prod"}, wantErr: "conflicting options", usage: true},
		{name: "unknown context", args: []string{"--context", "nope"}, env: map[string]string{"DOCKER_CONFIG": cfg}, wantErr: `context "nope" does not exist`},
		{name: "tcp context refused by scheme", env: map[string]string{"DOCKER_CONTEXT": "remote", "DOCKER_CONFIG": cfg}, wantErr: "scheme tcp is not supported"},
		{name: "ssh context refused by scheme", env: map[string]string{"DOCKER_CONTEXT": "ssh", "DOCKER_CONFIG": cfg}, wantErr: "scheme ssh is not supported"},
		{name: "tcp flag refused", args: []string{"-H", "tcp://127.0.0.1:2375"}, wantErr: "--host: host \"tcp://127.0.0.1:2375\": scheme tcp is not supported", usage: true},
		{name: "no scheme", env: map[string]string{"DOCKER_HOST": "/run/hush/hushd.sock"}, wantErr: "has no scheme"},
		{name: "relative unix path", env: map[string]string{"DOCKER_HOST": "unix://run/x.sock"}, wantErr: "absolute"},
		{name: "broken config.json", env: map[string]string{"DOCKER_CONFIG": broken}, wantErr: "not valid JSON"},
		{name: "two different -H", args: []string{"-H", "unix:///a", "-H", "unix:///b"}, wantErr: "only one -H", usage: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := &env{getenv: func(k string) string { return c.env[k] }, home: home, euid: c.euid}
			var g globals
			rest, err := g.parse(c.args)
			if err == nil && len(rest) != 0 {
				t.Fatalf("globals left %q", rest)
			}
			var ep endpoint
			if err == nil {
				ep, err = resolveHost(g, e)
			}
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("got %+v, %v; want an error containing %q", ep, err, c.wantErr)
				}
				var ue *usageError
				if errors.As(err, &ue) != c.usage {
					t.Fatalf("usage error: %v, want %v (%v)", !c.usage, c.usage, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ep.Socket != c.want || (c.source != "" && ep.Source != c.source) || ep.Host != "unix://"+c.want {
				t.Fatalf("got %+v, want socket %s from %s", ep, c.want, c.source)
			}
		})
	}
}

func TestGlobalsForms(t *testing.T) {
	cases := []struct {
		args    []string
		want    globals
		rest    []string
		wantErr string
	}{
		{args: []string{"-H", "unix:///a", "backup"}, want: globals{host: "unix:///a", hostSet: true}, rest: []string{"backup"}},
		{args: []string{"-Hunix:///a", "x"}, want: globals{host: "unix:///a", hostSet: true}, rest: []string{"x"}},
		{args: []string{"-H=unix:///a"}, want: globals{host: "unix:///a", hostSet: true}},
		{args: []string{"-Dl", "warn", "key"}, want: globals{debug: true, logLevel: "warn"}, rest: []string{"key"}},
		{args: []string{"--log-level=debug"}, want: globals{debug: true, logLevel: "debug"}},
		{args: []string{"--debug=false", "x"}, want: globals{}, rest: []string{"x"}},
		{args: []string{"--", "-H"}, want: globals{}, rest: []string{"-H"}},
		{args: []string{"-v"}, want: globals{version: true}},
		{args: []string{"--config", "/c", "-c", "ctx"}, want: globals{config: "/c", configSet: true, context: "ctx", contextSet: true}},
		{args: []string{"--tls"}, wantErr: "--tls is not supported"},
		{args: []string{"--tlscacert", "/ca.pem"}, wantErr: "--tlscacert is not supported"},
		{args: []string{"--tlsverify=true"}, wantErr: "--tlsverify is not supported"},
		{args: []string{"--nope"}, wantErr: "unknown flag: --nope"},
		{args: []string{"-x"}, wantErr: "unknown shorthand flag"},
		{args: []string{"-H"}, wantErr: "flag needs an argument"},
		{args: []string{"--log-level", "loud"}, wantErr: "invalid --log-level"},
	}
	for _, c := range cases {
		var g globals
		rest, err := g.parse(c.args)
		if c.wantErr != "" {
			var ue *usageError
			if err == nil || !strings.Contains(err.Error(), c.wantErr) || !errors.As(err, &ue) {
				t.Errorf("%q: %v, want a usage error containing %q", c.args, err, c.wantErr)
			}
			continue
		}
		if err != nil || g != c.want || strings.Join(rest, " ") != strings.Join(c.rest, " ") {
			t.Errorf("%q: %+v rest %q err %v; want %+v rest %q", c.args, g, rest, err, c.want, c.rest)
		}
	}
}
