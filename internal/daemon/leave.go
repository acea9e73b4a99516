package daemon

import (
	"context"
	"fmt"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// Swarm's refusal of `swarm leave` on a manager, in its parts (moby's
// daemon/cluster Leave).
const (
	leaveManagerPrefix = "You are attempting to leave the swarm on a node that is participating as a manager. "
	leaveLastManager   = "Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. "
	leaveLossFormat    = "Removing this node leaves %v managers out of %v. Without a Raft quorum your swarm will be inaccessible. "
	leaveUnknown       = "Doing so may lose the consensus of your cluster. "
	leaveSuffix        = "The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message."
)

// leaveManagerText is Swarm's refusal of a manager's leave without
// --force, from the managers reachable and unreachable (this one
// included); ok false when the counts are unknown.
func leaveManagerText(reachable, unreachable int, ok bool) string {
	msg := leaveManagerPrefix
	switch {
	case !ok:
		msg += leaveUnknown
	case reachable == 1 && unreachable == 0:
		return msg + leaveLastManager
	case reachable-2 <= unreachable:
		msg += fmt.Sprintf(leaveLossFormat, reachable-1, reachable+unreachable)
	}
	return msg + leaveSuffix
}

// leaveMemberLocked is `swarm leave` on a manager of an etcd cluster.
// Without --force it is Swarm's refusal. With --force hush refuses by
// name: leaving must take the member out of the etcd membership first
// (or, for the last one, erase a store other nodes may hold a copy of),
// which is not built; erasing the shared store would erase every
// manager's.
func (d *Daemon) leaveMemberLocked(ctx context.Context, force bool) error {
	if !force {
		reach, unreach, ok := 0, 0, false
		if ms := d.store.Members(); ms != nil {
			if list, err := ms.List(ctx); err == nil {
				ok = true
				for _, m := range list {
					if m.Learner {
						continue
					}
					if m.Reachable {
						reach++
					} else {
						unreach++
					}
				}
			}
		}
		return errdefs.Unavailable("%s", leaveManagerText(reach, unreach, ok))
	}
	return errdefs.BadRequest("hush cannot take a manager out of a cluster of managers with `swarm leave --force` yet: its etcd membership would have to be removed first, which is not built")
}
