// Package agent runs the tasks assigned to this node. Its only channel to
// the managers is a dispatcher Session (Session, Connector): it follows the
// node's assignments (its tasks and the data versions they hold, a full set
// then increments), reports task status for the dispatcher to check and
// write, and asks for network attachments and registry credentials per
// task. It never imports the store or a manager package, so that it can run
// on a worker that reaches the managers only over the network.
//
// It runs tasks through an Executor (NewExecutor wraps the local Docker
// Engine, internal/agent/engine, and the per-task tmpfs,
// internal/agent/secretfs): it has the engine pull the task's image as a
// Swarm worker does (with the service's registry credentials, held only
// for the pull), renders templated data, mounts the task's files on its
// tmpfs, starts the container with them bind-mounted read-only, swaps them
// in place on a reload, and cleans up containers and mounts when tasks end.
//
// It is level-triggered: every pass compares the tasks it was assigned with
// the containers on the engine, so a restart of hushd adopts running
// containers instead of duplicating them; until the first full set arrives
// it touches nothing. It must never write secret data anywhere but the
// tmpfs and never log it; it holds in memory only the data versions its
// tasks hold, wipes each when the dispatcher removes it and all when it
// stops, and wipes its copies for a mount once the tmpfs is filled.
package agent
