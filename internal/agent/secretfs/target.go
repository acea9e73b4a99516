package secretfs

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
)

// SecretsDir is where relative targets are placed in the container.
const SecretsDir = "/run/secrets"

// maxTargetLen is Linux's PATH_MAX less the terminating NUL.
const maxTargetLen = 4095

// File is one secret or config to materialise for a task.
type File struct {
	// Target is the path as written in the service spec: relative
	// ("db_password", "a/b") means under /run/secrets/; absolute
	// ("/etc/app/key.pem") is kept as is. Configs pass their own absolute
	// default.
	Target string
	// UID and GID own the file (0 to 4294967294).
	UID, GID int
	// Mode holds the permission bits, e.g. 0444; no other bits are allowed.
	Mode os.FileMode
	// Data is the plaintext. Mount does not keep a reference to it after it
	// returns; the caller owns it.
	Data []byte
}

// Binding is one bind mount the executor must add to the container:
// HostPath, read-only, at ContainerPath.
type Binding struct {
	HostPath      string
	ContainerPath string
}

// ResolveTarget validates a target and returns its absolute path in the
// container: a relative target is placed under /run/secrets/, an absolute one
// is kept. The target must be non-empty, contain no NUL byte and no ".."
// element, be clean (no "//", "./" or trailing "/") and name a file.
func ResolveTarget(target string) (string, error) {
	invalid := func(why string) (string, error) {
		return "", fmt.Errorf("invalid secret target %q: %s", target, why)
	}
	if target == "" {
		return "", errors.New("invalid secret target: must not be empty")
	}
	if strings.IndexByte(target, 0) >= 0 {
		return invalid("must not contain a NUL byte")
	}
	for _, el := range strings.Split(target, "/") {
		if el == ".." {
			return invalid(`must not contain ".."`)
		}
	}
	if len(target) > maxTargetLen {
		return invalid(fmt.Sprintf("longer than %d bytes", maxTargetLen))
	}
	if clean := path.Clean(target); clean != target {
		return invalid(fmt.Sprintf("must be a clean path (%q)", clean))
	}
	if target == "." || target == "/" {
		return invalid("must name a file")
	}
	if !path.IsAbs(target) {
		target = SecretsDir + "/" + target
		if len(target) > maxTargetLen {
			return invalid(fmt.Sprintf("longer than %d bytes under %s", maxTargetLen, SecretsDir))
		}
	}
	return target, nil
}

// validTaskID reports whether id is 1 to 64 characters of [a-z0-9]; task IDs
// become path elements under Root.
func validTaskID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func checkTaskID(id string) error {
	if !validTaskID(id) {
		return fmt.Errorf("secretfs: invalid task ID %q: must be 1 to 64 characters of [a-z0-9]", id)
	}
	return nil
}

// entry is a File's metadata, without data: what the manifest records.
type entry struct {
	Name   string `json:"name"`
	Target string `json:"target"` // resolved, absolute
	UID    int    `json:"uid"`
	GID    int    `json:"gid"`
	Mode   uint32 `json:"mode"`
	Size   int64  `json:"size"`
}

const maxID = 1<<32 - 2 // (uid_t)-1 means "unchanged" to chown

// plan validates files and returns their entries, in order. Errors name the
// file's index and target, never its data.
func plan(files []File) ([]entry, error) {
	entries := make([]entry, len(files))
	seen := make(map[string]int, len(files))
	for i, f := range files {
		target, err := ResolveTarget(f.Target)
		if err != nil {
			return nil, fmt.Errorf("secretfs: file %d: %w", i, err)
		}
		if j, dup := seen[target]; dup {
			return nil, fmt.Errorf("secretfs: files %d (%q) and %d (%q) have the same target %s",
				j, files[j].Target, i, f.Target, target)
		}
		seen[target] = i
		if f.UID < 0 || f.UID > maxID || f.GID < 0 || f.GID > maxID {
			return nil, fmt.Errorf("secretfs: file %d (target %q): uid %d / gid %d out of range", i, f.Target, f.UID, f.GID)
		}
		if f.Mode&^os.ModePerm != 0 {
			return nil, fmt.Errorf("secretfs: file %d (target %q): mode %v has bits other than permissions", i, f.Target, f.Mode)
		}
		entries[i] = entry{
			Name:   fileName(i),
			Target: target,
			UID:    f.UID,
			GID:    f.GID,
			Mode:   uint32(f.Mode.Perm()),
			Size:   int64(len(f.Data)),
		}
	}
	// A target inside another one ("/run/secrets/a" and "/run/secrets/a/b")
	// would need a path to be both a file and a directory in the container.
	for i, e := range entries {
		for dir := path.Dir(e.Target); dir != "/"; dir = path.Dir(dir) {
			if j, ok := seen[dir]; ok {
				return nil, fmt.Errorf("secretfs: targets of files %d (%s) and %d (%s) conflict: one is inside the other",
					j, dir, i, e.Target)
			}
		}
	}
	return entries, nil
}

func fileName(i int) string { return fmt.Sprintf("%d", i) }
