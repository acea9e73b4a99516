// Package dispatchnet carries dispatcher sessions between hosts (issue 9):
// a worker's agent talks to the managers only through it, over mutual TLS
// under the cluster CA.
//
// The server side (Handler) serves internal/manager/dispatcher to remote
// nodes over HTTP/2: per node one session, a long-lived stream of
// assignments (the full set, then increments) and calls for status
// reports, task removal, network attachments, registry credentials and
// task reads. The client side (Connector) implements the agent's
// Connector and Session over it, reconnecting to the next manager of a
// list when a session breaks.
//
// What it must never do:
//   - take a node's identity from anything but the certificate the TLS
//     handshake verified (pki.PeerIdentity): no header, path, query or
//     body field names a node;
//   - serve a node of another cluster, a node in the refusal list, or a
//     call outside the node's current session;
//   - put secret data anywhere but the TLS stream and memory: never in a
//     log, an error, or an encoding other than its own frame (data bytes
//     are framed raw, never through JSON), and wipe every buffer that
//     held it once decoded or written;
//   - buffer without bound for a client: bodies, sessions per node and
//     stream writes are bounded, and a slow reader is disconnected.
//
// It holds no state beyond live sessions: liveness is recorded through
// the Heartbeats interface, whose owner decides what a missed heartbeat
// means for the node's tasks.
package dispatchnet
