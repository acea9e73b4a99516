// Package pki is the cluster's identity foundation (issue 9): join tokens
// that pin the root CA, node certificates issued from a node's own CSR,
// mutual-TLS configurations under the cluster CA, and the refusal of
// removed nodes' certificates.
//
// It follows Docker Swarm's profile so a hush cluster behaves as Swarm's:
// SWMTKN-1-<SHA-256 of the CA bundle, base36>-<secret>; node certificates
// with CN = node ID, OU = swarm-manager/swarm-worker, O = cluster ID, DNS
// names role, node ID (and swarm-ca for managers), backdated an hour and
// renewed at a random point between 50% and 80% of their life.
//
// What it must never do:
//   - take a node's identity (ID, role, cluster) from anything but a
//     certificate it verified itself: a CSR's subject, a request field or
//     an unverified peer certificate is never read for identity;
//   - trust a CA bundle a joining node fetched before its bytes match the
//     digest in the token;
//   - write a private key anywhere: keys at rest go through the sealing
//     functions the daemon supplies (see SaveNodeKey), and the DER it
//     encodes is wiped after use;
//   - put a key, a token secret or a CSR's content in an error or log.
//
// It is a pure library: no listeners, no goroutines, no store access. The
// caller supplies clocks, randomness, the current trust and the refusal
// list, so that rotation and removal take effect on the next handshake.
package pki
