package services

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
)

// checkHonoured refuses, naming the field, every part of a service spec
// that hush would otherwise accept and not act on (Windows-only and plugin
// features, CSI volumes, generic resources), and values the engine would
// reject later (so the client hears it now). Where Swarm's control API
// refuses the same thing, the text is Swarm's. docs/COMPATIBILITY.md lists
// every field and what hush does with it.
func checkHonoured(s *swarm.ServiceSpec) error {
	tt := &s.TaskTemplate
	if tt.PluginSpec != nil {
		return errdefs.InvalidArgument("TaskTemplate.PluginSpec: plugin services are not supported by hush")
	}
	if tt.NetworkAttachmentSpec != nil {
		return errdefs.InvalidArgument("TaskTemplate.NetworkAttachmentSpec: network attachment tasks are not supported by hush")
	}
	switch tt.Runtime {
	case "", swarm.RuntimeContainer:
	default:
		return errdefs.InvalidArgument("TaskTemplate.Runtime: %q is not supported by hush (only %q)", tt.Runtime, swarm.RuntimeContainer)
	}
	if err := checkResources(tt.Resources); err != nil {
		return err
	}
	if rp := tt.RestartPolicy; rp != nil {
		switch rp.Condition {
		case "", swarm.RestartPolicyConditionNone, swarm.RestartPolicyConditionOnFailure, swarm.RestartPolicyConditionAny:
		default:
			return errdefs.InvalidArgument("TaskTemplate.RestartPolicy.Condition: invalid RestartCondition: %q", rp.Condition)
		}
	}
	for i, n := range tt.Networks {
		if len(n.DriverOpts) > 0 {
			return errdefs.InvalidArgument("TaskTemplate.Networks[%d].DriverOpts: network driver options are not supported by hush (its networks are engine bridge networks)", i)
		}
	}
	for _, uc := range []struct {
		name string
		c    *swarm.UpdateConfig
	}{{"UpdateConfig", s.UpdateConfig}, {"RollbackConfig", s.RollbackConfig}} {
		if err := checkUpdateConfig(uc.name, uc.c); err != nil {
			return err
		}
	}
	if cs := tt.ContainerSpec; cs != nil {
		return checkContainerSpec(cs)
	}
	return nil
}

// checkUpdateConfig applies dockerd's and Swarm's checks of an update or
// rollback config, with their texts after the field's name: an unknown
// action or order would otherwise run as the default.
func checkUpdateConfig(name string, uc *swarm.UpdateConfig) error {
	if uc == nil {
		return nil
	}
	switch uc.FailureAction {
	case "", swarm.UpdateFailureActionPause, swarm.UpdateFailureActionContinue, swarm.UpdateFailureActionRollback:
	default:
		return errdefs.InvalidArgument("%s.FailureAction: unrecognized update failure action %s", name, uc.FailureAction)
	}
	switch uc.Order {
	case "", swarm.UpdateOrderStopFirst, swarm.UpdateOrderStartFirst:
	default:
		return errdefs.InvalidArgument("%s.Order: unrecognized update order %s", name, uc.Order)
	}
	if uc.Delay < 0 {
		return errdefs.InvalidArgument("%s.Delay: TaskSpec: update-delay cannot be negative", name)
	}
	if uc.Monitor < 0 {
		return errdefs.InvalidArgument("%s.Monitor: TaskSpec: update-monitor cannot be negative", name)
	}
	if uc.MaxFailureRatio < 0 || uc.MaxFailureRatio > 1 {
		return errdefs.InvalidArgument("%s.MaxFailureRatio: TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1", name)
	}
	return nil
}

// Swarm's control API minimums (swarmkit's validateResources and
// validateHealthCheck).
const (
	minNanoCPUs    = 1e6
	minMemoryBytes = 4 << 20
	minHealthTime  = time.Millisecond
)

func checkResources(r *swarm.ResourceRequirements) error {
	if r == nil {
		return nil
	}
	check := func(cpus, mem int64) error {
		if cpus != 0 && cpus < minNanoCPUs {
			return errdefs.InvalidArgument("invalid cpu value %g: Must be at least %g", float64(cpus)/1e9, minNanoCPUs/1e9)
		}
		if mem != 0 && mem < minMemoryBytes {
			return errdefs.InvalidArgument("invalid memory value %d: Must be at least 4MiB", mem)
		}
		return nil
	}
	if l := r.Limits; l != nil {
		if err := check(l.NanoCPUs, l.MemoryBytes); err != nil {
			return err
		}
	}
	if rv := r.Reservations; rv != nil {
		if err := check(rv.NanoCPUs, rv.MemoryBytes); err != nil {
			return err
		}
		if len(rv.GenericResources) > 0 {
			return errdefs.InvalidArgument("Resources.Reservations.GenericResources: generic resources are not supported by hush")
		}
	}
	if r.SwapBytes != nil {
		if r.Limits == nil || r.Limits.MemoryBytes <= 0 {
			return errdefs.InvalidArgument("Resources.SwapBytes: needs Resources.Limits.MemoryBytes (swap is set on top of the memory limit)")
		}
		if *r.SwapBytes < -1 {
			return errdefs.InvalidArgument("Resources.SwapBytes: %d is invalid (-1 for unlimited, or at least 0)", *r.SwapBytes)
		}
	}
	if sw := r.MemorySwappiness; sw != nil && (*sw < -1 || *sw > 100) {
		return errdefs.InvalidArgument("Resources.MemorySwappiness: %d is invalid (0 to 100, or -1 for the engine's default)", *sw)
	}
	return nil
}

func checkContainerSpec(cs *swarm.ContainerSpec) error {
	switch cs.Isolation {
	case "", container.IsolationDefault:
	default:
		return errdefs.InvalidArgument("ContainerSpec.Isolation: %q is not supported by hush (Linux containers have only the default isolation)", cs.Isolation)
	}
	if err := checkPrivileges(cs.Privileges); err != nil {
		return err
	}
	for _, r := range cs.Configs {
		if r != nil && r.Runtime != nil {
			return errdefs.InvalidArgument("ContainerSpec.Configs: config %s has a Runtime target (a credential spec): not supported by hush (Windows only)", r.ConfigName)
		}
	}
	if g := cs.StopGracePeriod; g != nil && *g < 0 {
		return errdefs.InvalidArgument("ContainerSpec.StopGracePeriod: must not be negative")
	}
	if err := checkHealth(cs.Healthcheck); err != nil {
		return err
	}
	for _, h := range cs.Hosts {
		f := strings.Fields(h)
		if len(f) < 2 {
			return errdefs.InvalidArgument("ContainerSpec.Hosts: invalid entry %q: want \"IP hostname [aliases...]\"", h)
		}
		if _, err := netip.ParseAddr(f[0]); err != nil {
			return errdefs.InvalidArgument("ContainerSpec.Hosts: invalid entry %q: %q is not an IP address", h, f[0])
		}
	}
	for i, u := range cs.Ulimits {
		if u == nil || u.Name == "" {
			return errdefs.InvalidArgument("ContainerSpec.Ulimits[%d]: a ulimit needs a name", i)
		}
		if u.Soft > u.Hard {
			return errdefs.InvalidArgument("ContainerSpec.Ulimits[%d]: soft limit %d of %s is above its hard limit %d", i, u.Soft, u.Name, u.Hard)
		}
	}
	if cs.OomScoreAdj < -1000 || cs.OomScoreAdj > 1000 {
		return errdefs.InvalidArgument("ContainerSpec.OomScoreAdj: %d is out of range (-1000 to 1000)", cs.OomScoreAdj)
	}
	return checkMounts(cs.Mounts)
}

func checkPrivileges(p *swarm.Privileges) error {
	if p == nil {
		return nil
	}
	if p.CredentialSpec != nil {
		return errdefs.InvalidArgument("ContainerSpec.Privileges.CredentialSpec: not supported by hush (Windows only)")
	}
	if sc := p.Seccomp; sc != nil {
		switch sc.Mode {
		case "", swarm.SeccompModeDefault, swarm.SeccompModeUnconfined:
			if len(sc.Profile) > 0 {
				return errdefs.InvalidArgument("ContainerSpec.Privileges.Seccomp.Profile: a profile needs Mode %q", swarm.SeccompModeCustom)
			}
		case swarm.SeccompModeCustom:
			if !json.Valid(sc.Profile) {
				return errdefs.InvalidArgument("ContainerSpec.Privileges.Seccomp.Profile: mode custom needs a profile that is a JSON document")
			}
		default:
			return errdefs.InvalidArgument("ContainerSpec.Privileges.Seccomp.Mode: unknown mode %q (default, unconfined or custom)", sc.Mode)
		}
	}
	if aa := p.AppArmor; aa != nil {
		switch aa.Mode {
		case "", swarm.AppArmorModeDefault, swarm.AppArmorModeDisabled:
		default:
			return errdefs.InvalidArgument("ContainerSpec.Privileges.AppArmor.Mode: unknown mode %q (default or disabled)", aa.Mode)
		}
	}
	return nil
}

func checkHealth(hc *container.HealthConfig) error {
	if hc == nil {
		return nil
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Interval", hc.Interval}, {"Timeout", hc.Timeout}, {"StartPeriod", hc.StartPeriod}, {"StartInterval", hc.StartInterval}} {
		if d.v != 0 && d.v < minHealthTime {
			return errdefs.InvalidArgument("ContainerSpec: %s in HealthConfig cannot be less than %s", d.name, minHealthTime)
		}
	}
	if hc.Retries < 0 {
		return errdefs.InvalidArgument("ContainerSpec: Retries in HealthConfig cannot be negative")
	}
	return nil
}

// checkMounts applies Swarm's mount rules at create rather than when the
// task starts (Swarm's executor rejects the task), and refuses the mount
// kinds hush cannot provide.
func checkMounts(ms []mount.Mount) error {
	seen := map[string]bool{}
	for i, m := range ms {
		field := fmt.Sprintf("ContainerSpec.Mounts[%d]", i)
		if seen[m.Target] {
			return errdefs.InvalidArgument("ContainerSpec: duplicate mount point: %s", m.Target)
		}
		seen[m.Target] = true
		if !path.IsAbs(m.Target) {
			return errdefs.InvalidArgument("%s: invalid mount target, must be an absolute path: %s", field, m.Target)
		}
		switch m.Type {
		case mount.TypeBind:
			if !path.IsAbs(m.Source) {
				return errdefs.InvalidArgument("%s: invalid bind mount source, must be an absolute path: %s", field, m.Source)
			}
		case mount.TypeVolume:
			if path.IsAbs(m.Source) {
				return errdefs.InvalidArgument("%s: invalid volume mount source, must not be an absolute path: %s", field, m.Source)
			}
		case mount.TypeTmpfs:
			if m.Source != "" {
				return errdefs.InvalidArgument("%s: invalid tmpfs source, source must be empty", field)
			}
		case mount.TypeImage:
			if m.Source == "" {
				return errdefs.InvalidArgument("%s: an image mount needs a source image", field)
			}
		case mount.TypeCluster:
			return errdefs.InvalidArgument("%s: Type cluster (CSI volumes) is not supported by hush", field)
		case mount.TypeNamedPipe:
			return errdefs.InvalidArgument("%s: Type npipe is not supported by hush (Windows only)", field)
		default:
			return errdefs.InvalidArgument("%s: invalid mount type: %q", field, m.Type)
		}
		if m.ClusterOptions != nil {
			return errdefs.InvalidArgument("%s.ClusterOptions: CSI volumes are not supported by hush", field)
		}
		for _, o := range []struct {
			name string
			set  bool
			typ  mount.Type
		}{
			{"BindOptions", m.BindOptions != nil, mount.TypeBind},
			{"VolumeOptions", m.VolumeOptions != nil, mount.TypeVolume},
			{"TmpfsOptions", m.TmpfsOptions != nil, mount.TypeTmpfs},
			{"ImageOptions", m.ImageOptions != nil, mount.TypeImage},
		} {
			if o.set && m.Type != o.typ {
				return errdefs.InvalidArgument("%s.%s: only for mounts of type %s, not %s", field, o.name, o.typ, m.Type)
			}
		}
		switch m.Consistency {
		case "", mount.ConsistencyDefault, mount.ConsistencyFull, mount.ConsistencyCached, mount.ConsistencyDelegated:
		default:
			return errdefs.InvalidArgument("%s.Consistency: unknown value %q", field, m.Consistency)
		}
		if b := m.BindOptions; b != nil && b.Propagation != "" {
			ok := false
			for _, p := range mount.Propagations {
				ok = ok || b.Propagation == p
			}
			if !ok {
				return errdefs.InvalidArgument("%s.BindOptions.Propagation: unknown value %q", field, b.Propagation)
			}
		}
		if t := m.TmpfsOptions; t != nil && t.SizeBytes < 0 {
			return errdefs.InvalidArgument("%s.TmpfsOptions.SizeBytes: must not be negative", field)
		}
	}
	return nil
}
