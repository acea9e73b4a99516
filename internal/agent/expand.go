package agent

import (
	"context"
	"fmt"
	"maps"
	"strings"

	"github.com/hush-secrets/hush/internal/agent/engine"
	"github.com/hush-secrets/hush/internal/agent/template"
	"github.com/moby/moby/api/types/mount"
)

// maxExpanded bounds the expansion of one templated spec field.
const maxExpanded = 64 << 10

// expandSpec expands the templates Swarm's executor expands in a task's
// container settings (`docker service create --hostname
// "{{.Node.Hostname}}" --env "SLOT={{.Task.Slot}}" --mount
// "source=data-{{.Task.Slot}},..."`): Env values, Hostname, and the
// mounts' Source, Target, volume labels and driver options. Strings
// without "{{" are left as they are. The mounts' option maps are copied
// before they change (they are shared with the task's spec). An Env value
// may hold a credential, so its errors never quote it.
func expandSpec(ctx context.Context, s *engine.Spec, tc template.Context) error {
	expand := func(text string, sensitive bool) (string, error) {
		if !strings.Contains(text, "{{") {
			return text, nil
		}
		out, err := template.Render(ctx, template.Request{Text: []byte(text), Context: tc, Limit: maxExpanded, Sensitive: sensitive})
		if err != nil {
			return "", err
		}
		return string(out), nil
	}
	env := make([]string, len(s.Env))
	for i, e := range s.Env {
		k, v, ok := strings.Cut(e, "=")
		if !ok {
			env[i] = e
			continue
		}
		x, err := expand(v, true)
		if err != nil {
			return fmt.Errorf("expanding env failed: expanding env %s: %w", k, err)
		}
		env[i] = k + "=" + x
	}
	if len(s.Env) > 0 {
		s.Env = env
	}
	mounts := make([]mount.Mount, len(s.Mounts))
	for i, m := range s.Mounts {
		var err error
		if m.Source, err = expand(m.Source, false); err != nil {
			return fmt.Errorf("expanding mounts failed: expanding mount source: %w", err)
		}
		if m.Target, err = expand(m.Target, false); err != nil {
			return fmt.Errorf("expanding mounts failed: expanding mount target: %w", err)
		}
		if vo := m.VolumeOptions; vo != nil {
			c := *vo
			if c.Labels, err = expandMap(c.Labels, expand); err != nil {
				return fmt.Errorf("expanding mounts failed: expanding volume labels: %w", err)
			}
			if dc := c.DriverConfig; dc != nil {
				d := *dc
				if d.Options, err = expandMap(d.Options, expand); err != nil {
					return fmt.Errorf("expanding mounts failed: expanding volume driver config: %w", err)
				}
				c.DriverConfig = &d
			}
			m.VolumeOptions = &c
		}
		mounts[i] = m
	}
	if len(s.Mounts) > 0 {
		s.Mounts = mounts
	}
	h, err := expand(s.Hostname, false)
	if err != nil {
		return fmt.Errorf("expanding hostname failed: %w", err)
	}
	s.Hostname = h
	return nil
}

func expandMap(m map[string]string, expand func(string, bool) (string, error)) (map[string]string, error) {
	if m == nil {
		return nil, nil
	}
	out := maps.Clone(m)
	for k, v := range m {
		x, err := expand(v, false)
		if err != nil {
			return nil, fmt.Errorf("entry %s: %w", k, err)
		}
		out[k] = x
	}
	return out, nil
}

// specTemplated reports whether any field expandSpec expands holds a
// template, so that a task without one needs no template context.
func specTemplated(s *engine.Spec) bool {
	has := func(v string) bool { return strings.Contains(v, "{{") }
	if has(s.Hostname) {
		return true
	}
	for _, e := range s.Env {
		if has(e) {
			return true
		}
	}
	for _, m := range s.Mounts {
		if has(m.Source) || has(m.Target) {
			return true
		}
		if vo := m.VolumeOptions; vo != nil {
			for _, v := range vo.Labels {
				if has(v) {
					return true
				}
			}
			if vo.DriverConfig != nil {
				for _, v := range vo.DriverConfig.Options {
					if has(v) {
						return true
					}
				}
			}
		}
	}
	return false
}
