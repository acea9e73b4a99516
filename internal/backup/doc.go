// Package backup is the file format of hush's encrypted backups: a stream
// that is confidential and authenticated under a key derived from a
// passphrase (or any key file) with Argon2id, and the archive inside it.
//
// A backup file is a header followed by AEAD-sealed chunks (the STREAM
// construction of Hoang, Reyhanitabar, Rogaway and Vizár):
//
//	header  magic "HUSHBKUP", version, Argon2id parameters, salt,
//	        chunk size, key check
//	chunk i AES-256-GCM(key, nonce(i, final), plaintext_i,
//	        AAD = SHA-256(header) || i || final)
//
// Every chunk but the last holds exactly the header's chunk size of
// plaintext; the last one (final = 1) holds 0 to chunk size bytes. Binding
// the index and the final flag into every chunk makes reordering, dropping
// and truncating chunks (at a chunk boundary or inside one) fail
// authentication instead of yielding a shorter or shuffled plaintext;
// binding the header's hash makes every header byte authenticated too. The
// key check (16 bytes of the Argon2id output that are not the encryption
// key) lets a reader tell a wrong key from a damaged file.
//
// The salt is fresh for every file, so every file has its own key and the
// nonces can be the chunk counter.
//
// Inside the stream, the archive is a manifest (the files needed to open
// the store: node identity and key files, plus what the backup is of)
// followed by the store's snapshot, which runs to the end of the stream.
//
// What this package must never do: put key material or plaintext in an
// error; return plaintext of a chunk that did not authenticate; report
// success (io.EOF) before the final chunk has authenticated; trust header
// fields (they bound memory and time before any derivation runs).
package backup
