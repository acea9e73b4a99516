package standalone

import (
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/model"
)

// The labels a container asks for secrets and configs with.
const (
	LabelPrefix       = "io.hush."
	LabelSecrets      = "io.hush.secrets"
	LabelSecretPrefix = "io.hush.secret."
	LabelConfigs      = "io.hush.configs"
	LabelConfigPrefix = "io.hush.config."
	// LabelRotate chooses how a rotation reaches the container, with the
	// values services take (model.RotateLabel); see Request.Rotate.
	LabelRotate = model.RotateLabel
)

// MaxRefs bounds how many secrets and configs one container may ask for.
const MaxRefs = 128

// Ref is one secret or config a container asked for, with its resolved
// target in the container.
type Ref struct {
	Name   string
	Target string // absolute
	UID    int
	GID    int
	Mode   os.FileMode
}

// Request is what a container's labels ask for.
type Request struct {
	Secrets []Ref
	Configs []Ref
	// Rotate is the label io.hush.rotate as given ("": the default, reload
	// when every target can be swapped, restart otherwise).
	Rotate string
	// BindEach binds each file on its own even when all could be served
	// from one directory at /run/secrets (the client mounts something of
	// its own there); a rotation then restarts the container.
	BindEach bool
}

// Swappable reports whether every target is a file directly under
// /run/secrets, so that the files can be served from one directory and
// swapped under the running container; otherwise it says why not.
func (r *Request) Swappable() (bool, string) {
	for _, set := range []struct {
		noun string
		refs []Ref
	}{{"secret", r.Secrets}, {"config", r.Configs}} {
		for _, ref := range set.refs {
			if ok, _ := secretfs.Swappable([]secretfs.File{{Target: ref.Target}}); !ok {
				return false, fmt.Sprintf("%s %s has the target %s, not a file directly under %s", set.noun, ref.Name, ref.Target, secretfs.SecretsDir)
			}
		}
	}
	return true, ""
}

// Empty reports whether nothing was asked for.
func (r *Request) Empty() bool { return len(r.Secrets) == 0 && len(r.Configs) == 0 }

// HasLabels reports whether any label is in hush's namespace: such a
// request is hush's to check; any other passes through untouched.
func HasLabels(labels map[string]string) bool {
	for k := range labels {
		if strings.HasPrefix(k, LabelPrefix) {
			return true
		}
	}
	return false
}

type kindLabels struct {
	noun, list, prefix string
	defaultTarget      func(name string) string
}

var (
	secretLabels = kindLabels{noun: "secret", list: LabelSecrets, prefix: LabelSecretPrefix,
		defaultTarget: func(n string) string { return secretfs.SecretsDir + "/" + n }}
	configLabels = kindLabels{noun: "config", list: LabelConfigs, prefix: LabelConfigPrefix,
		defaultTarget: func(n string) string { return "/" + n }}
)

// ParseLabels reads the io.hush.* labels of a container:
//
//	io.hush.secrets=a,b                    each at /run/secrets/<name>, 0:0, 0444
//	io.hush.secret.<name>=target=/p,uid=1000,gid=1000,mode=0400
//	io.hush.configs, io.hush.config.<name> the same; configs default to /<name>
//
// Every other io.hush.* label, unknown option, duplicate, bad value or
// conflicting target is refused with an InvalidArgument naming it. Errors
// never quote a label's value beyond the option at fault.
func ParseLabels(labels map[string]string) (Request, error) {
	var req Request
	// Sorted, so that the first error is the same on every call.
	keys := make([]string, 0, len(labels))
	for k := range labels {
		if strings.HasPrefix(k, LabelPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case k == LabelSecrets, k == LabelConfigs, k == LabelRotate,
			strings.HasPrefix(k, LabelSecretPrefix), strings.HasPrefix(k, LabelConfigPrefix):
		default:
			return Request{}, errdefs.InvalidArgument("unknown label %q: hush knows %s, %s<name>, %s, %s<name> and %s",
				truncate(k), LabelSecrets, LabelSecretPrefix, LabelConfigs, LabelConfigPrefix, LabelRotate)
		}
	}
	var err error
	if req.Secrets, err = parseKind(secretLabels, labels, keys); err != nil {
		return Request{}, err
	}
	if req.Configs, err = parseKind(configLabels, labels, keys); err != nil {
		return Request{}, err
	}
	if n := len(req.Secrets) + len(req.Configs); n > MaxRefs {
		return Request{}, errdefs.InvalidArgument("a container may ask for at most %d secrets and configs, not %d", MaxRefs, n)
	}
	if err := checkTargets(&req); err != nil {
		return Request{}, err
	}
	if err := checkRotate(&req, labels); err != nil {
		return Request{}, err
	}
	return req, nil
}

// checkRotate reads io.hush.rotate. reload and signal: swap the files
// under the running container, which only a directory of files directly
// under /run/secrets allows: asked of other targets, they are refused
// rather than turned into restarts the user did not ask for.
func checkRotate(req *Request, labels map[string]string) error {
	v, ok := labels[LabelRotate]
	if !ok {
		return nil
	}
	err := model.CheckRotateMode(v)
	if err != nil {
		// Again on the value cut short, to quote no more of it than that:
		// a cut value ends in "..." and is refused the same way.
		err = model.CheckRotateMode(truncate(v))
	}
	if err != nil || v == "" {
		if err == nil {
			err = errors.New("empty rotation mode (want restart, reload or signal:SIGNAME)")
		}
		return errdefs.InvalidArgument("label %s: %v", LabelRotate, err)
	}
	if req.Empty() {
		return errdefs.InvalidArgument("label %s: the container asks for no secret or config", LabelRotate)
	}
	if v != model.RotateRestart {
		if ok, why := req.Swappable(); !ok {
			return errdefs.InvalidArgument("label %s=%s: %s, which cannot be swapped under a running container: use %s=%s, or targets directly under %s",
				LabelRotate, truncate(v), why, LabelRotate, model.RotateRestart, secretfs.SecretsDir)
		}
	}
	req.Rotate = v
	return nil
}

func parseKind(kl kindLabels, labels map[string]string, keys []string) ([]Ref, error) {
	var refs []Ref
	seen := map[string]string{} // name -> label that named it
	if v, ok := labels[kl.list]; ok {
		if strings.TrimSpace(v) == "" {
			return nil, errdefs.InvalidArgument("label %s: no %s named", kl.list, kl.noun)
		}
		for _, n := range strings.Split(v, ",") {
			n = strings.TrimSpace(n)
			if err := checkName(kl, kl.list, n); err != nil {
				return nil, err
			}
			if _, dup := seen[n]; dup {
				return nil, errdefs.InvalidArgument("label %s: %s %q is named twice", kl.list, kl.noun, truncate(n))
			}
			seen[n] = kl.list
			if len(seen) > MaxRefs {
				return nil, errdefs.InvalidArgument("label %s: more than %d %ss", kl.list, MaxRefs, kl.noun)
			}
			refs = append(refs, Ref{Name: n, Target: kl.defaultTarget(n), Mode: 0o444})
		}
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, kl.prefix) {
			continue
		}
		n := strings.TrimPrefix(k, kl.prefix)
		if err := checkName(kl, k, n); err != nil {
			return nil, err
		}
		if _, dup := seen[n]; dup {
			return nil, errdefs.InvalidArgument("%s %q is named both by label %s and by label %s: use one", kl.noun, truncate(n), kl.list, truncate(k))
		}
		seen[n] = k
		r, err := parseOptions(kl, k, n, labels[k])
		if err != nil {
			return nil, err
		}
		refs = append(refs, r)
	}
	return refs, nil
}

func checkName(kl kindLabels, label, n string) error {
	if n == "" {
		return errdefs.InvalidArgument("label %s: empty %s name", truncate(label), kl.noun)
	}
	if err := objects.ValidateName(n); err != nil {
		return errdefs.InvalidArgument("label %s: invalid %s name %q", truncate(label), kl.noun, truncate(n))
	}
	return nil
}

// maxTargetBytes bounds a target before secretfs checks it (its own,
// lower, bound applies after).
const maxTargetBytes = 4096

// maxID is the largest uid or gid a file can have ((uid_t)-1 is "unchanged").
const maxID = 1<<32 - 2

// parseOptions reads the long form: comma-separated key=value pairs with
// the keys of `--secret`'s long syntax, less source.
func parseOptions(kl kindLabels, label, name, v string) (Ref, error) {
	r := Ref{Name: name, Target: kl.defaultTarget(name), Mode: 0o444}
	if strings.TrimSpace(v) == "" {
		return r, nil
	}
	seen := map[string]bool{}
	for _, opt := range strings.Split(v, ",") {
		key, val, ok := strings.Cut(strings.TrimSpace(opt), "=")
		if !ok {
			return Ref{}, errdefs.InvalidArgument("label %s: option %q is not key=value", label, truncate(opt))
		}
		key = strings.TrimSpace(key)
		val = strings.TrimSpace(val)
		if seen[key] {
			return Ref{}, errdefs.InvalidArgument("label %s: option %q given twice", label, truncate(key))
		}
		seen[key] = true
		switch key {
		case "target":
			if val == "" {
				return Ref{}, errdefs.InvalidArgument("label %s: empty target", label)
			}
			if len(val) > maxTargetBytes {
				// Refused here: ResolveTarget's error quotes it whole.
				return Ref{}, errdefs.InvalidArgument("label %s: target %q is longer than %d bytes", label, truncate(val), maxTargetBytes)
			}
			t, err := secretfs.ResolveTarget(val)
			if err != nil {
				return Ref{}, errdefs.InvalidArgument("label %s: %s", label, err.Error())
			}
			if kl.noun == "config" && !path.IsAbs(val) {
				// Swarm's configs place relative targets under the root.
				t = "/" + val
			}
			r.Target = t
		case "uid", "gid":
			id, err := strconv.ParseUint(val, 10, 32)
			if err != nil || id > maxID {
				return Ref{}, errdefs.InvalidArgument("label %s: invalid %s %q: a number from 0 to %d", label, key, truncate(val), maxID)
			}
			if key == "uid" {
				r.UID = int(id)
			} else {
				r.GID = int(id)
			}
		case "mode":
			// docker's --secret reads a mode with strconv's base 0 (0400 and
			// 0o400 octal, 400 decimal, i.e. 0620): a bare number of more
			// than one digit reads one way there and the other to most
			// people, so it is refused rather than guessed.
			if len(val) > 1 && val[0] != '0' {
				return Ref{}, errdefs.InvalidArgument("label %s: mode %q is ambiguous (docker's --secret reads it as decimal): write it in octal with a leading 0, e.g. 0400", label, truncate(val))
			}
			m, err := strconv.ParseUint(val, 0, 32)
			if err != nil || m > 0o777 {
				return Ref{}, errdefs.InvalidArgument("label %s: invalid mode %q: octal permission bits, e.g. 0400", label, truncate(val))
			}
			r.Mode = os.FileMode(m)
		case "source":
			return Ref{}, errdefs.InvalidArgument("label %s: option \"source\" is not taken: the label names the %s", label, kl.noun)
		default:
			return Ref{}, errdefs.InvalidArgument("label %s: unknown option %q (target, uid, gid, mode)", label, truncate(key))
		}
	}
	return r, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// checkTargets applies the rules of a service's targets across every
// secret and config of the container: distinct, none inside another.
func checkTargets(req *Request) error {
	type owner struct{ noun, name string }
	seen := map[string]owner{}
	all := make([]owner, 0, len(req.Secrets)+len(req.Configs))
	targets := make([]string, 0, cap(all))
	for _, set := range []struct {
		noun string
		refs []Ref
	}{{"secret", req.Secrets}, {"config", req.Configs}} {
		for _, r := range set.refs {
			o := owner{set.noun, r.Name}
			if p, dup := seen[r.Target]; dup {
				return errdefs.InvalidArgument("%s %q and %s %q have the same target %s", p.noun, p.name, o.noun, o.name, r.Target)
			}
			seen[r.Target] = o
			all = append(all, o)
			targets = append(targets, r.Target)
		}
	}
	for i, t := range targets {
		for dir := path.Dir(t); dir != "/" && dir != "."; dir = path.Dir(dir) {
			if p, ok := seen[dir]; ok {
				return errdefs.InvalidArgument("targets of %s %q (%s) and %s %q (%s) conflict: one is inside the other",
					p.noun, p.name, dir, all[i].noun, all[i].name, t)
			}
		}
	}
	return nil
}
