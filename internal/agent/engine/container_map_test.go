package engine

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
)

// TestSpecToEngine: a Spec becomes the container.Config and HostConfig
// that Swarm's executor sends for the same ContainerSpec (as read back
// from Swarm's task containers with docker inspect). Needs no engine.
func TestSpecToEngine(t *testing.T) {
	yes := true
	pids := int64(100)
	base := Spec{Name: "web.1.tid", Image: "img", Labels: map[string]string{"k": "v"}}
	with := func(f func(s *Spec)) Spec {
		s := base
		f(&s)
		return s
	}
	tests := []struct {
		name string
		spec Spec
		cfg  func(c *container.Config)     // changes from the base config
		host func(h *container.HostConfig) // changes from the base host config
	}{
		{"base", base, nil, nil},
		{"command replaces entrypoint, args follow", with(func(s *Spec) { s.Command, s.Args = []string{"sh"}, []string{"-c", "x"} }),
			func(c *container.Config) { c.Entrypoint, c.Cmd = []string{"sh"}, []string{"-c", "x"} }, nil},
		{"args alone replace cmd", with(func(s *Spec) { s.Args = []string{"x"} }),
			func(c *container.Config) { c.Cmd = []string{"x"} }, nil},
		{"process settings", with(func(s *Spec) {
			s.Env, s.Dir, s.User, s.Hostname, s.TTY, s.OpenStdin, s.StopSignal = []string{"A=b"}, "/tmp", "1000:1000", "h", true, true, "SIGUSR1"
			s.Healthcheck = &container.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: 5 * time.Second, Retries: 2}
		}), func(c *container.Config) {
			c.Env, c.WorkingDir, c.User, c.Hostname, c.Tty, c.OpenStdin, c.StopSignal = []string{"A=b"}, "/tmp", "1000:1000", "h", true, true, "SIGUSR1"
			c.Healthcheck = &container.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: 5 * time.Second, Retries: 2}
		}, nil},
		{"hardening", with(func(s *Spec) {
			s.ReadOnly, s.Init, s.Groups = true, &yes, []string{"44"}
			s.CapAdd, s.CapDrop = []string{"CAP_NET_BIND_SERVICE"}, []string{"ALL"}
			s.SecurityOpt = []string{"no-new-privileges=true"}
			s.Sysctls = map[string]string{"net.ipv4.ip_forward": "0"}
			s.OomScoreAdj, s.Isolation = 200, container.IsolationDefault
		}), nil, func(h *container.HostConfig) {
			h.ReadonlyRootfs, h.Init, h.GroupAdd = true, &yes, []string{"44"}
			h.CapAdd, h.CapDrop = []string{"CAP_NET_BIND_SERVICE"}, []string{"ALL"}
			h.SecurityOpt = []string{"no-new-privileges=true"}
			h.Sysctls = map[string]string{"net.ipv4.ip_forward": "0"}
			h.OomScoreAdj, h.Isolation = 200, container.IsolationDefault
		}},
		{"names", with(func(s *Spec) {
			s.ExtraHosts = []string{"myalias:10.1.2.3"}
			s.DNS, s.DNSSearch, s.DNSOptions = []netip.Addr{netip.MustParseAddr("9.9.9.9")}, []string{"example.test"}, []string{"ndots:2"}
		}), nil, func(h *container.HostConfig) {
			h.ExtraHosts = []string{"myalias:10.1.2.3"}
			h.DNS, h.DNSSearch, h.DNSOptions = []netip.Addr{netip.MustParseAddr("9.9.9.9")}, []string{"example.test"}, []string{"ndots:2"}
		}},
		{"limits and logs", with(func(s *Spec) {
			s.Resources = &container.Resources{Memory: 64 << 20, NanoCPUs: 5e8, PidsLimit: &pids, Ulimits: []*container.Ulimit{{Name: "nofile", Soft: 1024, Hard: 2048}}}
			s.LogConfig = &container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "1m"}}
		}), nil, func(h *container.HostConfig) {
			h.Resources = container.Resources{Memory: 64 << 20, NanoCPUs: 5e8, PidsLimit: &pids, Ulimits: []*container.Ulimit{{Name: "nofile", Soft: 1024, Hard: 2048}}}
			h.LogConfig = container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "1m"}}
		}},
		{"secret binds first, then the service's mounts", with(func(s *Spec) {
			s.Binds = []Bind{{HostPath: "/run/hush/n/t/x", ContainerPath: "/run/secrets/x"}}
			s.Mounts = []mount.Mount{{Type: mount.TypeTmpfs, Target: "/scratch", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 1 << 20, Mode: 0o1770}}}
		}), nil, func(h *container.HostConfig) {
			h.Mounts = []mount.Mount{
				{Type: mount.TypeBind, Source: "/run/hush/n/t/x", Target: "/run/secrets/x", ReadOnly: true, BindOptions: &mount.BindOptions{Propagation: mount.PropagationRPrivate}},
				{Type: mount.TypeTmpfs, Target: "/scratch", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 1 << 20, Mode: 0o1770}},
			}
		}},
		{"ports", with(func(s *Spec) { s.Ports = []Publish{{Target: 80, Published: 8080}} }),
			func(c *container.Config) { c.ExposedPorts = network.PortSet{network.MustParsePort("80/tcp"): {}} },
			func(h *container.HostConfig) {
				h.PortBindings = network.PortMap{network.MustParsePort("80/tcp"): {{HostPort: "8080"}}}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCfg := &container.Config{Image: "img", Labels: map[string]string{"k": "v"}}
			if tt.cfg != nil {
				tt.cfg(wantCfg)
			}
			wantHost := &container.HostConfig{PortBindings: network.PortMap{}}
			if tt.host != nil {
				tt.host(wantHost)
			}
			if got := containerConfig(tt.spec); !reflect.DeepEqual(got, wantCfg) {
				t.Errorf("containerConfig:\n got %+v\nwant %+v", got, wantCfg)
			}
			if got := hostConfig(tt.spec); !reflect.DeepEqual(got, wantHost) {
				t.Errorf("hostConfig:\n got %+v\nwant %+v", got, wantHost)
			}
		})
	}
}

// TestSpecToEngineCopies: the engine request never aliases the spec's
// slices and maps (a caller reusing its spec must not change a request).
func TestSpecToEngineCopies(t *testing.T) {
	s := Spec{Name: "n", Image: "img", Groups: []string{"44"}, CapAdd: []string{"A"}, Sysctls: map[string]string{"k": "v"},
		Healthcheck: &container.HealthConfig{Test: []string{"CMD", "true"}},
		LogConfig:   &container.LogConfig{Type: "json-file", Config: map[string]string{"k": "v"}}}
	cfg, hc := containerConfig(s), hostConfig(s)
	s.Groups[0], s.CapAdd[0], s.Sysctls["k"], s.Healthcheck.Test[0], s.LogConfig.Config["k"] = "x", "x", "x", "x", "x"
	if hc.GroupAdd[0] != "44" || hc.CapAdd[0] != "A" || hc.Sysctls["k"] != "v" || cfg.Healthcheck.Test[0] != "CMD" || hc.LogConfig.Config["k"] != "v" {
		t.Fatalf("request changed with the spec: %+v %+v", cfg, hc)
	}
}

// TestStateHealth: the health check's status reaches State (the agent
// stops a task whose container turned unhealthy); none without a check.
// Needs no engine.
func TestStateHealth(t *testing.T) {
	for _, tc := range []struct {
		health *container.Health
		want   string
	}{
		{nil, ""},
		{&container.Health{Status: container.Starting}, "starting"},
		{&container.Health{Status: container.Healthy}, "healthy"},
		{&container.Health{Status: container.Unhealthy}, "unhealthy"},
	} {
		st := toState(container.InspectResponse{ID: "c1", State: &container.State{Running: true, Health: tc.health}})
		if st.Health != tc.want {
			t.Errorf("health %+v: State.Health %q, want %q", tc.health, st.Health, tc.want)
		}
	}
}
