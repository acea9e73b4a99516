// Package proxy passes Docker Engine API calls that hush does not own
// through to the host's Docker Engine over its unix socket.
//
// hushd answers the swarm secrets and configs API itself and hands every
// other request to a Proxy (api.Config.Fallback), so that `docker ps`,
// `docker run -it`, `docker exec -i`, `docker logs -f`, `docker build`,
// `docker events`, `docker cp` and the rest behave through hushd's socket
// exactly as they do on the engine's. Two kinds of request exist:
//
//   - Plain requests are forwarded with their method, original path
//     (including any /vX.Y prefix), raw query, headers minus hop-by-hop
//     ones, and body; the answer comes back with its status, headers and
//     body, flushed after every write so streams arrive live. A client that
//     goes away cancels the upstream request.
//   - Hijacking requests (attach, exec start, /session, /grpc: those that
//     send "Connection: Upgrade") get a dedicated engine connection. When
//     the engine switches protocols (101, or a 200 raw stream for old API
//     versions) the client connection is hijacked and bytes are copied both
//     ways, with half-close propagated in each direction, until both sides
//     are done.
//
// What this package must never do:
//
//   - rewrite anything: paths, queries, headers (beyond the hop-by-hop ones
//     HTTP requires a proxy to drop) and bodies pass through as sent;
//   - buffer bodies: request and response bodies are streamed, never held
//     whole in memory, and never delayed waiting for more data;
//   - log bodies or query values: they can carry secrets (build args,
//     environment, registry credentials, stdin). Logs name the method, path
//     and status only.
//
// When the engine socket is missing or refuses connections the proxy
// answers 503 with a dockerd-style JSON error that names the socket.
package proxy
