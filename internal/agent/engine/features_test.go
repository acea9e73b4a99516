package engine

import "testing"

func TestSecurityFeatures(t *testing.T) {
	tests := []struct {
		opts []string
		want Features
	}{
		{nil, Features{}},
		{[]string{"name=seccomp,profile=default"}, Features{Seccomp: true}},
		{[]string{"name=apparmor", "name=seccomp,profile=builtin", "name=cgroupns"}, Features{AppArmor: true, Seccomp: true}},
		{[]string{"name=selinux", "name=userns"}, Features{SELinux: true}},
		{[]string{"profile=apparmor", "name=apparmorx"}, Features{}},
	}
	for _, tt := range tests {
		if got := securityFeatures(tt.opts); got != tt.want {
			t.Errorf("securityFeatures(%q) = %+v, want %+v", tt.opts, got, tt.want)
		}
	}
}

// TestFeatures asks the real engine: the API version is negotiated and the
// security options match docker info's.
func TestFeatures(t *testing.T) {
	e, _ := newEngine(t, nil)
	f, err := e.Features(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	info, err := e.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := securityFeatures(info.SecurityOptions)
	want.APIVersion = e.cli.ClientVersion()
	if f != want || f.APIVersion == "" {
		t.Fatalf("Features = %+v, want %+v (SecurityOptions %q)", f, want, info.SecurityOptions)
	}
}
