// Package events derives hush's own swarm events (the `docker events` lines
// of type service, node, secret, config and network with scope "swarm")
// from the store, and serves them to subscribers.
//
// Events are derived in one place, from a watch on the store's key space,
// rather than by hooks in every manager: each put or delete of an object in
// a watched table becomes a create, update or remove, and the attributes
// Swarm puts on an update (replicas.old/new, image.old/new,
// updatestate.old/new; availability, role and liveness state of nodes)
// come from comparing the object's previous and new stored forms. A write
// that changes nothing is no event.
//
// Events carry what Swarm's carry and nothing more: an object's ID and name
// and, for services and nodes, the changed fields above. Secret and config
// data, service environments and the rest of a spec never reach an event.
//
// Memory is bounded whatever clients do: the history is a ring of the last
// History events (1,000 by default), and every subscriber has a bounded
// buffer; a subscriber that falls behind by a full buffer is dropped (its
// channel closed) rather than left to grow or to stall the others.
//
// The history lives in memory only, like the engine's own: it starts empty
// when hushd starts, so `--since` reaches back no further than that.
package events
