// Package keyring does envelope encryption of secret values at rest.
//
// Every Seal draws a fresh 256-bit data key (DEK) and encrypts the value
// under it with AES-256-GCM; the DEK is then wrapped with AES-256-GCM under
// the cluster master key (KEK). Only the wrapped DEK is ever stored, so
// rotating the master key never requires re-encrypting values, and a leaked
// DEK exposes exactly one secret version.
//
// The caller's associated data (for example "secret/<id>/<version>") is bound
// into both layers, and the wrapped DEK is additionally bound to the master
// key ID. Moving a ciphertext or a wrapped key to another secret, version or
// master key therefore fails authentication instead of silently decrypting
// the wrong value.
//
// Random 96-bit GCM nonces are used under each master key, so a single master
// key must not wrap more than about 2^32 DEKs; rotate well before that.
//
// What this package must never do:
//
//   - put plaintext, DEKs or master key bytes in an error message (errors
//     reach clients and logs verbatim);
//   - log anything at all;
//   - write plaintext or an unwrapped DEK to disk (the only plaintext file it
//     writes is the master key file of FileKeyStore, with mode 0600; the
//     temp files of an interrupted write are wiped by RemoveTempFiles);
//   - panic on malformed or hostile input: Open treats every stored field as
//     attacker-controlled;
//   - keep global mutable state: all keys live in a Keyring value. The one
//     exception is the pool of locked pages key bytes are allocated from
//     (lockedmem.go): mlocked memory is a per-process budget, as the heap
//     it stands in for is, and the pool holds memory, not behaviour.
package keyring
