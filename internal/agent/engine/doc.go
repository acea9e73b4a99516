// Package engine is the thin layer between hush's agent and the local Docker
// Engine: it runs the container of one task, the way a Docker Swarm worker's
// container executor does, and nothing more.
//
// An Engine wraps the official client (github.com/moby/moby/client) that
// hushd builds once for the engine's Unix socket (package enginehost). The client negotiates its API version down to the
// engine's on the first request (hush targets Docker 20.10, API 1.41), so
// every call below works against older engines too.
//
// What it does:
//
//   - Create turns a Spec (a task's container spec, already resolved by the
//     caller: image, command, env, secret/config bind mounts, networks, ...)
//     into a container named exactly Spec.Name. Creating a name that exists
//     already returns the existing container (idempotent), so a restarted
//     agent can simply create again. Secret and config files (Spec.Binds) are
//     always bind-mounted read-only with rprivate propagation.
//   - Start, Stop and Remove are idempotent: starting a running container,
//     stopping a stopped or missing one and removing a missing one all
//     succeed.
//   - Inspect, ListTasks, Exits and Logs report on containers; ListTasks and
//     Exits only ever see containers labelled com.docker.swarm.task.id, which
//     is how the agent adopts its containers after a restart and learns that
//     a task's process ended.
//
// Errors wrap ErrNotFound when the engine does not know the container (or
// ErrImageNotFound, from Create, the image), and ErrUnavailable when the
// engine cannot be reached; test them with errors.Is.
//
// What it must never do:
//
//   - Log or put into an error the values of a Spec's environment or the
//     contents (or anything read from) the files it bind-mounts: env
//     variables can hold secrets, and the bound files are secrets. Logs and
//     errors name containers, images and paths only.
//   - Pull an image the caller did not ask for: Create uses only images
//     already present in the engine (the engine API never pulls on create);
//     the agent calls Pull first, as a Swarm worker does, with the service's
//     registry credentials, which this package never logs nor puts into an
//     error.
//   - Touch a container without the com.docker.swarm.task.id label except
//     through an ID or name the caller passes explicitly: listing and event
//     subscriptions filter on that label, so containers that hush did not
//     create are never found, stopped or removed by a sweep.
package engine
