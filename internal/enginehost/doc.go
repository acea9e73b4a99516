// Package enginehost parses hushd's --engine value (a unix socket path or a
// unix:// URL, as DOCKER_HOST spells it) once, and gives the one dialer and
// the one Docker Engine client that the agent, the networks manager and the
// pass-through share.
//
// Only unix sockets are accepted: hush bind-mounts each task's secrets from
// this host's tmpfs into its containers, so the engine must run on this
// host, and the pass-through relays the engine's answers unauthenticated.
// Other schemes (tcp, ssh, npipe, fd) are refused by name rather than dialled
// half-way.
package enginehost
