// Package e2e holds hush's end-to-end tests: they build hushd, start it on a
// unix socket and drive the real docker CLI against it, comparing the
// normalised output with Docker Swarm (live, when the host engine is an
// active swarm manager, and always with the golden files recorded from Swarm
// in testdata/swarm).
//
// Environment:
//
//	CI=true               never skip: a missing docker CLI or Swarm engine fails the test
//	HUSH_E2E_TARGET       "" or "all" (default): hushd, plus live Swarm when available
//	                      "swarm-only": only the live Swarm side (hushd is not built)
//	                      "hushd-only": only hushd (compared with the golden files)
//	HUSH_E2E_HUSHD=PATH   use this hushd binary instead of building ./cmd/hushd
//	HUSH_E2E_SWARM_SOCK   the Swarm engine socket (default /var/run/docker.sock)
//	HUSH_E2E_DOCKER=PATH  the docker CLI to drive (default: docker on PATH; goldens use 28.2)
//
// Flags: -update regenerates testdata/swarm/*.golden from live Swarm.
package e2e
