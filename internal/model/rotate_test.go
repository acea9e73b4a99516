package model

import (
	"testing"

	"github.com/moby/moby/api/types/swarm"
)

func TestCheckRotateMode(t *testing.T) {
	for _, tt := range []struct {
		v  string
		ok bool
	}{
		{"", true}, {"restart", true}, {"reload", true}, {"signal:SIGHUP", true}, {"signal:SIGUSR2", true},
		{"signal:", false}, {"signal:HUP", false}, {"signal:SIGKILL", false}, {"Reload", false}, {"restart ", false},
	} {
		if err := CheckRotateMode(tt.v); (err == nil) != tt.ok {
			t.Errorf("%q: %v", tt.v, err)
		}
	}
}

func TestReloadsInPlace(t *testing.T) {
	task := func(mode string, targets []string, configs int) *Task {
		tk := &Task{RotateMode: mode}
		cs := &swarm.ContainerSpec{}
		for _, tg := range targets {
			cs.Secrets = append(cs.Secrets, &swarm.SecretReference{SecretName: "s", File: &swarm.SecretReferenceFileTarget{Name: tg}})
		}
		for i := 0; i < configs; i++ {
			cs.Configs = append(cs.Configs, &swarm.ConfigReference{ConfigName: "c", File: &swarm.ConfigReferenceFileTarget{Name: "/c"}})
		}
		tk.Spec.ContainerSpec = cs
		return tk
	}
	for _, tt := range []struct {
		name string
		t    *Task
		want bool
		sig  string
	}{
		{"restart", task("restart", []string{"a"}, 0), false, ""},
		{"reload flat", task("reload", []string{"a", "/run/secrets/b"}, 0), true, ""},
		{"signal", task("signal:SIGHUP", []string{"a"}, 0), true, "SIGHUP"},
		{"absolute", task("reload", []string{"/etc/key"}, 0), false, ""},
		{"nested", task("reload", []string{"a/b"}, 0), false, ""},
		{"dotted", task("reload", []string{"..data"}, 0), false, ""},
		{"config", task("reload", []string{"a"}, 1), false, ""},
	} {
		ok, why := tt.t.ReloadsInPlace()
		if ok != tt.want || (!ok && tt.t.Reloads() && why == "") || tt.t.ReloadSignal() != tt.sig {
			t.Errorf("%s: %v %q signal %q", tt.name, ok, why, tt.t.ReloadSignal())
		}
	}
}

func TestSameVersions(t *testing.T) {
	for _, tt := range []struct {
		a, b map[string]int
		want bool
	}{
		{nil, nil, true},
		{map[string]int{"secret/x": 1}, nil, true},
		{map[string]int{"secret/x": 2}, nil, false},
		{map[string]int{"secret/x": 2}, map[string]int{"secret/x": 2}, true},
		{map[string]int{"secret/x": 2}, map[string]int{"secret/x": 2, "secret/y": 3}, false},
	} {
		if got := SameVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("%v %v: %v", tt.a, tt.b, got)
		}
	}
}
