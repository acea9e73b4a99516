package engine

import (
	"context"
	"strings"

	"github.com/moby/moby/client"
)

// Features is what this node's engine can apply to a container. A task
// asking for something the engine would silently drop (an AppArmor profile
// on a kernel without AppArmor, a mount option an older engine API does not
// know) is rejected by the agent instead.
type Features struct {
	// APIVersion is the API version negotiated with the engine, e.g. "1.41".
	APIVersion string
	// AppArmor, SELinux and Seccomp report the engine's security options
	// (docker info's SecurityOptions).
	AppArmor, SELinux, Seccomp bool
}

// Features asks the engine for its API version and security options.
func (e *Engine) Features(ctx context.Context) (Features, error) {
	v, err := e.Ping(ctx)
	if err != nil {
		return Features{}, err
	}
	res, err := e.cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		return Features{}, wrap(err, "info")
	}
	f := securityFeatures(res.Info.SecurityOptions)
	f.APIVersion = v
	return f, nil
}

// securityFeatures reads docker info's SecurityOptions, entries such as
// "name=seccomp,profile=default" or "name=apparmor".
func securityFeatures(opts []string) Features {
	var f Features
	for _, opt := range opts {
		for _, kv := range strings.Split(opt, ",") {
			switch kv {
			case "name=apparmor":
				f.AppArmor = true
			case "name=selinux":
				f.SELinux = true
			case "name=seccomp":
				f.Seccomp = true
			}
		}
	}
	return f
}
