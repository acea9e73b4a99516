package standalone

import (
	"errors"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
)

func TestParseLabels(t *testing.T) {
	tests := []struct {
		name    string
		labels  map[string]string
		secrets []Ref
		configs []Ref
		err     string // substring of the error; "" means success
	}{
		{name: "none", labels: map[string]string{"app": "x"}},
		{name: "short list", labels: map[string]string{LabelSecrets: "db_password, api_key"},
			secrets: []Ref{
				{Name: "db_password", Target: "/run/secrets/db_password", Mode: 0o444},
				{Name: "api_key", Target: "/run/secrets/api_key", Mode: 0o444},
			}},
		{name: "long form", labels: map[string]string{"io.hush.secret.db": "target=/etc/app/key,uid=1000,gid=1001,mode=0400"},
			secrets: []Ref{{Name: "db", Target: "/etc/app/key", UID: 1000, GID: 1001, Mode: 0o400}}},
		{name: "long form relative target", labels: map[string]string{"io.hush.secret.db": "target=app/key"},
			secrets: []Ref{{Name: "db", Target: "/run/secrets/app/key", Mode: 0o444}}},
		{name: "long form empty is defaults", labels: map[string]string{"io.hush.secret.db": ""},
			secrets: []Ref{{Name: "db", Target: "/run/secrets/db", Mode: 0o444}}},
		// docker's --secret reads mode with strconv base 0: 440 is decimal
		// there (0670), octal to a reader; hush refuses rather than pick.
		{name: "mode without leading zero", labels: map[string]string{"io.hush.secret.db": "mode=440"}, err: `mode "440" is ambiguous`},
		{name: "mode 0o form", labels: map[string]string{"io.hush.secret.db": "mode=0o440"},
			secrets: []Ref{{Name: "db", Target: "/run/secrets/db", Mode: 0o440}}},
		{name: "mode one digit", labels: map[string]string{"io.hush.secret.db": "mode=4"},
			secrets: []Ref{{Name: "db", Target: "/run/secrets/db", Mode: 0o4}}},
		{name: "mode zero", labels: map[string]string{"io.hush.secret.db": "mode=0"},
			secrets: []Ref{{Name: "db", Target: "/run/secrets/db", Mode: 0}}},
		{name: "configs", labels: map[string]string{LabelConfigs: "nginx.conf", "io.hush.config.app": "target=etc/app.ini,uid=5"},
			configs: []Ref{
				{Name: "nginx.conf", Target: "/nginx.conf", Mode: 0o444},
				{Name: "app", Target: "/etc/app.ini", UID: 5, Mode: 0o444},
			}},
		{name: "both kinds", labels: map[string]string{LabelSecrets: "a", LabelConfigs: "b"},
			secrets: []Ref{{Name: "a", Target: "/run/secrets/a", Mode: 0o444}},
			configs: []Ref{{Name: "b", Target: "/b", Mode: 0o444}}},

		{name: "unknown hush label", labels: map[string]string{"io.hush.secretz": "a"}, err: `unknown label "io.hush.secretz"`},
		{name: "hush's own task label", labels: map[string]string{"io.hush.node.id": "x"}, err: `unknown label "io.hush.node.id"`},
		{name: "unknown option", labels: map[string]string{"io.hush.secret.db": "moed=0400"}, err: `unknown option "moed"`},
		{name: "source option", labels: map[string]string{"io.hush.secret.db": "source=x"}, err: `option "source" is not taken`},
		{name: "not key=value", labels: map[string]string{"io.hush.secret.db": "target"}, err: `option "target" is not key=value`},
		{name: "option twice", labels: map[string]string{"io.hush.secret.db": "uid=1,uid=2"}, err: `option "uid" given twice`},
		{name: "both forms", labels: map[string]string{LabelSecrets: "db", "io.hush.secret.db": ""}, err: `secret "db" is named both by label io.hush.secrets and by label io.hush.secret.db`},
		{name: "named twice", labels: map[string]string{LabelSecrets: "db,db"}, err: `secret "db" is named twice`},
		{name: "empty list", labels: map[string]string{LabelSecrets: " "}, err: "no secret named"},
		{name: "empty entry", labels: map[string]string{LabelSecrets: "a,,b"}, err: "empty secret name"},
		{name: "bad name", labels: map[string]string{LabelSecrets: "-a"}, err: `invalid secret name "-a"`},
		{name: "empty long name", labels: map[string]string{"io.hush.secret.": ""}, err: "empty secret name"},
		{name: "dotdot", labels: map[string]string{"io.hush.secret.db": "target=../../etc/passwd"}, err: `must not contain ".."`},
		{name: "unclean", labels: map[string]string{"io.hush.secret.db": "target=/etc//x"}, err: "clean path"},
		{name: "empty target", labels: map[string]string{"io.hush.secret.db": "target="}, err: "empty target"},
		{name: "bad uid", labels: map[string]string{"io.hush.secret.db": "uid=-1"}, err: `invalid uid "-1"`},
		{name: "uid too large", labels: map[string]string{"io.hush.secret.db": "uid=4294967295"}, err: `invalid uid`},
		{name: "bad mode", labels: map[string]string{"io.hush.secret.db": "mode=0999"}, err: `invalid mode "0999"`},
		{name: "mode with setuid", labels: map[string]string{"io.hush.secret.db": "mode=04755"}, err: `invalid mode "04755"`},
		{name: "same target", labels: map[string]string{"io.hush.secret.a": "target=/x", "io.hush.config.b": "target=/x"}, err: `secret "a" and config "b" have the same target /x`},
		{name: "same target short and long", labels: map[string]string{LabelSecrets: "a", "io.hush.secret.b": "target=a"}, err: "have the same target /run/secrets/a"},
		{name: "nested target", labels: map[string]string{"io.hush.secret.a": "target=/x", "io.hush.secret.b": "target=/x/y"}, err: "one is inside the other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := ParseLabels(tt.labels)
			if tt.err != "" {
				if err == nil {
					t.Fatalf("ParseLabels(%v) = %+v, want error containing %q", tt.labels, req, tt.err)
				}
				if !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %q, want it to contain %q", err, tt.err)
				}
				if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("error %q is not InvalidArgument", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseLabels(%v): %v", tt.labels, err)
			}
			if !reflect.DeepEqual(req.Secrets, tt.secrets) || !reflect.DeepEqual(req.Configs, tt.configs) {
				t.Fatalf("got secrets %+v configs %+v, want %+v %+v", req.Secrets, req.Configs, tt.secrets, tt.configs)
			}
		})
	}
}

func TestParseLabelsBounded(t *testing.T) {
	names := make([]string, MaxRefs+1)
	for i := range names {
		names[i] = "s" + strconv.Itoa(i)
	}
	_, err := ParseLabels(map[string]string{LabelSecrets: strings.Join(names, ",")})
	if err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("%d secrets: got %v, want a refusal", len(names), err)
	}
}

func TestHasLabels(t *testing.T) {
	for labels, want := range map[*map[string]string]bool{
		{}:                                 false,
		{"io.hushx": "1"}:                  false,
		{"io.hush.": ""}:                   true,
		{"io.hush.secrets": ""}:            true,
		{"com.example": "io.hush.secrets"}: false,
	} {
		if got := HasLabels(*labels); got != want {
			t.Errorf("HasLabels(%v) = %v, want %v", *labels, got, want)
		}
	}
}

// FuzzParseLabels: any labels give a request or an InvalidArgument, and
// every accepted target is absolute, clean and distinct, with permission
// bits only.
func FuzzParseLabels(f *testing.F) {
	f.Add("io.hush.secrets", "a,b", "io.hush.secret.c", "target=/etc/x,uid=1,gid=2,mode=0400")
	f.Add("io.hush.configs", "n.conf", "io.hush.config.m", "")
	f.Add("io.hush.secret.a", "target=../x", "io.hush.other", "1")
	f.Add("io.hush.secrets", "a", "io.hush.secret.a", "mode=0777")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		req, err := ParseLabels(map[string]string{k1: v1, k2: v2})
		if err != nil {
			if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %q is not InvalidArgument", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, r := range append(req.Secrets, req.Configs...) {
			if !strings.HasPrefix(r.Target, "/") || strings.Contains(r.Target, "/../") || strings.Contains(r.Target, "//") {
				t.Fatalf("target %q accepted", r.Target)
			}
			if seen[r.Target] {
				t.Fatalf("target %q twice", r.Target)
			}
			seen[r.Target] = true
			if r.Mode&^os.ModePerm != 0 || r.UID < 0 || r.GID < 0 {
				t.Fatalf("ref %+v accepted", r)
			}
		}
	})
}

// TestParseLabelsErrorsBounded: a refusal quotes what is at fault, but
// never a client's megabyte of it (error texts end up in logs and
// terminals).
func TestParseLabelsErrorsBounded(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	for _, labels := range []map[string]string{
		{"io.hush.bogus" + big: ""},
		{LabelSecrets: big + "!"},
		{LabelSecretPrefix + big + "!": ""},
		{LabelSecretPrefix + "db": "target=/" + big},
		{LabelSecrets: "db", LabelSecretPrefix + big: ""},
		{LabelSecrets: "db", LabelRotate: big},
		{LabelSecrets: "db", LabelRotate: "signal:" + big},
	} {
		_, err := ParseLabels(labels)
		if err == nil || len(err.Error()) > 1024 {
			n := 0
			if err != nil {
				n = len(err.Error())
			}
			t.Fatalf("error of %d bytes: %.200v", n, err)
		}
	}
}

func TestParseRotateLabel(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		want   string
		err    string // substring; "" means success
	}{
		{name: "absent is the default", labels: map[string]string{LabelSecrets: "db"}},
		{name: "reload", labels: map[string]string{LabelSecrets: "db", LabelRotate: "reload"}, want: "reload"},
		{name: "signal", labels: map[string]string{LabelSecrets: "db", LabelRotate: "signal:SIGHUP"}, want: "signal:SIGHUP"},
		{name: "restart with any target", labels: map[string]string{LabelSecretPrefix + "db": "target=/etc/db", LabelConfigs: "c", LabelRotate: "restart"}, want: "restart"},
		{name: "unknown mode", labels: map[string]string{LabelSecrets: "db", LabelRotate: "hup"}, err: `label io.hush.rotate: unknown rotation mode "hup"`},
		{name: "unknown signal", labels: map[string]string{LabelSecrets: "db", LabelRotate: "signal:SIGKILL"}, err: `label io.hush.rotate: unknown signal "SIGKILL"`},
		{name: "empty", labels: map[string]string{LabelSecrets: "db", LabelRotate: ""}, err: "label io.hush.rotate: empty rotation mode"},
		{name: "nothing to rotate", labels: map[string]string{LabelRotate: "reload"}, err: "label io.hush.rotate: the container asks for no secret or config"},
		{name: "reload of an absolute target", labels: map[string]string{LabelSecretPrefix + "db": "target=/etc/db", LabelRotate: "reload"},
			err: "label io.hush.rotate=reload: secret db has the target /etc/db, not a file directly under /run/secrets"},
		{name: "signal with a config at /", labels: map[string]string{LabelSecrets: "db", LabelConfigs: "c", LabelRotate: "signal:SIGHUP"},
			err: "config c has the target /c"},
		{name: "reload of a nested target", labels: map[string]string{LabelSecretPrefix + "db": "target=a/b", LabelRotate: "reload"},
			err: "secret db has the target /run/secrets/a/b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := ParseLabels(tt.labels)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("got %v, want an invalid argument with %q", err, tt.err)
				}
				return
			}
			if err != nil || req.Rotate != tt.want {
				t.Fatalf("got %q, %v; want %q", req.Rotate, err, tt.want)
			}
		})
	}
}
