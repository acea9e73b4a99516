package nodes

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

func testNode() *swarm.Node {
	n := &swarm.Node{ID: "hldv7awwf7nu8ad508zi92dz2"}
	n.Spec.Role = swarm.NodeRoleManager
	n.Spec.Labels = map[string]string{"zone": "a", "tier": ""}
	n.Description.Hostname = "vm"
	n.Description.Engine.Labels = map[string]string{"storage": "ssd"}
	return n
}

func TestFilterMatch(t *testing.T) {
	tests := []struct {
		filters map[string][]string
		want    bool
	}{
		{nil, true},
		{map[string][]string{"role": {"manager"}}, true},
		{map[string][]string{"role": {"Manager"}}, true}, // Swarm upper-cases
		{map[string][]string{"role": {"worker"}}, false},
		{map[string][]string{"role": {"worker", "manager"}}, true},
		{map[string][]string{"membership": {"accepted"}}, true},
		{map[string][]string{"membership": {"pending"}}, false},
		{map[string][]string{"id": {"hldv"}}, true},
		{map[string][]string{"id": {"HLDV"}}, false},
		{map[string][]string{"id": {""}}, true},
		{map[string][]string{"id": {"xyz", "hl"}}, true},
		{map[string][]string{"name": {"v"}}, true},
		{map[string][]string{"name": {"VM"}}, false},
		{map[string][]string{"name": {"vmx"}}, false},
		// label: the engine's labels; node.label: the spec's.
		{map[string][]string{"label": {"storage"}}, true},
		{map[string][]string{"label": {"storage=ssd"}}, true},
		{map[string][]string{"label": {"storage=hdd"}}, false},
		{map[string][]string{"label": {"zone"}}, false},
		{map[string][]string{"node.label": {"zone"}}, true},
		{map[string][]string{"node.label": {"zone=a"}}, true},
		{map[string][]string{"node.label": {"zone="}}, true}, // empty value: any
		{map[string][]string{"node.label": {"zone=b"}}, false},
		{map[string][]string{"node.label": {"zone=a=b"}}, false},
		{map[string][]string{"node.label": {"storage"}}, false},
		{map[string][]string{"node.label": {"zone=a", "tier"}}, true},
		{map[string][]string{"node.label": {"zone=a", "nope"}}, false},
		{map[string][]string{"role": {"manager"}, "name": {"x"}}, false},
	}
	for _, tt := range tests {
		f, err := ParseFilter(func(k string) []string { return tt.filters[k] })
		if err != nil {
			t.Fatalf("%v: %v", tt.filters, err)
		}
		if got := f.Match(testNode()); got != tt.want {
			t.Errorf("%v: match %v, want %v", tt.filters, got, tt.want)
		}
	}
}

func TestParseFilterRefusals(t *testing.T) {
	tests := []struct {
		key, value, want string
	}{
		{"role", "bogus", "Invalid role filter: 'bogus'"},
		{"role", "", "Invalid role filter: ''"},
		{"membership", "bogus", "Invalid membership filter: 'bogus'"},
	}
	for _, tt := range tests {
		_, err := ParseFilter(func(k string) []string {
			if k == tt.key {
				return []string{tt.value}
			}
			return nil
		})
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s=%s: %v, want %q", tt.key, tt.value, err, tt.want)
		}
	}
	if !strings.Contains(strings.Join(FilterKeys, ","), "node.label") {
		t.Fatal("node.label must be an accepted key")
	}
}

func TestUpdateBoundsLabels(t *testing.T) {
	ctx := t.Context()
	st := storetest.New(t)
	n, err := Ensure(ctx, st, "n1")
	if err != nil {
		t.Fatal(err)
	}
	spec := n.Spec
	spec.Labels = map[string]string{}
	for i := range MaxLabels + 1 {
		spec.Labels[strconv.Itoa(i)] = ""
	}
	err = Update(ctx, st, "n1", n.Version, spec)
	if !errdefs.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "1025 entries exceed hush's limit of 1024") {
		t.Fatalf("too many labels: %v", err)
	}
	if after, err := Get(ctx, st, "n1"); err != nil || after.Version != n.Version {
		t.Fatalf("node changed: %v", err)
	}
	// A stale version is Swarm's out-of-sequence, a conflict.
	spec.Labels = map[string]string{"zone": "a"}
	if err := Update(ctx, st, "n1", n.Version, spec); err != nil {
		t.Fatal(err)
	}
	if err := Update(ctx, st, "n1", n.Version, spec); !errdefs.Is(err, errdefs.ErrOutOfSequence) || !errdefs.Is(err, errdefs.ErrConflict) {
		t.Fatalf("stale update: %v", err)
	}
}

// Two demotions checked at once against the same manager records (each
// saw the other node still a manager) cannot both be recorded: the second
// write's guard on the first node's record fails, and nothing changes.
func TestUpdateRoleGuardsOtherManagers(t *testing.T) {
	ctx := t.Context()
	st := storetest.New(t)
	var read []Node
	for _, id := range []string{"a", "b"} {
		n, err := Record(ctx, st, Node{ID: id, Spec: swarm.NodeSpec{Role: swarm.NodeRoleManager}})
		if err != nil {
			t.Fatal(err)
		}
		read = append(read, n)
	}
	demote := func(i int) error {
		spec := read[i].Spec
		spec.Role = swarm.NodeRoleWorker
		return UpdateRole(ctx, st, read[i].ID, read[i].Version, spec, []Node{read[1-i]})
	}
	if err := demote(0); err != nil {
		t.Fatalf("first demotion: %v", err)
	}
	if err := demote(1); !errors.Is(err, store.ErrGuard) {
		t.Fatalf("second demotion against a stale view: %v, want the guard's refusal", err)
	}
	if b, err := Get(ctx, st, "b"); err != nil || b.Spec.Role != swarm.NodeRoleManager || b.Version != read[1].Version {
		t.Fatalf("the refused demotion changed the record: %+v %v", b, err)
	}
}
