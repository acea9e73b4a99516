// Package standalone gives secrets and configs to containers created through
// hushd's socket with `docker run`, docker-compose or any other Engine API
// client, outside Swarm services: a deliberate extension beyond Swarm.
//
// A container asks with labels (see ParseLabels). hushd's POST
// /containers/create handler calls Manager.Prepare, which checks every
// reference, records a grant (which container holds which object, and
// since when) together with the in-use markers that make `docker secret rm`
// refuse, mounts a per-container tmpfs under its own root, and returns the
// bind mounts to add to the request. The engine then creates the container;
// Commit records its ID, Abort undoes everything when the engine refused.
//
// The tmpfs lives as long as the container: Run follows the engine's
// events and releases a grant when its container is destroyed (never on
// die, so stop, start and restart keep the files), and Reconcile, at
// hushd's start or unlock, re-provisions the tmpfs of every container
// that still exists (after a reboot) and removes the grants and mounts of
// containers that vanished while hushd was down. The files are bound as
// `Mounts` of type bind, so a container whose tmpfs is missing fails to
// start instead of seeing an empty directory.
//
// Rotations reach the containers (rotate.go): Sync brings every grant
// behind the current versions onto them, by swapping the files under the
// running container (io.hush.rotate reload, the default when every file
// is directly under /run/secrets, served then from one swappable
// directory), then signalling it (signal:) or restarting it through the
// engine (restart, the default for other targets), and records the new
// versions only once the files hold them. Retention and destroy never take
// a version a grant records (HeldVersions).
//
// What this package must never do: put a value anywhere but the tmpfs
// (grants hold IDs, names, targets, owners and modes), or log or return one.
package standalone
