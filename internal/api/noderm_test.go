package api

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/swarm"
)

// removingManagers is fakeManagers with node rm: it records what it was
// asked and refuses peer3 as a live node.
type removingManagers struct {
	fakeManagers
	asked *[]string
}

func (r removingManagers) RemoveNode(_ context.Context, ref string, force bool) (bool, error) {
	*r.asked = append(*r.asked, ref)
	if ref == "peer3aaaaaaaaaaaaaaaaaaaa" && !force {
		return true, errdefs.FailedPrecondition("node %s is not down and can't be removed", ref)
	}
	return true, nil
}

// On a cluster, node rm goes to the cluster's remover (with force parsed,
// a bad value refused before it is asked), and node inspect finds other
// nodes by ID or unique prefix (the CLI's service ps names tasks' nodes
// through it).
func TestNodeRemoveAndInspectCluster(t *testing.T) {
	s := newNodeServer(t)
	var asked []string
	s.Nodes = removingManagers{asked: &asked}
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{"DELETE", "/v1.41/nodes/peer3aaaaaaaaaaaaaaaaaaaa", 400},
		{"DELETE", "/v1.41/nodes/peer3aaaaaaaaaaaaaaaaaaaa?force=1", 200},
		{"DELETE", "/v1.41/nodes/peer2aaaaaaaaaaaaaaaaaaaa?force=maybe", 400},
		{"GET", "/v1.41/nodes/peer2", 200},
		{"GET", "/v1.41/nodes/peer", 400}, // ambiguous prefix, as Swarm's
		{"GET", "/v1.41/nodes/nosuch", 404},
	} {
		rec := serve(s, tc.method, tc.path, "")
		if rec.Code != tc.code {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, rec.Code, rec.Body, tc.code)
		}
		if tc.method == "GET" && rec.Code == http.StatusOK {
			var n struct{ ID string }
			if err := json.Unmarshal(rec.Body.Bytes(), &n); err != nil || n.ID != "peer2aaaaaaaaaaaaaaaaaaaa" {
				t.Errorf("inspect: %v %s", err, rec.Body)
			}
		}
	}
	if len(asked) != 2 {
		t.Errorf("the remover was asked %v; want the two valid requests", asked)
	}
}

// namedManagers is fakeManagers whose other nodes have hostnames: peer2's
// is a prefix of peer3's ID, two share one.
type namedManagers struct{ fakeManagers }

func (n namedManagers) Managers(ctx context.Context) (*swarm.ManagerStatus, []swarm.Node, bool, error) {
	self, others, ok, err := n.fakeManagers.Managers(ctx)
	for i := range others {
		others[i].Description.Hostname = map[int]string{0: "peer3a", 1: "twin"}[i]
	}
	twin := others[1]
	twin.ID = "zzzzzzzzzzzzzzzzzzzzzzzzz"
	return self, append(others, twin), ok, err
}

// node inspect of another node resolves as Swarm's getNode: full ID, then
// hostname, then unique ID prefix; several matches are Swarm's ambiguity
// (400), none a 404.
func TestInspectOtherNodeByName(t *testing.T) {
	s := newNodeServer(t)
	s.Nodes = namedManagers{}
	for _, tc := range []struct {
		ref, want string
		code      int
		msg       string
	}{
		{"peer3a", "peer2aaaaaaaaaaaaaaaaaaaa", 200, ""},
		{"peer3aa", "peer3aaaaaaaaaaaaaaaaaaaa", 200, ""},
		{"twin", "", 400, "node twin is ambiguous (2 matches found)"},
		{"peer", "", 400, "node peer is ambiguous (2 matches found)"},
		{"nosuch", "", 404, "node nosuch not found"},
	} {
		rec := serve(s, "GET", "/v1.41/nodes/"+tc.ref, "")
		if rec.Code != tc.code {
			t.Errorf("%s: %d %s, want %d", tc.ref, rec.Code, rec.Body, tc.code)
			continue
		}
		var n struct{ ID, Message string }
		if err := json.Unmarshal(rec.Body.Bytes(), &n); err != nil || n.ID != tc.want || n.Message != tc.msg {
			t.Errorf("%s: %v %s", tc.ref, err, rec.Body)
		}
	}
}
