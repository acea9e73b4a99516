// Package e2e holds hush's end-to-end tests: they build hushd, start it on a
// unix socket and drive the real docker CLI against it, comparing the
// normalised output with Docker Swarm (live, when the host engine is an
// active swarm manager, and always with the golden files recorded from Swarm
// in testdata/swarm).
//
// The host engine and the reference Swarm are shared (with other test runs
// and with people), so the suite touches only what it made: names carry a
// per-run suffix or hushd's node label; the runbooks' public images
// (nginx:latest, mysql:latest) are stood in for by per-test tags
// hush-e2e/<random>/<name>:latest (see suiteTag), never by retagging the
// real ones; and cleanups remove by the ID or label of what the test
// created.
//
// The cluster tests (TestClusterNetns, netns_test.go) run each hushd in a
// network namespace of its own, named hush-<random>-<node>, wired by veth
// pairs to a bridge in one more namespace (hush-<random>-sw): the host's
// firewall and routes are never touched, and deleting the namespaces at
// the end removes every veth and the bridge. hushd enters only the network
// namespace (nsenter --net, never `ip netns exec`, whose new mount
// namespace would hide task tmpfs mounts from the engine). They need root,
// iproute2, nsenter and tcpdump (.ci/run installs them).
//
// Environment:
//
//	CI=true               never skip: a missing docker CLI or Swarm engine fails the test
//	HUSH_E2E_TARGET       "" or "all" (default): hushd, plus live Swarm when available
//	                      "swarm-only": only the live Swarm side (hushd is not built)
//	                      "hushd-only": only hushd (compared with the golden files)
//	                      (a debugging aid: with CI=true, a side not run fails)
//	HUSH_E2E_HUSHD=PATH   use this hushd binary instead of building ./cmd/hushd
//	HUSH_E2E_SWARM_SOCK   the Swarm engine socket (default /var/run/docker.sock)
//	HUSH_E2E_DOCKER=PATH  the docker CLI to drive (default: docker on PATH; goldens use 28.2)
//
// Flags: -update regenerates testdata/swarm/*.golden from live Swarm.
package e2e
