// Package agent runs the tasks assigned to this node on the local Docker
// Engine: it fetches each task's secrets from the dispatcher, materialises
// them on a per-task tmpfs (internal/agent/secretfs), has the engine pull
// the task's image as a Swarm worker does (with the service's registry
// credentials, held only for the pull), starts the container
// with those files bind-mounted read-only, reports task status, and cleans
// up containers and mounts when tasks end.
//
// It is level-triggered: every pass compares the tasks in the store with the
// containers on the engine, so a restart of hushd adopts running containers
// instead of duplicating them. It must never write secret data anywhere but
// the tmpfs, never log it, and never keep it in memory after a mount.
package agent
