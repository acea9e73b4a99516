package services

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
)

// edit returns a valid spec changed by f.
func edit(f func(s *swarm.ServiceSpec, cs *swarm.ContainerSpec)) swarm.ServiceSpec {
	s := spec("web")
	f(&s, s.TaskTemplate.ContainerSpec)
	return s
}

func i64(v int64) *int64 { return &v }

func TestCheckHonouredRefuses(t *testing.T) {
	tests := []struct {
		name string
		spec swarm.ServiceSpec
		want string // the whole message
	}{
		{"credential spec", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Privileges = &swarm.Privileges{CredentialSpec: &swarm.CredentialSpec{File: "spec.json"}}
		}), "ContainerSpec.Privileges.CredentialSpec: not supported by hush (Windows only)"},
		{"credential spec config", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Configs = []*swarm.ConfigReference{{ConfigID: "c1", ConfigName: "cred", Runtime: &swarm.ConfigReferenceRuntimeTarget{}}}
		}), "ContainerSpec.Configs: config cred has a Runtime target (a credential spec): not supported by hush (Windows only)"},
		{"generic resources", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{
				GenericResources: []swarm.GenericResource{{DiscreteResourceSpec: &swarm.DiscreteGenericResource{Kind: "gpu", Value: 1}}}}}
		}), "Resources.Reservations.GenericResources: generic resources are not supported by hush"},
		{"csi mount", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: mount.TypeCluster, Source: "vol", Target: "/data"}}
		}), "ContainerSpec.Mounts[0]: Type cluster (CSI volumes) is not supported by hush"},
		{"npipe mount", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: mount.TypeNamedPipe, Source: `\\.\pipe\x`, Target: "/p"}}
		}), "ContainerSpec.Mounts[0]: Type npipe is not supported by hush (Windows only)"},
		{"cluster options", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: mount.TypeVolume, Source: "v", Target: "/v", ClusterOptions: &mount.ClusterOptions{}}}
		}), "ContainerSpec.Mounts[0].ClusterOptions: CSI volumes are not supported by hush"},
		{"isolation hyperv", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) { cs.Isolation = container.IsolationHyperV }),
			`ContainerSpec.Isolation: "hyperv" is not supported by hush (Linux containers have only the default isolation)`},
		{"isolation process", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) { cs.Isolation = container.IsolationProcess }),
			`ContainerSpec.Isolation: "process" is not supported by hush (Linux containers have only the default isolation)`},
		{"plugin runtime", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) { s.TaskTemplate.Runtime = swarm.RuntimePlugin }),
			`TaskTemplate.Runtime: "plugin" is not supported by hush (only "container")`},
		{"attachment runtime", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.Runtime = swarm.RuntimeNetworkAttachment
		}),
			`TaskTemplate.Runtime: "attachment" is not supported by hush (only "container")`},
		{"plugin spec", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.PluginSpec = &swarm.RuntimeSpec{Name: "p"}
		}),
			"TaskTemplate.PluginSpec: plugin services are not supported by hush"},
		{"attachment spec", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.NetworkAttachmentSpec = &swarm.NetworkAttachmentSpec{ContainerID: "c"}
		}), "TaskTemplate.NetworkAttachmentSpec: network attachment tasks are not supported by hush"},
		{"network driver opts", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: "n", DriverOpts: map[string]string{"k": "v"}}}
		}), "TaskTemplate.Networks[0].DriverOpts: network driver options are not supported by hush (its networks are engine bridge networks)"},
		{"max failure ratio above 1", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.UpdateConfig = &swarm.UpdateConfig{MaxFailureRatio: 1.5}
		}),
			"UpdateConfig.MaxFailureRatio: TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1"},
		{"rollback max failure ratio negative", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.RollbackConfig = &swarm.UpdateConfig{MaxFailureRatio: -0.1}
		}),
			"RollbackConfig.MaxFailureRatio: TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1"},
		{"failure action", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.UpdateConfig = &swarm.UpdateConfig{FailureAction: "explode"}
		}), "UpdateConfig.FailureAction: unrecognized update failure action explode"},
		{"update order", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.RollbackConfig = &swarm.UpdateConfig{Order: "sideways"}
		}), "RollbackConfig.Order: unrecognized update order sideways"},
		{"negative delay", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.UpdateConfig = &swarm.UpdateConfig{Delay: -time.Second}
		}), "UpdateConfig.Delay: TaskSpec: update-delay cannot be negative"},
		{"negative monitor", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.UpdateConfig = &swarm.UpdateConfig{Monitor: -time.Second}
		}), "UpdateConfig.Monitor: TaskSpec: update-monitor cannot be negative"},
		{"restart condition", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: "sometimes"}
		}), `TaskTemplate.RestartPolicy.Condition: invalid RestartCondition: "sometimes"`},
		// Swarm's own texts (verified against Swarm 20.10's control API).
		{"cpu too small", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.Resources = &swarm.ResourceRequirements{Limits: &swarm.Limit{NanoCPUs: 100000}}
		}), "invalid cpu value 0.0001: Must be at least 0.001"},
		{"memory too small", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.Resources = &swarm.ResourceRequirements{Limits: &swarm.Limit{MemoryBytes: 1 << 20}}
		}), "invalid memory value 1048576: Must be at least 4MiB"},
		{"reserved memory too small", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{MemoryBytes: 1 << 20}}
		}), "invalid memory value 1048576: Must be at least 4MiB"},
		{"swap without memory", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.Resources = &swarm.ResourceRequirements{SwapBytes: i64(1 << 20)}
		}), "Resources.SwapBytes: needs Resources.Limits.MemoryBytes (swap is set on top of the memory limit)"},
		{"swappiness", edit(func(s *swarm.ServiceSpec, _ *swarm.ContainerSpec) {
			s.TaskTemplate.Resources = &swarm.ResourceRequirements{MemorySwappiness: i64(101)}
		}), "Resources.MemorySwappiness: 101 is invalid (0 to 100, or -1 for the engine's default)"},
		{"health interval", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Healthcheck = &container.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: 100 * time.Microsecond}
		}), "ContainerSpec: Interval in HealthConfig cannot be less than 1ms"},
		{"health retries", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Healthcheck = &container.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Retries: -1}
		}), "ContainerSpec: Retries in HealthConfig cannot be negative"},
		{"duplicate mount point", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: mount.TypeTmpfs, Target: "/a"}, {Type: mount.TypeTmpfs, Target: "/a"}}
		}), "ContainerSpec: duplicate mount point: /a"},
		{"relative target", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: mount.TypeTmpfs, Target: "rel"}}
		}), "ContainerSpec.Mounts[0]: invalid mount target, must be an absolute path: rel"},
		{"relative bind source", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: mount.TypeBind, Source: "rel", Target: "/a"}}
		}), "ContainerSpec.Mounts[0]: invalid bind mount source, must be an absolute path: rel"},
		{"tmpfs with source", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: mount.TypeTmpfs, Source: "/x", Target: "/a"}}
		}), "ContainerSpec.Mounts[0]: invalid tmpfs source, source must be empty"},
		{"options of another type", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: mount.TypeBind, Source: "/x", Target: "/a", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 1}}}
		}), "ContainerSpec.Mounts[0].TmpfsOptions: only for mounts of type tmpfs, not bind"},
		{"unknown mount type", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: "nfs", Target: "/a"}}
		}), `ContainerSpec.Mounts[0]: invalid mount type: "nfs"`},
		{"propagation", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: mount.TypeBind, Source: "/x", Target: "/a", BindOptions: &mount.BindOptions{Propagation: "sideways"}}}
		}), `ContainerSpec.Mounts[0].BindOptions.Propagation: unknown value "sideways"`},
		{"consistency", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{{Type: mount.TypeTmpfs, Target: "/a", Consistency: "eventual"}}
		}), `ContainerSpec.Mounts[0].Consistency: unknown value "eventual"`},
		{"hosts one field", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) { cs.Hosts = []string{"10.1.2.3"} }),
			`ContainerSpec.Hosts: invalid entry "10.1.2.3": want "IP hostname [aliases...]"`},
		{"hosts not an IP", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) { cs.Hosts = []string{"myalias 10.1.2.3"} }),
			`ContainerSpec.Hosts: invalid entry "myalias 10.1.2.3": "myalias" is not an IP address`},
		{"seccomp mode", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Privileges = &swarm.Privileges{Seccomp: &swarm.SeccompOpts{Mode: "strict"}}
		}), `ContainerSpec.Privileges.Seccomp.Mode: unknown mode "strict" (default, unconfined or custom)`},
		{"seccomp custom not json", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Privileges = &swarm.Privileges{Seccomp: &swarm.SeccompOpts{Mode: swarm.SeccompModeCustom, Profile: []byte("{")}}
		}), "ContainerSpec.Privileges.Seccomp.Profile: mode custom needs a profile that is a JSON document"},
		{"seccomp profile without custom", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Privileges = &swarm.Privileges{Seccomp: &swarm.SeccompOpts{Mode: swarm.SeccompModeDefault, Profile: []byte("{}")}}
		}), `ContainerSpec.Privileges.Seccomp.Profile: a profile needs Mode "custom"`},
		{"apparmor mode", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Privileges = &swarm.Privileges{AppArmor: &swarm.AppArmorOpts{Mode: "complain"}}
		}), `ContainerSpec.Privileges.AppArmor.Mode: unknown mode "complain" (default or disabled)`},
		{"oom score", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) { cs.OomScoreAdj = 1001 }),
			"ContainerSpec.OomScoreAdj: 1001 is out of range (-1000 to 1000)"},
		{"ulimit soft above hard", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
			cs.Ulimits = []*container.Ulimit{{Name: "nofile", Soft: 10, Hard: 5}}
		}), "ContainerSpec.Ulimits[0]: soft limit 10 of nofile is above its hard limit 5"},
		{"ulimit nil", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) { cs.Ulimits = []*container.Ulimit{nil} }),
			"ContainerSpec.Ulimits[0]: a ulimit needs a name"},
		{"negative grace", edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) { g := -time.Second; cs.StopGracePeriod = &g }),
			"ContainerSpec.StopGracePeriod: must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.spec
			err := validateSpec(&s)
			if err == nil || err.Error() != tt.want || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want InvalidArgument %q", err, tt.want)
			}
		})
	}
}

// TestCheckHonouredAccepts: every field hush honours passes validation,
// with the values the docker CLI sends.
func TestCheckHonouredAccepts(t *testing.T) {
	yes := true
	grace := 3 * time.Second
	full := edit(func(s *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
		cs.Labels = map[string]string{"l": "v"}
		cs.Command, cs.Args = []string{"sh"}, []string{"-c", "true"}
		cs.Hostname, cs.Env, cs.Dir, cs.User, cs.Groups = "h", []string{"A=b"}, "/tmp", "1000:1000", []string{"44"}
		cs.Privileges = &swarm.Privileges{
			NoNewPrivileges: true,
			Seccomp:         &swarm.SeccompOpts{Mode: swarm.SeccompModeCustom, Profile: []byte(`{"defaultAction":"SCMP_ACT_ALLOW"}`)},
			AppArmor:        &swarm.AppArmorOpts{Mode: swarm.AppArmorModeDisabled},
			SELinuxContext:  &swarm.SELinuxContext{Disable: true},
		}
		cs.Init, cs.StopSignal, cs.TTY, cs.OpenStdin, cs.ReadOnly = &yes, "SIGUSR1", true, true, true
		cs.Mounts = []mount.Mount{
			{Type: mount.TypeBind, Source: "/srv", Target: "/srv", ReadOnly: true, Consistency: mount.ConsistencyCached,
				BindOptions: &mount.BindOptions{Propagation: mount.PropagationRSlave}},
			{Type: mount.TypeVolume, Source: "data", Target: "/data",
				VolumeOptions: &mount.VolumeOptions{NoCopy: true, Labels: map[string]string{"x": "y"}, DriverConfig: &mount.Driver{Name: "local", Options: map[string]string{"type": "tmpfs"}}}},
			{Type: mount.TypeVolume, Target: "/anon"},
			{Type: mount.TypeTmpfs, Target: "/scratch", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 1 << 20, Mode: 0o1770}},
		}
		cs.StopGracePeriod = &grace
		cs.Healthcheck = &container.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: time.Second, Retries: 2}
		cs.Hosts = []string{"10.1.2.3 myalias", "::1 v6host other"}
		cs.Isolation = container.IsolationDefault
		cs.Sysctls = map[string]string{"net.ipv4.ip_forward": "0"}
		cs.CapabilityAdd, cs.CapabilityDrop = []string{"CAP_NET_BIND_SERVICE"}, []string{"ALL"}
		cs.Ulimits = []*container.Ulimit{{Name: "nofile", Soft: 1024, Hard: 2048}}
		cs.OomScoreAdj = -500
		s.TaskTemplate.Resources = &swarm.ResourceRequirements{
			Limits:       &swarm.Limit{NanoCPUs: 5e8, MemoryBytes: 64 << 20, Pids: 100},
			Reservations: &swarm.Resources{NanoCPUs: 1e8, MemoryBytes: 32 << 20},
			SwapBytes:    i64(0), MemorySwappiness: i64(10),
		}
		s.TaskTemplate.LogDriver = &swarm.Driver{Name: "json-file", Options: map[string]string{"max-size": "1m"}}
		s.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: "n", Aliases: []string{"a"}}}
		s.TaskTemplate.Runtime = swarm.RuntimeContainer
		s.UpdateConfig = &swarm.UpdateConfig{Parallelism: 1, FailureAction: swarm.UpdateFailureActionPause, MaxFailureRatio: 0.25,
			Delay: time.Second, Monitor: 5 * time.Second, Order: swarm.UpdateOrderStartFirst}
		s.RollbackConfig = &swarm.UpdateConfig{Parallelism: 1, FailureAction: swarm.UpdateFailureActionContinue, MaxFailureRatio: 1, Order: swarm.UpdateOrderStopFirst}
		s.EndpointSpec = &swarm.EndpointSpec{Mode: swarm.ResolutionModeVIP}
	})
	if err := validateSpec(&full); err != nil {
		t.Fatal(err)
	}
}

// TestRefusedAtCreateAndUpdate: the refusal holds on both paths, and
// nothing is stored or changed.
func TestRefusedAtCreateAndUpdate(t *testing.T) {
	m, _, ctx := newManagers(t)
	bad := edit(func(_ *swarm.ServiceSpec, cs *swarm.ContainerSpec) {
		cs.Privileges = &swarm.Privileges{CredentialSpec: &swarm.CredentialSpec{Registry: "r"}}
	})
	const want = "ContainerSpec.Privileges.CredentialSpec: not supported by hush (Windows only)"
	if _, err := m.Create(ctx, bad); err == nil || err.Error() != want {
		t.Fatalf("create: %v, want %q", err, want)
	}
	if _, err := m.Get(ctx, "web"); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a refused create stored the service: %v", err)
	}
	if _, err := m.Create(ctx, spec("web")); err != nil {
		t.Fatal(err)
	}
	before, err := m.Get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(ctx, "web", bad, UpdateOptions{Version: before.Version.Index}); err == nil || err.Error() != want {
		t.Fatalf("update: %v, want %q", err, want)
	}
	after, err := m.Get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if after.Version.Index != before.Version.Index || after.Spec.TaskTemplate.ContainerSpec.Privileges != nil {
		t.Fatalf("a refused update changed the service: version %d -> %d, privileges %+v",
			before.Version.Index, after.Version.Index, after.Spec.TaskTemplate.ContainerSpec.Privileges)
	}
}

// FuzzValidateSpec: any decodable spec is accepted or refused with an
// InvalidArgument error, never a panic or another kind of error.
func FuzzValidateSpec(f *testing.F) {
	for _, seed := range []string{
		`{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"img"}}}`,
		`{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"img","Hosts":["10.1.2.3 a b"],"Mounts":[{"Type":"tmpfs","Target":"/t","TmpfsOptions":{"SizeBytes":1}}]}}}`,
		`{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"img","Privileges":{"Seccomp":{"Mode":"custom","Profile":"e30="}}},"Resources":{"Limits":{"MemoryBytes":4194304},"SwapBytes":-1}}}`,
		`{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"img","Healthcheck":{"Test":["CMD"],"Interval":-1}},"Runtime":"plugin"}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var s swarm.ServiceSpec
		if json.Unmarshal(data, &s) != nil {
			return
		}
		if err := validateSpec(&s); err != nil && !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("validateSpec: %v is not InvalidArgument", err)
		}
	})
}
