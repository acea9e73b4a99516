// Package networks is the manager's control logic for swarm-scoped networks
// (`docker network create -d overlay`, and the networks `docker stack deploy`
// declares).
//
// A hush network is a store object with Swarm's rules and texts (DNS-label
// names, unique case-insensitively; refused while a service spec references
// it). Because hush runs every task on the one host engine, a network is
// realised there as an engine bridge network of the same name (or, when an
// engine network that is not its own has that name, <name>-<ID prefix>),
// labelled io.hush.network.id=<ID> and io.hush.node.id=<node>, which task
// containers join, by the engine network's ID, with their service's name
// (and the spec's aliases) as DNS aliases, so the services of a stack reach
// each other by name as they do on Swarm. Only a network carrying both
// labels is ever adopted.
//
// Services reference networks by ID in their specs; ResolveAttachments turns
// names into IDs at service create/update and RefOps/DropRefOps/RefDiffOps
// write in-use markers in the service's own transaction, so a network can
// never be removed while a service spec references it, however the calls
// interleave.
//
// It must never create, remove or change an engine network that does not
// carry this node's io.hush.node.id label.
package networks
