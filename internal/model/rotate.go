package model

import (
	"fmt"
	"strings"
	"syscall"
)

// RotateLabel is the service label that chooses how a rotation of the
// service's secrets and configs reaches its running tasks.
const RotateLabel = "io.hush.rotate"

// Rotation modes.
const (
	RotateRestart = "restart"
	RotateReload  = "reload"
	signalPrefix  = "signal:"
)

// signals are the names signal: accepts (what a reload is usually told
// with; the engine's kill API takes the name).
var signals = map[string]syscall.Signal{
	"SIGHUP": syscall.SIGHUP, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2,
	"SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT, "SIGTERM": syscall.SIGTERM,
	"SIGWINCH": syscall.SIGWINCH,
}

// CheckRotateMode validates a value of RotateLabel ("" is restart).
func CheckRotateMode(v string) error {
	switch {
	case v == "" || v == RotateRestart || v == RotateReload:
		return nil
	case strings.HasPrefix(v, signalPrefix):
		if _, ok := signals[strings.TrimPrefix(v, signalPrefix)]; ok {
			return nil
		}
		names := make([]string, 0, len(signals))
		for n := range signals {
			names = append(names, n)
		}
		return fmt.Errorf("unknown signal %q (one of %s)", strings.TrimPrefix(v, signalPrefix), strings.Join(sortedStrings(names), ", "))
	}
	return fmt.Errorf("unknown rotation mode %q (want restart, reload or signal:SIGNAME)", v)
}

func sortedStrings(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}

// ReloadSignal is the signal a task's container gets after a reload ("":
// none).
func (t *Task) ReloadSignal() string {
	sig, _ := strings.CutPrefix(t.RotateMode, signalPrefix)
	if sig == t.RotateMode {
		return ""
	}
	return sig
}

// Reloads reports whether t's mode asks for rotation without a restart.
func (t *Task) Reloads() bool {
	return t.RotateMode == RotateReload || strings.HasPrefix(t.RotateMode, signalPrefix)
}

// ReloadsInPlace reports whether a rotation reaches t without a restart:
// its mode asks for it and every file it mounts is directly under
// /run/secrets, served from one directory that can be swapped atomically.
// Otherwise it says why not. Configs are bound at absolute paths of their
// own, secrets with absolute or nested targets too: a file bind mount pins
// one inode, which can only be rewritten in place.
func (t *Task) ReloadsInPlace() (bool, string) {
	if !t.Reloads() {
		return false, ""
	}
	cs := t.Spec.ContainerSpec
	if cs == nil {
		return false, "no container"
	}
	if len(cs.Configs) > 0 {
		return false, "configs are bound at absolute file targets, which cannot be swapped atomically"
	}
	for _, r := range cs.Secrets {
		if r == nil || r.File == nil {
			continue
		}
		name, ok := strings.CutPrefix(r.File.Name, "/run/secrets/")
		if !ok && strings.HasPrefix(r.File.Name, "/") {
			return false, fmt.Sprintf("secret %s has the absolute file target %s, which cannot be swapped atomically", r.SecretName, r.File.Name)
		}
		if !ok {
			name = r.File.Name
		}
		if name == "" || strings.Contains(name, "/") || strings.HasPrefix(name, "..") {
			return false, fmt.Sprintf("secret %s has the target %s, not a file directly under /run/secrets", r.SecretName, r.File.Name)
		}
	}
	return true, ""
}

// SameVersions reports whether two version sets agree (a missing entry is
// version 1, as in HeldVersion).
func SameVersions(a, b map[string]int) bool {
	get := func(m map[string]int, k string) int {
		if n, ok := m[k]; ok && n > 0 {
			return n
		}
		return 1
	}
	for k := range a {
		if get(a, k) != get(b, k) {
			return false
		}
	}
	for k := range b {
		if get(a, k) != get(b, k) {
			return false
		}
	}
	return true
}
