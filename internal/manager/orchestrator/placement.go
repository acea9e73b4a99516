package orchestrator

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"strings"

	"github.com/hush-secrets/hush/internal/manager/constraint"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// schedNode is a node as placement sees it during one pass: what it offers
// and what the tasks already placed on it hold.
type schedNode struct {
	node  constraint.Node
	avail swarm.NodeAvailability
	// nanoCPUs and memoryBytes are what the node offers to reservations.
	nanoCPUs, memoryBytes int64
	// usedCPUs and usedMemory are reserved by its live tasks.
	usedCPUs, usedMemory int64
	// active counts its live tasks meant to run (Swarm's active tasks),
	// byService the same per service.
	active    int
	byService map[string]int
}

func (n *schedNode) nodeID() string {
	if n == nil {
		return ""
	}
	return n.node.ID
}

// Placement filters, in the order Swarm's scheduler applies them; a node is
// counted against the first one it fails.
const (
	filterReady = iota
	filterResources
	filterConstraints
	filterPlatform
	filterMaxReplicas
	numFilters
)

// explain words a filter's failures as Swarm's scheduler does.
func explain(f, nodes int) string {
	plural := func(one, many string) string {
		if nodes == 1 {
			return one
		}
		return fmt.Sprintf(many, nodes)
	}
	switch f {
	case filterReady:
		return plural("1 node not available for new tasks", "%d nodes not available for new tasks")
	case filterResources:
		return plural("insufficient resources on 1 node", "insufficient resources on %d nodes")
	case filterConstraints:
		return plural("scheduling constraints not satisfied on 1 node", "scheduling constraints not satisfied on %d nodes")
	case filterPlatform:
		return plural("unsupported platform on 1 node", "unsupported platform on %d nodes")
	default:
		return "max replicas per node limit exceed"
	}
}

// SetResources gives what this node offers to resource reservations
// (the engine's CPUs, in units of 1e-9 CPUs, and memory). Call before Run.
func (o *Orchestrator) SetResources(nanoCPUs, memoryBytes int64) {
	o.nanoCPUs, o.memoryBytes = nanoCPUs, memoryBytes
}

// localNodes is this manager's one node, as the node store and the engine
// describe it.
func (o *Orchestrator) localNodes(ctx context.Context) ([]*schedNode, error) {
	n := &schedNode{
		node: constraint.Node{ID: o.nodeID, Hostname: hostname(), Role: string(swarm.NodeRoleManager),
			OS: runtime.GOOS, Arch: runtime.GOARCH, EngineLabels: o.engineLabels},
		avail:    swarm.NodeAvailabilityActive,
		nanoCPUs: o.nanoCPUs, memoryBytes: o.memoryBytes,
	}
	if stored, err := nodes.Get(ctx, o.svcs.Store(), o.nodeID); err == nil {
		n.avail = stored.Spec.Availability
		n.node.Role = string(stored.Spec.Role)
		n.node.Labels = stored.Spec.Labels
	}
	return []*schedNode{n}, nil
}

// loadNodes reads the nodes for a pass and charges them with the tasks
// already placed.
func (o *Orchestrator) loadNodes(ctx context.Context, tasks []*model.Task) error {
	list := o.listNodes
	if list == nil {
		list = o.localNodes
	}
	o.down = map[string]bool{}
	ns, err := list(ctx)
	if err != nil {
		return err
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i].node.ID < ns[j].node.ID })
	o.nodes = ns
	o.byNode = map[string]*schedNode{}
	for _, n := range ns {
		n.usedCPUs, n.usedMemory, n.active, n.byService = 0, 0, 0, map[string]int{}
		o.byNode[n.node.ID] = n
	}
	o.parsed = map[string]parsedPlacement{}
	for _, t := range tasks {
		o.charge(t)
	}
	return nil
}

// charge counts a placed task against its node: its reservations while it
// is alive, and as active while it is also meant to run. A task still
// waiting for room on its node holds nothing yet.
func (o *Orchestrator) charge(t *model.Task) {
	n := o.byNode[t.NodeID]
	if n == nil || model.Terminal(t.Status.State) || model.Unscheduled(t) {
		return
	}
	cpus, mem := reservations(&t.Spec)
	n.usedCPUs += cpus
	n.usedMemory += mem
	if wanted(t) {
		n.active++
		n.byService[t.ServiceID]++
	}
}

func reservations(ts *swarm.TaskSpec) (nanoCPUs, memoryBytes int64) {
	if ts.Resources == nil || ts.Resources.Reservations == nil {
		return 0, 0
	}
	return ts.Resources.Reservations.NanoCPUs, ts.Resources.Reservations.MemoryBytes
}

// parsedPlacement is a service's placement, parsed once per pass.
type parsedPlacement struct {
	constraints []constraint.Constraint
	bad         bool // constraints that do not parse match no node
}

func (o *Orchestrator) placementOf(svc *model.Service) parsedPlacement {
	if p, ok := o.parsed[svc.ID]; ok {
		return p
	}
	var p parsedPlacement
	if pl := svc.Spec.TaskTemplate.Placement; pl != nil && len(pl.Constraints) > 0 {
		cs, err := constraint.Parse(pl.Constraints)
		p = parsedPlacement{constraints: cs, bad: err != nil}
	}
	if o.parsed != nil {
		o.parsed[svc.ID] = p
	}
	return p
}

// check returns the first filter that keeps svc's next task off n, or -1.
func (o *Orchestrator) check(svc *model.Service, n *schedNode) int {
	if n.avail != swarm.NodeAvailabilityActive {
		return filterReady
	}
	cpus, mem := reservations(&svc.Spec.TaskTemplate)
	if (cpus != 0 || mem != 0) && (cpus > n.nanoCPUs-n.usedCPUs || mem > n.memoryBytes-n.usedMemory) {
		return filterResources
	}
	if p := o.placementOf(svc); p.bad || !constraint.Match(p.constraints, n.node) {
		return filterConstraints
	}
	if pl := svc.Spec.TaskTemplate.Placement; pl != nil && !platformOK(pl.Platforms, n.node) {
		return filterPlatform
	}
	if pl := svc.Spec.TaskTemplate.Placement; pl != nil && pl.MaxReplicas > 0 && uint64(n.byService[svc.ID]) >= pl.MaxReplicas {
		return filterMaxReplicas
	}
	return -1
}

// platformOK reports whether a node's platform is one of those a task
// supports (Placement.Platforms, which the docker CLI fills from the
// image's manifest list): any when none are given, and an empty
// architecture or OS matches any, as in Swarm's platform filter.
func platformOK(platforms []swarm.Platform, n constraint.Node) bool {
	if len(platforms) == 0 || (n.OS == "" && n.Arch == "") {
		// A node that has not reported its platform (a worker) is not
		// kept off by it.
		return true
	}
	arch := normalArch(n.Arch)
	for _, p := range platforms {
		if (p.Architecture == "" || normalArch(p.Architecture) == arch) && (p.OS == "" || p.OS == n.OS) {
			return true
		}
	}
	return false
}

// normalArch names an architecture as Go does: engines report uname's
// x86_64 and aarch64, image indexes amd64 and arm64.
func normalArch(a string) string {
	switch a {
	case "x86_64":
		return "amd64"
	case "aarch64":
		return "arm64"
	}
	return a
}

// eligible reports whether svc may run on n at all (a global service's
// task per node): ready and matching the constraints. Resources and the
// per-node maximum only make its task wait.
func (o *Orchestrator) eligible(svc *model.Service, n *schedNode) bool {
	if n.avail != swarm.NodeAvailabilityActive {
		return false
	}
	p := o.placementOf(svc)
	return !p.bad && constraint.Match(p.constraints, n.node)
}

// mayStay reports whether a task of svc may keep running on node id: a
// drained node or one that no longer meets the constraints stops it
// (a paused node keeps its tasks, as in Swarm). An unknown node is left
// alone.
func (o *Orchestrator) mayStay(svc *model.Service, id string) bool {
	n := o.byNode[id]
	if n == nil {
		return true
	}
	if n.avail == swarm.NodeAvailabilityDrain {
		return false
	}
	p := o.placementOf(svc)
	return !p.bad && constraint.Match(p.constraints, n.node)
}

// explainAll says why no node takes svc's next task, as Swarm's
// scheduler words it: failures per filter, most first, "; "-joined.
func (o *Orchestrator) explainAll(svc *model.Service, ns []*schedNode) string {
	var counts [numFilters]int
	for _, n := range ns {
		if f := o.check(svc, n); f >= 0 {
			counts[f]++
		}
	}
	order := []int{filterReady, filterResources, filterConstraints, filterPlatform, filterMaxReplicas}
	sort.SliceStable(order, func(i, j int) bool { return counts[order[i]] > counts[order[j]] })
	var parts []string
	for _, f := range order {
		if counts[f] > 0 {
			parts = append(parts, explain(f, counts[f]))
		}
	}
	return strings.Join(parts, "; ")
}

// pick chooses the node for svc's next task, or says why there is none
// ("no suitable node (...)"). Among the nodes that pass every filter, the
// spread preferences choose the branch (label value) holding the fewest
// of the service's tasks, level by level; then the node with the fewest
// tasks of the service, then the fewest tasks in all, as in Swarm.
func (o *Orchestrator) pick(svc *model.Service) (*schedNode, string) {
	var fit []*schedNode
	for _, n := range o.nodes {
		if o.check(svc, n) < 0 {
			fit = append(fit, n)
		}
	}
	if len(fit) == 0 {
		why := o.explainAll(svc, o.nodes)
		if why == "" {
			return nil, "no suitable node"
		}
		return nil, "no suitable node (" + why + ")"
	}
	all := o.nodes
	if pl := svc.Spec.TaskTemplate.Placement; pl != nil {
		for _, pref := range pl.Preferences {
			if pref.Spread == nil {
				continue
			}
			fit, all = spread(svc.ID, pref.Spread.SpreadDescriptor, fit, all)
		}
	}
	best := fit[0]
	for _, n := range fit[1:] {
		if less(svc.ID, n, best) {
			best = n
		}
	}
	return best, ""
}

// less orders candidate nodes: fewer tasks of the service, then fewer tasks.
func less(svcID string, a, b *schedNode) bool {
	if a.byService[svcID] != b.byService[svcID] {
		return a.byService[svcID] < b.byService[svcID]
	}
	return a.active < b.active
}

// spread narrows the candidates to the branch of one spread level that
// holds the fewest of the service's tasks. Branch counts include nodes
// that cannot take the task (as Swarm's decision tree counts them); a
// node without the label belongs to the "" branch. Ties go to the lowest
// value, so the choice is deterministic.
func spread(svcID, descriptor string, fit, all []*schedNode) (fitOut, allOut []*schedNode) {
	tasks := map[string]int{}
	for _, n := range all {
		tasks[labelValue(descriptor, n.node)] += n.byService[svcID]
	}
	var best string
	found := false
	for _, n := range fit {
		v := labelValue(descriptor, n.node)
		if !found || tasks[v] < tasks[best] || tasks[v] == tasks[best] && v < best {
			best, found = v, true
		}
	}
	for _, n := range fit {
		if labelValue(descriptor, n.node) == best {
			fitOut = append(fitOut, n)
		}
	}
	for _, n := range all {
		if labelValue(descriptor, n.node) == best {
			allOut = append(allOut, n)
		}
	}
	return fitOut, allOut
}

// labelValue is the value a spread descriptor reads on a node (prefix
// case-insensitive, label name exact, as in Swarm).
func labelValue(descriptor string, n constraint.Node) string {
	const nodeP, engineP = "node.labels.", "engine.labels."
	switch {
	case len(descriptor) > len(nodeP) && strings.EqualFold(descriptor[:len(nodeP)], nodeP):
		return n.Labels[descriptor[len(nodeP):]]
	case len(descriptor) > len(engineP) && strings.EqualFold(descriptor[:len(engineP)], engineP):
		return n.EngineLabels[descriptor[len(engineP):]]
	}
	return ""
}
