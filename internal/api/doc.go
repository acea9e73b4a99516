// Package api serves the swarm part of the Docker Engine API over HTTP.
//
// Handlers decode requests into the official wire types, call the manager,
// and encode answers; writeError is the one table that turns hush's error
// categories into dockerd's status codes and texts.
//
// Nothing this package writes may contain secret data: responses carry
// metadata only, log lines carry method, path and status, and errors are
// rendered from category and a message that never includes values.
package api
