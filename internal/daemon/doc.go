// Package daemon assembles hushd: it opens the data directory, the keyring
// and the store, bootstraps the cluster, serves the API on a unix socket, and
// shuts everything down in reverse order.
//
// It follows etcd's embed pattern: Start returns once the daemon is ready,
// Err reports fatal failures of its parts, and Close stops them in order.
// It must never log secret data or key material.
package daemon
