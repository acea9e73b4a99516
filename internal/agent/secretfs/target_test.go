package secretfs

import (
	"os"
	"strings"
	"testing"
)

func TestResolveTarget(t *testing.T) {
	tests := []struct {
		target  string
		want    string
		wantErr string // substring of the error; "" means success
	}{
		{target: "db_password", want: "/run/secrets/db_password"},
		{target: "a/b", want: "/run/secrets/a/b"},
		{target: "a.b-c_d", want: "/run/secrets/a.b-c_d"},
		{target: "..hidden", want: "/run/secrets/..hidden"},
		{target: "/etc/app/key.pem", want: "/etc/app/key.pem"},
		{target: "/config_name", want: "/config_name"},
		{target: "", wantErr: "invalid secret target: must not be empty"},
		{target: "../../etc/passwd", wantErr: `invalid secret target "../../etc/passwd": must not contain ".."`},
		{target: "..", wantErr: `must not contain ".."`},
		{target: "a/..", wantErr: `must not contain ".."`},
		{target: "a/../b", wantErr: `must not contain ".."`},
		{target: "/etc/../passwd", wantErr: `must not contain ".."`},
		{target: "a\x00b", wantErr: `invalid secret target "a\x00b": must not contain a NUL byte`},
		{target: "a//b", wantErr: `must be a clean path ("a/b")`},
		{target: "./a", wantErr: `must be a clean path ("a")`},
		{target: "a/", wantErr: `must be a clean path ("a")`},
		{target: "/a/./b", wantErr: `must be a clean path ("/a/b")`},
		{target: ".", wantErr: "must name a file"},
		{target: "/", wantErr: "must name a file"},
		{target: strings.Repeat("a", 4096), wantErr: "longer than 4095 bytes"},
		{target: strings.Repeat("a", 4090), wantErr: "under /run/secrets"},
	}
	for _, tt := range tests {
		name := tt.target
		if len(name) > 20 {
			name = name[:20]
		}
		t.Run(name, func(t *testing.T) {
			got, err := ResolveTarget(tt.target)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("ResolveTarget(%q) = %q, %v; want %q", tt.target, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ResolveTarget(%q) = %q, want error containing %q", tt.target, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ResolveTarget(%q) error %q, want it to contain %q", tt.target, err, tt.wantErr)
			}
		})
	}
}

func TestValidTaskID(t *testing.T) {
	for id, want := range map[string]bool{
		"a":                         true,
		"0":                         true,
		"k3x9q2m7w1v8b5n4c6z0d2f7h": true,
		strings.Repeat("a", 64):     true,
		"":                          false,
		strings.Repeat("a", 65):     false,
		"ABC":                       false,
		"a-b":                       false,
		"a/b":                       false,
		"..":                        false,
		"a b":                       false,
		"é":                         false,
	} {
		if got := validTaskID(id); got != want {
			t.Errorf("validTaskID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestPlanRejects(t *testing.T) {
	const secret = "s3cr3t-PLAINTEXT"
	f := func(target string) File { return File{Target: target, Mode: 0o444, Data: []byte(secret)} }
	tests := []struct {
		name    string
		files   []File
		wantErr string
	}{
		{"duplicate", []File{f("a"), f("b"), f("a")}, `files 0 ("a") and 2 ("a") have the same target /run/secrets/a`},
		{"duplicate resolved", []File{f("db"), f("/run/secrets/db")}, "have the same target /run/secrets/db"},
		{"nested", []File{f("a/b"), f("a")}, "conflict: one is inside the other"},
		{"nested absolute", []File{f("/etc/app"), f("/etc/app/key.pem")}, "conflict"},
		{"inside secrets dir", []File{f("x"), f("/run/secrets")}, "conflict"},
		{"bad target", []File{f("ok"), f("../x")}, `file 1: invalid secret target "../x"`},
		{"empty target", []File{f("")}, "must not be empty"},
		{"setuid", []File{{Target: "a", Mode: 0o444 | os.ModeSetuid}}, "bits other than permissions"},
		{"dir mode", []File{{Target: "a", Mode: os.ModeDir | 0o755}}, "bits other than permissions"},
		{"negative uid", []File{{Target: "a", UID: -1, Mode: 0o444}}, "out of range"},
		{"negative gid", []File{{Target: "a", GID: -1, Mode: 0o444}}, "out of range"},
		{"huge uid", []File{{Target: "a", UID: 1 << 32, Mode: 0o444}}, "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := plan(tt.files)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("plan: error %v, want one containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error contains secret data: %v", err)
			}
		})
	}
}
