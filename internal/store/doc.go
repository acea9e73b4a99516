// Package store is hush's durable, replicated object store, built on etcd.
//
// It runs an embedded etcd member (one by default) or connects to an existing
// etcd cluster; callers see the same Store either way, so running several
// managers as one etcd cluster later changes no caller. Objects are kept as
// opaque byte values under /hush/v1/<kind>/<id>, with a name index under
// /hush/v1/names/<kind>/<lowercased name> that makes names unique
// case-insensitively in the same transaction that writes the object.
//
// A write returns only after etcd has committed it (fsynced on a quorum), and
// the returned revision is the object's Version.Index on the wire.
//
// The store must never see secret plaintext: values handed to it are already
// sealed by internal/keyring. It must never log values.
package store
