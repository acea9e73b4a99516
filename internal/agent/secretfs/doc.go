// Package secretfs materialises a task's secrets and configs in memory so
// that the executor can bind-mount them into the task's container, the way
// Docker Swarm does.
//
// For each task, Manager.Mount:
//
//  1. mounts a fresh tmpfs at <Root>/<taskID> with nodev,nosuid,noexec,
//     mode=0700 owned by root, a size limit just above what the files need
//     (never more than MaxSize), and noswap where the kernel supports it
//     (Linux 6.4+), so that plaintext is not written to swap either;
//  2. writes every file at an internal, flat name ("0", "1", ...) so that
//     nested targets need no directories, with exactly the uid, gid and
//     permission bits it was given, plus a small manifest of metadata
//     (targets, owners, modes, sizes; never data) used to find the mount
//     again after hushd restarts;
//  3. remounts the tmpfs read-only (again nodev,nosuid,noexec).
//
// Mount.Bindings then tells the executor which host file to bind-mount,
// read-only, at which path in the container: relative targets go under
// /run/secrets/, absolute ones are kept. Inside the container each file shows
// up as "tmpfs /run/secrets/<name> tmpfs ro,...". Manager.Unmount lazily
// unmounts the tmpfs (running containers keep their own bind mounts until
// they exit) and removes its directory.
//
// Mounts outlive hushd: after a restart Lookup (and Mount, for a task whose
// mount is complete) returns the existing mount untouched, so adopted
// containers keep their files, and Tasks lists every task directory under Root
// so that orphans can be unmounted.
//
// hushd must run in the same mount namespace as the Docker Engine (or one
// whose mounts propagate to it), or the engine will bind an empty directory.
//
// What this package must never do:
//
//   - write plaintext anywhere but the task's own tmpfs: files are created
//     with openat relative to a descriptor of the mountpoint, after checking
//     that it is a tmpfs distinct from Root's filesystem, with O_NOFOLLOW and
//     O_EXCL, and no temporary files are used;
//   - log secret data or put it in an error (errors and logs name task IDs,
//     targets, file indexes and sizes only);
//   - keep a reference to File.Data after Mount returns (the caller owns it,
//     and may wipe it);
//   - let anyone but root see into a mount (the tmpfs root is 0700), or leave
//     a half-written mount writable or mounted when Mount fails;
//   - leave mounts behind: every failed Mount is undone, and Unmount plus
//     Tasks let the caller clean up tasks that ended while hushd was down.
package secretfs
