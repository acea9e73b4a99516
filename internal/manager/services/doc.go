// Package services is the manager's control logic for services and the
// read side of tasks: it validates service specs with Swarm's rules (and
// hush's stricter secret targets), applies the docker CLI's defaults to
// secret and config references, and keeps the in-use markers that stop a
// referenced secret from being removed, in the same transaction as the
// service write.
//
// Service specs hold secret references, never secret data.
package services
