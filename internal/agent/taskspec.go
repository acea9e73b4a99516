package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client/pkg/versions"
)

// applyTaskSpec fills s with the ContainerSpec and TaskTemplate fields the
// way Swarm's executor sets them on the container (read back from Swarm's
// task containers with docker inspect). Scheduling-only fields (resource
// reservations, placement) never reach the container.
func applyTaskSpec(s *engine.Spec, ts swarm.TaskSpec) {
	cs := ts.ContainerSpec
	if cs == nil {
		return
	}
	s.Groups = slices.Clone(cs.Groups)
	s.ReadOnly = cs.ReadOnly
	if cs.Healthcheck != nil {
		hc := *cs.Healthcheck
		hc.Test = slices.Clone(hc.Test)
		s.Healthcheck = &hc
	}
	s.ExtraHosts = extraHosts(cs.Hosts)
	if d := cs.DNSConfig; d != nil {
		s.DNS = slices.Clone(d.Nameservers)
		s.DNSSearch = slices.Clone(d.Search)
		s.DNSOptions = slices.Clone(d.Options)
	}
	s.SecurityOpt = securityOpts(cs.Privileges)
	s.Sysctls = maps.Clone(cs.Sysctls)
	s.CapAdd = slices.Clone(cs.CapabilityAdd)
	s.CapDrop = slices.Clone(cs.CapabilityDrop)
	s.Isolation = cs.Isolation
	s.OomScoreAdj = int(cs.OomScoreAdj)
	if ld := ts.LogDriver; ld != nil {
		s.LogConfig = &container.LogConfig{Type: ld.Name, Config: maps.Clone(ld.Options)}
	}
	s.Resources = resources(ts.Resources, cs.Ulimits)
	s.Mounts = slices.Clone(cs.Mounts)
}

// extraHosts turns Swarm's hosts(5) lines ("IP name [aliases...]") into the
// engine's "name:IP" entries. Swarm's executor keeps only the first name;
// hush adds one entry per alias too, so an alias given is an alias served.
// Validation refuses lines with fewer than two fields.
func extraHosts(hosts []string) []string {
	var out []string
	for _, h := range hosts {
		f := strings.Fields(h)
		if len(f) < 2 {
			continue
		}
		for _, name := range f[1:] {
			out = append(out, name+":"+f[0])
		}
	}
	return out
}

// securityOpts maps Privileges to the engine's security options as Swarm's
// executor does. Modes that mean "the engine's default" add nothing.
// CredentialSpec is refused at validation (Windows only).
func securityOpts(p *swarm.Privileges) []string {
	if p == nil {
		return nil
	}
	var opts []string
	if p.NoNewPrivileges {
		opts = append(opts, "no-new-privileges=true")
	}
	if sc := p.Seccomp; sc != nil {
		switch sc.Mode {
		case swarm.SeccompModeUnconfined:
			opts = append(opts, "seccomp=unconfined")
		case swarm.SeccompModeCustom:
			opts = append(opts, "seccomp="+string(sc.Profile))
		}
	}
	if aa := p.AppArmor; aa != nil && aa.Mode == swarm.AppArmorModeDisabled {
		opts = append(opts, "apparmor=unconfined")
	}
	if se := p.SELinuxContext; se != nil {
		if se.Disable {
			opts = append(opts, "label=disable")
		}
		for _, l := range []struct{ k, v string }{{"user", se.User}, {"role", se.Role}, {"level", se.Level}, {"type", se.Type}} {
			if l.v != "" {
				opts = append(opts, "label="+l.k+":"+l.v)
			}
		}
	}
	return opts
}

// resources maps the task's limits and ulimits to the container's cgroup
// settings; reservations are Swarm's scheduling hints and are not set.
func resources(r *swarm.ResourceRequirements, ulimits []*container.Ulimit) *container.Resources {
	var res container.Resources
	for _, u := range ulimits {
		if u != nil {
			c := *u
			res.Ulimits = append(res.Ulimits, &c)
		}
	}
	if r != nil && r.Limits != nil {
		l := r.Limits
		if l.MemoryBytes > 0 {
			res.Memory = l.MemoryBytes
			// The engine's MemorySwap is memory plus swap; -1 is unlimited.
			if r.SwapBytes != nil {
				switch sw := *r.SwapBytes; {
				case sw == -1:
					res.MemorySwap = -1
				case sw >= 0:
					res.MemorySwap = l.MemoryBytes + sw
				}
			}
		}
		if l.NanoCPUs > 0 {
			res.NanoCPUs = l.NanoCPUs
		}
		if l.Pids > 0 {
			p := l.Pids
			res.PidsLimit = &p
		}
	}
	if r != nil && r.MemorySwappiness != nil {
		v := *r.MemorySwappiness
		res.MemorySwappiness = &v
	}
	if res.Memory == 0 && res.NanoCPUs == 0 && res.PidsLimit == nil && res.Ulimits == nil && res.MemorySwappiness == nil {
		return nil
	}
	return &res
}

// engineRefusal says why this node's engine cannot give a task what its
// spec asks, naming the field, or "" when it can. A facility the kernel
// lacks (AppArmor, SELinux, seccomp) and a field the engine's API version
// predates would otherwise be dropped by the engine without a word.
func engineRefusal(ts swarm.TaskSpec, f engine.Features) string {
	cs := ts.ContainerSpec
	if cs == nil {
		return ""
	}
	if p := cs.Privileges; p != nil {
		if p.AppArmor != nil && p.AppArmor.Mode != swarm.AppArmorModeDisabled && !f.AppArmor {
			return "ContainerSpec.Privileges.AppArmor: AppArmor is not enabled on this node (the engine reports no apparmor security option)"
		}
		if sc := p.Seccomp; sc != nil && sc.Mode != swarm.SeccompModeUnconfined && !f.Seccomp {
			return "ContainerSpec.Privileges.Seccomp: seccomp is not enabled on this node (the engine reports no seccomp security option)"
		}
		if se := p.SELinuxContext; se != nil && (se.User != "" || se.Role != "" || se.Level != "" || se.Type != "") && !f.SELinux {
			return "ContainerSpec.Privileges.SELinuxContext: SELinux is not enabled on this node (the engine reports no selinux security option)"
		}
	}
	need := func(field, version string) string {
		if f.APIVersion == "" || !versions.LessThan(f.APIVersion, version) {
			return ""
		}
		return fmt.Sprintf("%s: needs Docker Engine API %s, this node's engine speaks %s", field, version, f.APIVersion)
	}
	if hc := cs.Healthcheck; hc != nil && hc.StartInterval != 0 {
		if msg := need("ContainerSpec.Healthcheck.StartInterval", "1.44"); msg != "" {
			return msg
		}
	}
	for i, m := range cs.Mounts {
		field := fmt.Sprintf("ContainerSpec.Mounts[%d]", i)
		var msg string
		switch {
		case m.Type == mount.TypeImage || m.ImageOptions != nil:
			msg = need(field+".Type image", "1.48")
		case m.TmpfsOptions != nil && len(m.TmpfsOptions.Options) > 0:
			msg = need(field+".TmpfsOptions.Options", "1.46")
		case m.VolumeOptions != nil && m.VolumeOptions.Subpath != "":
			msg = need(field+".VolumeOptions.Subpath", "1.45")
		case m.BindOptions != nil && (m.BindOptions.ReadOnlyNonRecursive || m.BindOptions.ReadOnlyForceRecursive):
			msg = need(field+".BindOptions.ReadOnlyNonRecursive/ReadOnlyForceRecursive", "1.44")
		case m.BindOptions != nil && m.BindOptions.CreateMountpoint:
			msg = need(field+".BindOptions.CreateMountpoint", "1.42")
		}
		if msg != "" {
			return msg
		}
	}
	return ""
}

// engineRefusal asks this node's engine what it supports and says why the
// task cannot run here, or "" when it can.
func (a *Agent) engineRefusal(ctx context.Context, t *model.Task) string {
	f, err := a.x.Features(ctx)
	if err != nil {
		return fmt.Sprintf("reading the engine's features: %v", err)
	}
	return engineRefusal(t.Spec, f)
}
