// Package etcdtest runs a real etcd server in the test process, on a
// loopback client URL with mutual TLS, for tests of hush against an
// external etcd (hushd's --external-etcd): the store's, the daemon's and
// the end-to-end tests, which read what hush stored with a raw client.
//
// Test code only: it must never be imported by a shipped binary (cmd/),
// and its CA and keys are fresh per server and never written outside the
// test's temporary directory.
package etcdtest
