package api

import (
	"context"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/moby/moby/api/types/swarm"
)

// parseNodeFilter reads `GET /nodes?filters=` with Swarm's keys and texts.
// Swarm answers an unknown role or membership with 500; it is the client's
// mistake, so hush answers 400 with the same text.
func parseNodeFilter(raw string) (nodes.Filter, error) {
	args, err := parseFilters(raw, nodes.FilterKeys...)
	if err != nil {
		return nodes.Filter{}, err
	}
	return nodes.ParseFilter(args.values)
}

// NodeRemover removes nodes of a cluster (`docker node rm`); handled is
// false on a lone node, which the API answers itself.
type NodeRemover interface {
	RemoveNode(ctx context.Context, ref string, force bool) (handled bool, err error)
}

// removeNode answers `docker node rm`: an unknown node is a 404 before any
// other check, as in Swarm; hush's only node is the manager, which Swarm
// refuses to remove while it is a raft member (its text names the full ID).
func (s *Server) removeNode(ctx context.Context, ref string, force bool) error {
	if rm, ok := s.Nodes.(NodeRemover); ok {
		if handled, err := rm.RemoveNode(ctx, ref, force); handled {
			return err
		}
	}
	if !s.matchNode(ref) {
		return errdefs.NotFound("node %s not found", ref)
	}
	return errdefs.FailedPrecondition("node %s is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal", s.Node.ID)
}

// engineLabels turns the engine's "k=v" labels into the map a node's
// description carries (nil when there are none, as Swarm shows null).
func engineLabels(kvs []string) map[string]string {
	if len(kvs) == 0 {
		return nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// otherNode finds another node of the cluster as Swarm's getNode does:
// full ID, then hostname, then unique ID prefix, among the nodes `node
// ls` shows (the CLI's `service ps` inspects each task's node for its
// hostname); ok false when none matches, Swarm's ambiguity error when
// several do.
func (s *Server) otherNode(ctx context.Context, ref string) (swarm.Node, bool, error) {
	if s.Nodes == nil || ref == "" {
		return swarm.Node{}, false, nil
	}
	_, others, ok, err := s.Nodes.Managers(ctx)
	if err != nil || !ok {
		return swarm.Node{}, false, err
	}
	var byName, byPrefix []swarm.Node
	for _, n := range others {
		if n.ID == ref {
			return n, true, nil
		}
		if n.Description.Hostname == ref {
			byName = append(byName, n)
		}
		if strings.HasPrefix(n.ID, ref) {
			byPrefix = append(byPrefix, n)
		}
	}
	for _, found := range [][]swarm.Node{byName, byPrefix} {
		switch len(found) {
		case 0:
		case 1:
			return found[0], true, nil
		default:
			return swarm.Node{}, false, errdefs.BadRequest("node %s is ambiguous (%d matches found)", ref, len(found))
		}
	}
	return swarm.Node{}, false, nil
}

// nodeRef resolves a node reference to a node ID as Swarm's getNode does:
// full ID, then hostname, then unique ID prefix, among this node and the
// others `node ls` shows; Swarm's not-found or ambiguity error otherwise.
// "self", when it names no node, is this node (as the CLI resolves it).
func (s *Server) nodeRef(ctx context.Context, ref string) (string, error) {
	type node struct{ id, host string }
	all := []node{{s.Node.ID, hostname()}}
	if s.Nodes != nil {
		_, others, ok, err := s.Nodes.Managers(ctx)
		if err != nil {
			return "", err
		}
		if ok {
			for _, n := range others {
				all = append(all, node{n.ID, n.Description.Hostname})
			}
		}
	}
	var byName, byPrefix []string
	for _, n := range all {
		if n.id == ref {
			return n.id, nil
		}
		if n.host == ref {
			byName = append(byName, n.id)
		}
		if strings.HasPrefix(n.id, ref) {
			byPrefix = append(byPrefix, n.id)
		}
	}
	for _, found := range [][]string{byName, byPrefix} {
		switch len(found) {
		case 0:
		case 1:
			return found[0], nil
		default:
			return "", errdefs.BadRequest("node %s is ambiguous (%d matches found)", ref, len(found))
		}
	}
	if ref == "self" {
		return s.Node.ID, nil
	}
	return "", errdefs.NotFound("node %s not found", ref)
}
