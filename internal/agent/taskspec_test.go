package agent

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
)

func i64(v int64) *int64 { return &v }

// task returns a task whose spec f edits.
func task(f func(ts *swarm.TaskSpec, cs *swarm.ContainerSpec)) *model.Task {
	t := &model.Task{ServiceName: "web"}
	t.ID, t.ServiceID, t.NodeID, t.Slot = "tid", "sid", "nid", 1
	t.Spec.ContainerSpec = &swarm.ContainerSpec{Image: "img"}
	if f != nil {
		f(&t.Spec, t.Spec.ContainerSpec)
	}
	return t
}

// TestContainerSpecMapping: each ContainerSpec/TaskTemplate field lands in
// the engine spec as Swarm's executor puts it on the container.
func TestContainerSpecMapping(t *testing.T) {
	yes := true
	grace := 3 * time.Second
	tests := []struct {
		name string
		task *model.Task
		want func(s *engine.Spec) // the fields the case sets, on top of base
	}{
		{"plain", task(nil), func(*engine.Spec) {}},
		{"process", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Command, cs.Args, cs.Env = []string{"sh"}, []string{"-c", "x"}, []string{"A=b"}
			cs.Dir, cs.User, cs.Hostname, cs.Groups = "/tmp", "1000:1000", "h", []string{"44", "staff"}
			cs.TTY, cs.OpenStdin, cs.ReadOnly, cs.Init, cs.StopSignal = true, true, true, &yes, "SIGUSR1"
		}), func(s *engine.Spec) {
			s.Command, s.Args, s.Env = []string{"sh"}, []string{"-c", "x"}, []string{"A=b"}
			s.Dir, s.User, s.Hostname, s.Groups = "/tmp", "1000:1000", "h", []string{"44", "staff"}
			s.TTY, s.OpenStdin, s.ReadOnly, s.Init, s.StopSignal = true, true, true, &yes, "SIGUSR1"
		}},
		{"grace period is not stored", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) { cs.StopGracePeriod = &grace }),
			func(*engine.Spec) {}},
		{"container labels beside Swarm's", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Labels = map[string]string{"l": "v", "com.docker.swarm.task.id": "forged"}
		}), func(s *engine.Spec) { s.Labels["l"] = "v" }},
		{"hosts: IP name becomes name:IP, aliases too", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Hosts = []string{"10.1.2.3 myalias", "::1  v6 v6b"}
		}), func(s *engine.Spec) { s.ExtraHosts = []string{"myalias:10.1.2.3", "v6:::1", "v6b:::1"} }},
		{"dns", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.DNSConfig = &swarm.DNSConfig{Nameservers: []netip.Addr{netip.MustParseAddr("9.9.9.9")}, Search: []string{"example.test"}, Options: []string{"ndots:2"}}
		}), func(s *engine.Spec) {
			s.DNS, s.DNSSearch, s.DNSOptions = []netip.Addr{netip.MustParseAddr("9.9.9.9")}, []string{"example.test"}, []string{"ndots:2"}
		}},
		{"privileges", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Privileges = &swarm.Privileges{
				NoNewPrivileges: true,
				Seccomp:         &swarm.SeccompOpts{Mode: swarm.SeccompModeCustom, Profile: []byte(`{"defaultAction":"SCMP_ACT_ALLOW"}`)},
				AppArmor:        &swarm.AppArmorOpts{Mode: swarm.AppArmorModeDisabled},
				SELinuxContext:  &swarm.SELinuxContext{Disable: true, User: "u", Role: "r", Level: "s0", Type: "t"},
			}
		}), func(s *engine.Spec) {
			s.SecurityOpt = []string{"no-new-privileges=true", `seccomp={"defaultAction":"SCMP_ACT_ALLOW"}`, "apparmor=unconfined",
				"label=disable", "label=user:u", "label=role:r", "label=level:s0", "label=type:t"}
		}},
		{"default modes add nothing", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Privileges = &swarm.Privileges{Seccomp: &swarm.SeccompOpts{Mode: swarm.SeccompModeDefault}, AppArmor: &swarm.AppArmorOpts{Mode: swarm.AppArmorModeDefault}}
		}), func(*engine.Spec) {}},
		{"seccomp unconfined", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Privileges = &swarm.Privileges{Seccomp: &swarm.SeccompOpts{Mode: swarm.SeccompModeUnconfined}}
		}), func(s *engine.Spec) { s.SecurityOpt = []string{"seccomp=unconfined"} }},
		{"kernel and capabilities", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Sysctls = map[string]string{"net.ipv4.ip_forward": "0"}
			cs.CapabilityAdd, cs.CapabilityDrop = []string{"CAP_NET_BIND_SERVICE"}, []string{"ALL"}
			cs.Isolation, cs.OomScoreAdj = container.IsolationDefault, -500
		}), func(s *engine.Spec) {
			s.Sysctls = map[string]string{"net.ipv4.ip_forward": "0"}
			s.CapAdd, s.CapDrop = []string{"CAP_NET_BIND_SERVICE"}, []string{"ALL"}
			s.Isolation, s.OomScoreAdj = container.IsolationDefault, -500
		}},
		{"healthcheck", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Healthcheck = &container.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: 5 * time.Second, Retries: 2}
		}), func(s *engine.Spec) {
			s.Healthcheck = &container.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: 5 * time.Second, Retries: 2}
		}},
		{"limits, not reservations", task(func(ts *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			ts.Resources = &swarm.ResourceRequirements{
				Limits:       &swarm.Limit{NanoCPUs: 5e8, MemoryBytes: 64 << 20, Pids: 100},
				Reservations: &swarm.Resources{NanoCPUs: 1e8, MemoryBytes: 32 << 20},
			}
			cs.Ulimits = []*container.Ulimit{{Name: "nofile", Soft: 1024, Hard: 2048}}
		}), func(s *engine.Spec) {
			s.Resources = &container.Resources{NanoCPUs: 5e8, Memory: 64 << 20, PidsLimit: i64(100),
				Ulimits: []*container.Ulimit{{Name: "nofile", Soft: 1024, Hard: 2048}}}
		}},
		{"reservations alone set nothing", task(func(ts *swarm.TaskSpec, _ *swarm.ContainerSpec) {
			ts.Resources = &swarm.ResourceRequirements{Reservations: &swarm.Resources{NanoCPUs: 1e8, MemoryBytes: 32 << 20}}
		}), func(*engine.Spec) {}},
		{"swap on top of memory", task(func(ts *swarm.TaskSpec, _ *swarm.ContainerSpec) {
			ts.Resources = &swarm.ResourceRequirements{Limits: &swarm.Limit{MemoryBytes: 64 << 20}, SwapBytes: i64(16 << 20), MemorySwappiness: i64(10)}
		}), func(s *engine.Spec) {
			s.Resources = &container.Resources{Memory: 64 << 20, MemorySwap: 80 << 20, MemorySwappiness: i64(10)}
		}},
		{"unlimited swap", task(func(ts *swarm.TaskSpec, _ *swarm.ContainerSpec) {
			ts.Resources = &swarm.ResourceRequirements{Limits: &swarm.Limit{MemoryBytes: 64 << 20}, SwapBytes: i64(-1)}
		}), func(s *engine.Spec) { s.Resources = &container.Resources{Memory: 64 << 20, MemorySwap: -1} }},
		{"log driver", task(func(ts *swarm.TaskSpec, _ *swarm.ContainerSpec) {
			ts.LogDriver = &swarm.Driver{Name: "json-file", Options: map[string]string{"max-size": "1m"}}
		}), func(s *engine.Spec) {
			s.LogConfig = &container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "1m"}}
		}},
		{"mounts as given", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Mounts = []mount.Mount{
				{Type: mount.TypeVolume, Source: "v", Target: "/v", VolumeOptions: &mount.VolumeOptions{DriverConfig: &mount.Driver{Name: "local", Options: map[string]string{"type": "tmpfs"}}}},
				{Type: mount.TypeTmpfs, Target: "/t", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 1 << 20, Mode: 0o1770}},
				{Type: mount.TypeBind, Source: "/srv", Target: "/srv", ReadOnly: true, BindOptions: &mount.BindOptions{Propagation: mount.PropagationRSlave}},
			}
		}), func(s *engine.Spec) {
			s.Mounts = []mount.Mount{
				{Type: mount.TypeVolume, Source: "v", Target: "/v", VolumeOptions: &mount.VolumeOptions{DriverConfig: &mount.Driver{Name: "local", Options: map[string]string{"type": "tmpfs"}}}},
				{Type: mount.TypeTmpfs, Target: "/t", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 1 << 20, Mode: 0o1770}},
				{Type: mount.TypeBind, Source: "/srv", Target: "/srv", ReadOnly: true, BindOptions: &mount.BindOptions{Propagation: mount.PropagationRSlave}},
			}
		}},
	}
	a := &Agent{nodeID: "nid"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := engine.Spec{
				Name:  tt.task.ContainerName(),
				Image: "img",
				Labels: map[string]string{
					"com.docker.swarm.service.id": "sid", "com.docker.swarm.service.name": "web", "com.docker.swarm.task": "",
					"com.docker.swarm.task.id": "tid", "com.docker.swarm.task.name": tt.task.ContainerName(),
					"com.docker.swarm.node.id": "nid", labelHush: "nid",
				},
			}
			tt.want(&want)
			got := a.containerSpec(tt.task, nil)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("containerSpec:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestEngineRefusal: what this node's engine cannot apply is named, not
// dropped.
func TestEngineRefusal(t *testing.T) {
	full := engine.Features{APIVersion: "1.51", AppArmor: true, SELinux: true, Seccomp: true}
	old := engine.Features{APIVersion: "1.41", Seccomp: true} // Engine 20.10 on a host without AppArmor
	priv := func(p *swarm.Privileges) *model.Task {
		return task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) { cs.Privileges = p })
	}
	mnt := func(m mount.Mount) *model.Task {
		return task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) { cs.Mounts = []mount.Mount{m} })
	}
	tests := []struct {
		name string
		task *model.Task
		f    engine.Features
		want string
	}{
		{"nothing asked", task(nil), engine.Features{}, ""},
		{"apparmor default without apparmor", priv(&swarm.Privileges{AppArmor: &swarm.AppArmorOpts{Mode: swarm.AppArmorModeDefault}}), old,
			"ContainerSpec.Privileges.AppArmor: AppArmor is not enabled on this node (the engine reports no apparmor security option)"},
		{"apparmor default with apparmor", priv(&swarm.Privileges{AppArmor: &swarm.AppArmorOpts{Mode: swarm.AppArmorModeDefault}}), full, ""},
		{"apparmor disabled without apparmor", priv(&swarm.Privileges{AppArmor: &swarm.AppArmorOpts{Mode: swarm.AppArmorModeDisabled}}), old, ""},
		{"selinux label without selinux", priv(&swarm.Privileges{SELinuxContext: &swarm.SELinuxContext{Type: "t"}}), old,
			"ContainerSpec.Privileges.SELinuxContext: SELinux is not enabled on this node (the engine reports no selinux security option)"},
		{"selinux disable without selinux", priv(&swarm.Privileges{SELinuxContext: &swarm.SELinuxContext{Disable: true}}), old, ""},
		{"seccomp custom without seccomp", priv(&swarm.Privileges{Seccomp: &swarm.SeccompOpts{Mode: swarm.SeccompModeCustom, Profile: []byte("{}")}}),
			engine.Features{APIVersion: "1.41"},
			"ContainerSpec.Privileges.Seccomp: seccomp is not enabled on this node (the engine reports no seccomp security option)"},
		{"seccomp custom with seccomp", priv(&swarm.Privileges{Seccomp: &swarm.SeccompOpts{Mode: swarm.SeccompModeCustom, Profile: []byte("{}")}}), old, ""},
		{"seccomp unconfined without seccomp", priv(&swarm.Privileges{Seccomp: &swarm.SeccompOpts{Mode: swarm.SeccompModeUnconfined}}), engine.Features{}, ""},
		{"start interval on 1.41", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "true"}, StartInterval: time.Second}
		}), old, "ContainerSpec.Healthcheck.StartInterval: needs Docker Engine API 1.44, this node's engine speaks 1.41"},
		{"start interval on 1.51", task(func(_ *swarm.TaskSpec, cs *swarm.ContainerSpec) {
			cs.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "true"}, StartInterval: time.Second}
		}), full, ""},
		{"subpath on 1.41", mnt(mount.Mount{Type: mount.TypeVolume, Source: "v", Target: "/v", VolumeOptions: &mount.VolumeOptions{Subpath: "a"}}), old,
			"ContainerSpec.Mounts[0].VolumeOptions.Subpath: needs Docker Engine API 1.45, this node's engine speaks 1.41"},
		{"tmpfs options on 1.41", mnt(mount.Mount{Type: mount.TypeTmpfs, Target: "/t", TmpfsOptions: &mount.TmpfsOptions{Options: [][]string{{"exec"}}}}), old,
			"ContainerSpec.Mounts[0].TmpfsOptions.Options: needs Docker Engine API 1.46, this node's engine speaks 1.41"},
		{"image mount on 1.41", mnt(mount.Mount{Type: mount.TypeImage, Source: "img", Target: "/i"}), old,
			"ContainerSpec.Mounts[0].Type image: needs Docker Engine API 1.48, this node's engine speaks 1.41"},
		{"create mountpoint on 1.41", mnt(mount.Mount{Type: mount.TypeBind, Source: "/x", Target: "/x", BindOptions: &mount.BindOptions{CreateMountpoint: true}}), old,
			"ContainerSpec.Mounts[0].BindOptions.CreateMountpoint: needs Docker Engine API 1.42, this node's engine speaks 1.41"},
		{"read-only non-recursive on 1.41", mnt(mount.Mount{Type: mount.TypeBind, Source: "/x", Target: "/x", ReadOnly: true, BindOptions: &mount.BindOptions{ReadOnlyNonRecursive: true}}), old,
			"ContainerSpec.Mounts[0].BindOptions.ReadOnlyNonRecursive/ReadOnlyForceRecursive: needs Docker Engine API 1.44, this node's engine speaks 1.41"},
		{"new mount options on 1.51", mnt(mount.Mount{Type: mount.TypeVolume, Source: "v", Target: "/v", VolumeOptions: &mount.VolumeOptions{Subpath: "a"}}), full, ""},
		{"non-recursive bind on 1.41", mnt(mount.Mount{Type: mount.TypeBind, Source: "/x", Target: "/x", BindOptions: &mount.BindOptions{NonRecursive: true}}), old, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := engineRefusal(tt.task.Spec, tt.f); got != tt.want {
				t.Errorf("engineRefusal = %q, want %q", got, tt.want)
			}
		})
	}
}
