package dispatchnet

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/manager/dispatcher"
	"github.com/hush-secrets/hush/internal/manager/dispatcher/dispatchertest"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
)

// describedNets describes every attachment as a network of that ID with
// one subnet, as the networks manager does.
type describedNets struct{}

func (describedNets) TaskNetworks(_ context.Context, cfg []swarm.NetworkAttachmentConfig, svc string) ([]model.TaskNetwork, []string, error) {
	var out []model.TaskNetwork
	for _, a := range cfg {
		out = append(out, model.TaskNetwork{ID: a.Target, Name: "app_" + a.Target, Labels: map[string]string{"l": "v"}, Internal: true,
			IPAM: []network.IPAMConfig{{Subnet: netip.MustParsePrefix("10.66.0.0/24")}}})
	}
	return out, []string{svc, "tasks." + svc}, nil
}

// TestAttachmentsDescribeNetworks: a worker gets its task's networks as
// descriptions to realise on its own engine (name, labels, subnet), never
// a manager's engine network ID, which means nothing on the worker's host.
func TestAttachmentsDescribeNetworks(t *testing.T) {
	c := newCluster(t)
	f := &fixture{store: dispatchertest.NewMemStore()}
	f.disp = dispatcher.New(dispatcher.Config{Tasks: f.store, Changes: f.store, Table: f.store, Secrets: &f.data, Configs: &f.data, Networks: describedNets{}})
	w := c.issue(t, pki.RoleWorker)
	tk := task("t1", w.id, swarm.TaskStateAssigned)
	tk.Spec.Networks = []swarm.NetworkAttachmentConfig{{Target: "front"}}
	f.store.Put(t, tk)
	m := serve(t, c, f, nil)
	s := open(t, connector(t, c, w, []string{m.addr}, nil))
	next(t, s)
	nets, aliases, err := s.Attachments(context.Background(), "t1")
	if err != nil {
		t.Fatal(err)
	}
	if len(nets) != 1 || nets[0].ID != "front" || nets[0].Name != "app_front" || nets[0].Labels["l"] != "v" || !nets[0].Internal ||
		len(nets[0].IPAM) != 1 || nets[0].IPAM[0].Subnet.String() != "10.66.0.0/24" {
		t.Fatalf("networks over the wire: %+v", nets)
	}
	if !slices.Equal(aliases, []string{"svc", "tasks.svc"}) {
		t.Fatalf("aliases: %v", aliases)
	}
	// A node of the former shape (v1: engine network IDs) is refused,
	// never answered with networks it would not read.
	code, we := rawPost(t, s, pathAttachmentsV1, map[string]string{SessionHeader: s.id}, taskRequest{TaskID: "t1"})
	if code < 400 || !strings.Contains(we.Msg, "upgrade this node") {
		t.Fatalf("v1 attachments: %d %+v", code, we)
	}
}
