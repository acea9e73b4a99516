package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/manager/networks"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// Manager implements the services control API and task reads.
type Manager struct {
	st      *store.Store
	svcs    *store.Table
	tasks   *store.Table
	secrets *store.Table
	configs *store.Table
	mirror  *store.Mirror
	// nets resolves and guards network attachments; nil refuses them.
	nets *networks.Manager
	// seal keeps registry credentials; nil refuses them.
	seal Sealer
	log  *slog.Logger
	now  func() time.Time
	// afterRemoveRead, when set (tests only), runs between Remove's read
	// and its delete: the window a racing update must land in.
	afterRemoveRead func(attempt int)
}

// New returns a services manager. mir must be running (or about to run)
// with Register called by this constructor before it starts.
func New(st *store.Store, mir *store.Mirror, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		st: st, svcs: st.Table(model.ServicesTable), tasks: st.Table(model.TasksTable),
		secrets: st.Table("secrets"), configs: st.Table("configs"),
		mirror: mir, log: log, now: func() time.Time { return time.Now().UTC() },
	}
	mir.Register(model.ServicesTable, func(o store.Object) (any, error) { return m.decodeLoaded(o) })
	mir.Register(model.TasksTable, func(o store.Object) (any, error) { return decodeTask(o) })
	return m
}

// UseNetworks lets service specs attach to the networks n manages.
func (m *Manager) UseNetworks(n *networks.Manager) { m.nets = n }

// netRefs resolves the spec's network attachments to network IDs in place
// and returns the guards that fail the write if one of them is removed.
func (m *Manager) netRefs(ctx context.Context, s *swarm.ServiceSpec) ([]store.Cond, error) {
	if len(s.TaskTemplate.Networks) == 0 {
		return nil, nil
	}
	if m.nets == nil {
		return nil, errdefs.InvalidArgument("networks are not supported by this hushd")
	}
	return m.nets.ResolveAttachments(ctx, s)
}

func decodeService(o store.Object) (*model.Service, error) {
	s, err := model.Decode[model.Service](o.Value)
	if err != nil {
		return nil, err
	}
	s.Version.Index = uint64(o.ModRev)
	return s, nil
}

func decodeTask(o store.Object) (*model.Task, error) {
	t, err := model.Decode[model.Task](o.Value)
	if err != nil {
		return nil, err
	}
	t.Version.Index = uint64(o.ModRev)
	t.CreateIndex = o.CreateRev
	return t, nil
}

// refs resolves the spec's secret and config references to existing
// objects, filling in IDs given only by name, and returns the guards that
// make the write fail if any of them disappears meanwhile.
func (m *Manager) refs(ctx context.Context, s *swarm.ServiceSpec) ([]store.Cond, error) {
	var guards []store.Cond
	var missingS, missingC []string
	cs := s.TaskTemplate.ContainerSpec
	for _, r := range cs.Secrets {
		id, name, ok, err := m.lookupRef(ctx, m.secrets, r.SecretID, r.SecretName)
		if err != nil {
			return nil, err
		}
		if !ok {
			missingS = append(missingS, firstNonEmpty(r.SecretName, r.SecretID))
			continue
		}
		r.SecretID, r.SecretName = id, name
		guards = append(guards, store.Exists(m.secrets.Key(id)))
	}
	for _, r := range cs.Configs {
		id, name, ok, err := m.lookupRef(ctx, m.configs, r.ConfigID, r.ConfigName)
		if err != nil {
			return nil, err
		}
		if !ok {
			missingC = append(missingC, firstNonEmpty(r.ConfigName, r.ConfigID))
			continue
		}
		r.ConfigID, r.ConfigName = id, name
		guards = append(guards, store.Exists(m.configs.Key(id)))
	}
	if len(missingS) > 0 {
		return nil, notFoundList("secret", missingS)
	}
	if len(missingC) > 0 {
		return nil, notFoundList("config", missingC)
	}
	return guards, nil
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// lookupRef finds a referenced object by ID, or by name when no ID is given.
func (m *Manager) lookupRef(ctx context.Context, tbl *store.Table, id, name string) (string, string, bool, error) {
	if id == "" {
		var err error
		id, err = tbl.LookupName(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return "", "", false, nil
		}
		if err != nil {
			return "", "", false, err
		}
	}
	o, err := tbl.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, err
	}
	var rec struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(o.Value, &rec); err != nil {
		return "", "", false, fmt.Errorf("decode reference: %w: %w", errdefs.ErrInternal, err)
	}
	return id, rec.Name, true, nil
}

// refOps writes one in-use marker per distinct referenced object; the
// marker's value is the service name, which the remove error quotes.
func refOps(serviceID, serviceName string, s *swarm.ServiceSpec) []store.Op {
	var ops []store.Op
	seen := map[string]bool{}
	for _, r := range s.TaskTemplate.ContainerSpec.Secrets {
		k := store.RefKey("secrets", r.SecretID, serviceID)
		if !seen[k] {
			seen[k] = true
			ops = append(ops, store.PutOp(k, serviceName))
		}
	}
	for _, r := range s.TaskTemplate.ContainerSpec.Configs {
		k := store.RefKey("configs", r.ConfigID, serviceID)
		if !seen[k] {
			seen[k] = true
			ops = append(ops, store.PutOp(k, serviceName))
		}
	}
	return ops
}

func dropRefOps(serviceID string, s *swarm.ServiceSpec) []store.Op {
	var ops []store.Op
	if s == nil || s.TaskTemplate.ContainerSpec == nil {
		return nil
	}
	for _, r := range s.TaskTemplate.ContainerSpec.Secrets {
		ops = append(ops, store.DeleteOp(store.RefKey("secrets", r.SecretID, serviceID)))
	}
	for _, r := range s.TaskTemplate.ContainerSpec.Configs {
		ops = append(ops, store.DeleteOp(store.RefKey("configs", r.ConfigID, serviceID)))
	}
	return ops
}

// refDiffOps moves the in-use markers from old's references to new's; a
// key may appear only once in an etcd transaction.
func refDiffOps(serviceID, serviceName string, old, new *swarm.ServiceSpec) []store.Op {
	keep := map[string]bool{}
	ops := refOps(serviceID, serviceName, new)
	for _, op := range ops {
		keep[op.Key()] = true
	}
	for _, op := range dropRefOps(serviceID, old) {
		k := op.Key()
		if !keep[k] {
			keep[k] = true
			ops = append(ops, op)
		}
	}
	return ops
}

// Create validates and stores a new service; the orchestrator makes its
// tasks.
func (m *Manager) Create(ctx context.Context, spec swarm.ServiceSpec) (string, error) {
	return m.CreateWith(ctx, spec, CreateOptions{})
}

// CreateWith is Create with the registry credentials the client sent.
func (m *Manager) CreateWith(ctx context.Context, spec swarm.ServiceSpec, opt CreateOptions) (string, error) {
	if err := validateSpec(&spec); err != nil {
		return "", err
	}
	if len(opt.RegistryAuth) > 0 {
		if err := checkRegistryAuth(opt.RegistryAuth); err != nil {
			return "", err
		}
	}
	guards, err := m.refs(ctx, &spec)
	if err != nil {
		return "", err
	}
	netGuards, err := m.netRefs(ctx, &spec)
	if err != nil {
		return "", err
	}
	guards = append(guards, netGuards...)
	id, err := identity.NewID()
	if err != nil {
		return "", err
	}
	now := m.now()
	svc := model.Service{SpecVersion: 1}
	svc.ID = id
	svc.CreatedAt, svc.UpdatedAt = now, now
	svc.Spec = spec
	svc.Endpoint = endpoint(&spec)
	if svc.PullAuth, err = m.sealAuth(id, opt.RegistryAuth); err != nil {
		return "", err
	}
	if IsJob(&spec) {
		svc.JobStatus = &swarm.JobStatus{LastExecution: now}
	}
	val, err := json.Marshal(&svc)
	if err != nil {
		return "", err
	}
	ops := append(refOps(id, spec.Name, &spec), networks.RefOps(id, &spec)...)
	_, err = m.svcs.CreateGuarded(ctx, id, spec.Name, val, guards, ops...)
	switch {
	case errors.Is(err, store.ErrNameTaken):
		return "", errdefs.AlreadyExists("name conflicts with an existing object: service %s already exists", spec.Name)
	case errors.Is(err, store.ErrGuard):
		return "", errdefs.InvalidArgument("a referenced secret, config or network was removed while the service was being created; try again")
	case err != nil:
		return "", err
	}
	m.log.Info("service created", "id", id, "name", spec.Name)
	return id, nil
}

// endpoint is the service's endpoint as clients see it: its spec and the
// ports its tasks publish on the host.
func endpoint(s *swarm.ServiceSpec) swarm.Endpoint {
	if s.EndpointSpec == nil {
		return swarm.Endpoint{}
	}
	return swarm.Endpoint{Spec: *s.EndpointSpec, Ports: s.EndpointSpec.Ports}
}

// Store is the store the manager writes to (for the node objects, which
// share the services API's routes).
func (m *Manager) Store() *store.Store { return m.st }

// Get resolves ref (ID, name, or unique ID prefix) to a service.
func (m *Manager) Get(ctx context.Context, ref string) (*model.Service, error) {
	o, err := m.svcs.Resolve(ctx, "service", ref)
	if err != nil {
		return nil, err
	}
	return decodeService(o)
}

// UpdateOptions are the query parameters of a service update.
type UpdateOptions struct {
	Version  uint64
	Rollback bool
	// RegistryAuth is the X-Registry-Auth header's value, if sent (the
	// caller wipes it); RegistryAuthFrom says whose credentials to keep
	// when it is not: "spec" (the default) or "previous-spec".
	RegistryAuth     []byte
	RegistryAuthFrom swarm.RegistryAuthSource
	// Guards are the writer's own preconditions (the orchestrator's
	// leadership, for the rollback its failure action starts): when one
	// fails the update returns store.ErrGuard, not a client's error.
	Guards []store.Cond
}

// Update replaces the spec of the service ref names. With Rollback, the
// previous spec is restored and the given spec ignored, as dockerd does.
func (m *Manager) Update(ctx context.Context, ref string, spec swarm.ServiceSpec, opt UpdateOptions) error {
	cur, err := m.Get(ctx, ref)
	if err != nil {
		return err
	}
	next := *cur
	if opt.Rollback {
		if cur.PreviousSpec == nil {
			return errdefs.InvalidArgument("service %s does not have a previous spec", cur.ID)
		}
		spec = *cur.PreviousSpec
	}
	if spec.Name != cur.Spec.Name {
		return errdefs.InvalidArgument("renaming services is not supported")
	}
	if err := validateSpec(&spec); err != nil {
		return err
	}
	auth, err := m.nextAuth(cur, opt)
	if err != nil {
		return err
	}
	if err := checkModeChange(&cur.Spec, &spec); err != nil {
		return err
	}
	guards, err := m.refs(ctx, &spec)
	if err != nil {
		return err
	}
	netGuards, err := m.netRefs(ctx, &spec)
	if err != nil {
		return err
	}
	guards = append(guards, netGuards...)
	guards = append(guards, opt.Guards...)
	prev := cur.Spec
	next.PreviousSpec = &prev
	next.PreviousSpecVersion = cur.SpecVersion
	next.PullAuth, next.PreviousPullAuth = auth, cur.PullAuth
	next.Spec = spec
	next.SpecVersion = cur.SpecVersion + 1
	next.UpdatedAt = m.now()
	next.Endpoint = endpoint(&spec)
	// As in Swarm, a rollout status describes only a change of the task
	// template: scaling or relabelling starts no update, and clears the
	// status of an earlier one.
	startedAt := next.UpdatedAt
	switch {
	case opt.Rollback:
		next.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateRollbackStarted, StartedAt: &startedAt, Message: "manually requested rollback"}
	case model.TemplateHash(&spec) != model.TemplateHash(&cur.Spec):
		next.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateUpdating, StartedAt: &startedAt, Message: "update in progress"}
	default:
		next.UpdateStatus = nil
	}
	if IsJob(&spec) {
		// A job has no rollout: the update runs it again.
		next.UpdateStatus = nil
		next.JobStatus = nextJobStatus(cur.JobStatus, next.UpdatedAt)
	}
	val, err := json.Marshal(&next)
	if err != nil {
		return err
	}
	ops := append(refDiffOps(cur.ID, spec.Name, &cur.Spec, &spec), networks.RefDiffOps(cur.ID, &cur.Spec, &spec)...)
	_, err = m.svcs.UpdateGuarded(ctx, cur.ID, int64(opt.Version), val, guards, ops...)
	switch {
	case errors.Is(err, store.ErrGuard) && len(opt.Guards) > 0 && !m.holds(ctx, opt.Guards):
		return fmt.Errorf("service %s: %w", cur.ID, store.ErrGuard)
	case errors.Is(err, store.ErrGuard) || errors.Is(err, store.ErrStale):
		// Either the version is stale or a referenced object vanished; the
		// version is by far the common case, and both mean "read again".
		if latest, gerr := m.svcs.Get(ctx, cur.ID); gerr == nil && uint64(latest.ModRev) != opt.Version {
			return errdefs.OutOfSequence()
		}
		return errdefs.InvalidArgument("a referenced secret, config or network was removed during the update; try again")
	case errors.Is(err, store.ErrNotFound):
		return errdefs.NotFound("service %s not found", ref)
	case err != nil:
		return err
	}
	m.log.Info("service updated", "id", cur.ID, "name", spec.Name, "rollback", opt.Rollback)
	return nil
}

// holds reports whether the caller's own guards still hold; unsure (the
// store did not answer) counts as held, so the usual error is returned.
func (m *Manager) holds(ctx context.Context, guards []store.Cond) bool {
	ok, err := m.st.Holds(ctx, guards...)
	return err != nil || ok
}

// SetUpdateStatus records rollout progress (written by the orchestrator,
// under its leadership's guards). It fails with store.ErrStale or, when
// guarded, store.ErrGuard (a stale version or a failed guard: see
// store.Leadership.Explain) and changes nothing then.
func (m *Manager) SetUpdateStatus(ctx context.Context, svc *model.Service, st *swarm.UpdateStatus, guards ...store.Cond) error {
	next := *svc
	next.UpdateStatus = st
	val, err := json.Marshal(&next)
	if err != nil {
		return err
	}
	_, err = m.svcs.UpdateGuarded(ctx, svc.ID, int64(svc.Version.Index), val, guards)
	return err
}

// Remove deletes the service ref names and its in-use markers; the
// orchestrator then shuts its tasks down.
func (m *Manager) Remove(ctx context.Context, ref string) error {
	// The markers to drop come from the spec read, so the delete must be of
	// that very revision: an update in between may have added a reference
	// whose marker would otherwise outlive the service. Retry on a race.
	for attempt := 0; ; attempt++ {
		cur, err := m.Get(ctx, ref)
		if err != nil {
			return err
		}
		if m.afterRemoveRead != nil {
			m.afterRemoveRead(attempt)
		}
		ops := append(dropRefOps(cur.ID, &cur.Spec), networks.DropRefOps(cur.ID, &cur.Spec)...)
		err = m.svcs.Delete(ctx, cur.ID, cur.Spec.Name, int64(cur.Version.Index), nil, ops...)
		switch {
		case errors.Is(err, store.ErrStale) && attempt < 10:
			continue
		case errors.Is(err, store.ErrNotFound):
			return errdefs.NotFound("service %s not found", ref)
		case err == nil:
			m.log.Info("service removed", "id", cur.ID, "name", cur.Spec.Name)
		}
		return err
	}
}

// Snapshot returns all services and tasks, consistently (linearizable).
func (m *Manager) Snapshot(ctx context.Context) ([]*model.Service, []*model.Task, error) {
	var svcs []*model.Service
	var tasks []*model.Task
	err := m.mirror.Read(ctx, model.ServicesTable, func(items map[string]store.Entry) {
		for _, e := range items {
			svcs = append(svcs, e.Value.(*model.Service))
		}
	})
	if err != nil {
		return nil, nil, err
	}
	err = m.mirror.Read(ctx, model.TasksTable, func(items map[string]store.Entry) {
		for _, e := range items {
			tasks = append(tasks, e.Value.(*model.Task))
		}
	})
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].ID < svcs[j].ID })
	sort.Slice(tasks, func(i, j int) bool { return tasks[i].ID < tasks[j].ID })
	return svcs, tasks, err
}

// GetTask resolves a task by ID or unique ID prefix.
func (m *Manager) GetTask(ctx context.Context, ref string) (*model.Task, error) {
	o, err := m.tasks.Resolve(ctx, "task", ref)
	if err != nil {
		return nil, err
	}
	return decodeTask(o)
}

// ModeName is the mode as the mode filter names it: "replicated",
// "global", "replicated-job" or "global-job".
func ModeName(s *swarm.ServiceSpec) string {
	switch {
	case s.Mode.Global != nil:
		return "global"
	case s.Mode.ReplicatedJob != nil:
		return "replicated-job"
	case s.Mode.GlobalJob != nil:
		return "global-job"
	}
	return "replicated"
}

// MatchLabels reports whether labels satisfy "k" / "k=v" filters.
func MatchLabels(labels map[string]string, filters []string) bool {
	for _, f := range filters {
		k, v, hasV := strings.Cut(f, "=")
		got, ok := labels[k]
		if !ok || hasV && got != v {
			return false
		}
	}
	return true
}
