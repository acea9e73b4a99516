package services

import (
	"fmt"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/constraint"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/moby/moby/api/types/swarm"
)

// validateSpec checks a service spec and fills in defaults in place.
func validateSpec(s *swarm.ServiceSpec) error {
	if err := checkBounds(s); err != nil {
		return err
	}
	if err := objects.ValidateName(s.Name); err != nil {
		return err
	}
	cs := s.TaskTemplate.ContainerSpec
	if cs == nil {
		return errdefs.InvalidArgument("ContainerSpec: missing in service spec")
	}
	if cs.Image == "" {
		return errdefs.InvalidArgument("ContainerSpec: image reference must be provided")
	}
	if err := checkHonoured(s); err != nil {
		return err
	}
	// Swarm stores these defaults; clients that compare specs expect them.
	if cs.Isolation == "" {
		cs.Isolation = "default"
	}
	if s.TaskTemplate.Runtime == "" {
		s.TaskTemplate.Runtime = swarm.RuntimeContainer
	}
	if err := validateMode(s); err != nil {
		return err
	}
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	if err := checkPorts(s.EndpointSpec); err != nil {
		return err
	}
	if p := s.TaskTemplate.Placement; p != nil {
		if _, err := constraint.Parse(p.Constraints); err != nil {
			return err
		}
	}
	if err := checkPlacement(&s.TaskTemplate); err != nil {
		return err
	}
	targets := map[string]string{}
	for _, r := range cs.Secrets {
		if r == nil || r.SecretID == "" && r.SecretName == "" {
			return errdefs.InvalidArgument("malformed secret reference")
		}
		if r.File == nil {
			r.File = &swarm.SecretReferenceFileTarget{Name: r.SecretName}
		}
		defaultFile(&r.File.Name, &r.File.UID, &r.File.GID, &r.File.Mode, r.SecretName)
		if err := checkTarget("secret", r.SecretName, r.File.Name, "/run/secrets", targets); err != nil {
			return err
		}
	}
	for _, r := range cs.Configs {
		if r == nil || r.ConfigID == "" && r.ConfigName == "" {
			return errdefs.InvalidArgument("malformed config reference")
		}
		if r.File == nil {
			r.File = &swarm.ConfigReferenceFileTarget{Name: "/" + r.ConfigName}
		}
		defaultFile(&r.File.Name, &r.File.UID, &r.File.GID, &r.File.Mode, "/"+r.ConfigName)
		if err := checkTarget("config", r.ConfigName, r.File.Name, "/", targets); err != nil {
			return err
		}
	}
	return nil
}

// defaultFile applies the docker CLI's defaults server-side, so raw API
// clients get working files (Swarm fails to start such containers).
func defaultFile(name, uid, gid *string, mode *os.FileMode, defName string) {
	if *name == "" {
		*name = defName
	}
	if *uid == "" {
		*uid = "0"
	}
	if *gid == "" {
		*gid = "0"
	}
	if *mode == 0 {
		*mode = 0o444
	}
}

// checkTarget refuses empty targets, any ".." element (Swarm accepts
// "../../etc/passwd" and mounts over the container's /etc/passwd) and two
// references landing on the same file.
func checkTarget(kind, source, target, base string, seen map[string]string) error {
	if target == "" || strings.ContainsRune(target, 0) {
		return errdefs.InvalidArgument("malformed file %s reference, invalid target file name provided", kind)
	}
	for _, el := range strings.Split(target, "/") {
		if el == ".." {
			return errdefs.InvalidArgument("invalid %s target %q for %s: a target must not contain \"..\"", kind, target, source)
		}
	}
	full := target
	if !path.IsAbs(full) {
		full = path.Join(base, target)
	}
	full = path.Clean(full)
	if prev, ok := seen[full]; ok {
		return errdefs.InvalidArgument("%s references '%s' and '%s' have a conflicting target: '%s'", kind, prev, source, target)
	}
	seen[full] = source
	return nil
}

func notFoundList(kind string, missing []string) error {
	sort.Strings(missing)
	if len(missing) == 1 {
		return errdefs.InvalidArgument("%s not found: %s", kind, missing[0])
	}
	return errdefs.InvalidArgument("%s(s) not found: %s", kind, strings.Join(missing, ", "))
}

// checkPorts refuses published ports that cannot be bound: out of range,
// an unknown protocol, or the same host port twice.
func checkPorts(e *swarm.EndpointSpec) error {
	if e == nil {
		return nil
	}
	seen := map[string]bool{}
	for _, p := range e.Ports {
		switch p.Protocol {
		case "", "tcp", "udp", "sctp":
		default:
			return errdefs.InvalidArgument("invalid protocol %q for port %d: must be tcp, udp or sctp", p.Protocol, p.TargetPort)
		}
		if p.TargetPort == 0 || p.TargetPort > 65535 || p.PublishedPort > 65535 {
			return errdefs.InvalidArgument("invalid port: target %d, published %d (1-65535)", p.TargetPort, p.PublishedPort)
		}
		if p.PublishedPort == 0 {
			continue
		}
		k := fmt.Sprintf("%d/%s", p.PublishedPort, p.Protocol)
		if seen[k] {
			return errdefs.InvalidArgument("duplicate published ports provided")
		}
		seen[k] = true
	}
	return nil
}
