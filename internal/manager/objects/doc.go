// Package objects is the manager's control logic for secrets and configs:
// the swarm objects that carry a blob of user data.
//
// It validates specs with Docker Swarm's rules and texts, seals the data with
// the keyring before anything reaches the store, and resolves references the
// way dockerd does (full ID, exact name, unique ID prefix).
//
// It must never return data in an Object, never put data (or anything derived
// from it other than the sealed form) in an error or log line, and never
// compare data in variable time. Data leaves this package only through Data,
// which the dispatcher uses to deliver it to a task.
package objects
