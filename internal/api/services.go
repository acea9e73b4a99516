package api

import (
	"context"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/api/types/swarm"
)

func (s *Server) serviceRoutes() {
	s.mux.HandleFunc("POST /services/create", s.serviceCreate)
	s.mux.HandleFunc("GET /services", s.serviceList)
	s.mux.HandleFunc("GET /services/{id}", s.serviceInspect)
	s.mux.HandleFunc("POST /services/{id}/update", s.serviceUpdate)
	s.mux.HandleFunc("DELETE /services/{id}", s.serviceRemove)
	s.mux.HandleFunc("GET /services/{id}/logs", s.serviceLogs)
	s.mux.HandleFunc("GET /tasks", s.taskList)
	s.mux.HandleFunc("GET /tasks/{id}", s.taskInspect)
	s.mux.HandleFunc("GET /tasks/{id}/logs", s.taskLogs)
	s.mux.HandleFunc("GET /nodes", s.nodeList)
	s.mux.HandleFunc("GET /nodes/{id}", s.nodeInspect)
	s.mux.HandleFunc("POST /nodes/{id}/update", s.nodeUpdate)
	s.mux.HandleFunc("DELETE /nodes/{id}", s.nodeRemove)
}

func (s *Server) serviceCreate(w http.ResponseWriter, r *http.Request) {
	var spec swarm.ServiceSpec
	if err := decodeBody(r, &spec); err != nil {
		s.writeError(w, r, err)
		return
	}
	auth := registryAuth(r)
	defer clear(auth)
	id, err := s.Services.CreateWith(r.Context(), spec, services.CreateOptions{RegistryAuth: auth})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// No warnings: the node pulls the image as Swarm's does (the CLI warns
	// by itself when it could not pin the image's digest).
	writeJSON(w, http.StatusCreated, swarm.ServiceCreateResponse{ID: id})
}

// registryAuth is the X-Registry-Auth header the CLI sends with
// `--with-registry-auth` (the registry credentials for the pulls of the
// service's image), as bytes the caller wipes.
func registryAuth(r *http.Request) []byte {
	v := r.Header.Get(registry.AuthHeader)
	if v == "" {
		return nil
	}
	return []byte(v)
}

func (s *Server) serviceList(w http.ResponseWriter, r *http.Request) {
	args, err := parseFilters(r.URL.Query().Get("filters"), "id", "name", "label", "mode")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	svcs, tasks, err := s.Services.Snapshot(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	withStatus, _ := strconv.ParseBool(r.URL.Query().Get("status"))
	out := make([]swarm.Service, 0, len(svcs))
	for _, svc := range svcs {
		if !matchAny(svc.ID, args.values("id"), strings.HasPrefix) ||
			!matchAny(svc.Spec.Name, args.values("name"), hasPrefixFold) ||
			!matchAny(services.ModeName(&svc.Spec), args.values("mode"), func(a, b string) bool { return a == b }) ||
			!services.MatchLabels(svc.Spec.Labels, args.values("label")) {
			continue
		}
		ws := svc.Service
		if withStatus {
			ws.ServiceStatus = serviceStatus(svc, tasks)
		}
		out = append(out, ws)
	}
	writeJSON(w, http.StatusOK, out)
}

func hasPrefixFold(s, p string) bool { return len(s) >= len(p) && strings.EqualFold(s[:len(p)], p) }

// matchAny reports whether v matches one of the wanted values (or there
// are none).
func matchAny(v string, wanted []string, match func(v, w string) bool) bool {
	if len(wanted) == 0 {
		return true
	}
	for _, w := range wanted {
		if match(v, w) {
			return true
		}
	}
	return false
}

// serviceStatus counts a service's tasks as Swarm does for ?status=true:
// running tasks; desired tasks (the replicas, a replicated job's
// MaxConcurrent, or per node the global tasks meant to run); and for a
// job, only tasks of its current iteration, and those completed.
func serviceStatus(svc *model.Service, tasks []*model.Task) *swarm.ServiceStatus {
	st := &swarm.ServiceStatus{}
	mode := &svc.Spec.Mode
	global := mode.Global != nil || mode.GlobalJob != nil
	switch {
	case mode.Replicated != nil && mode.Replicated.Replicas != nil:
		st.DesiredTasks = *mode.Replicated.Replicas
	case mode.ReplicatedJob != nil && mode.ReplicatedJob.MaxConcurrent != nil:
		st.DesiredTasks = *mode.ReplicatedJob.MaxConcurrent
	}
	job := svc.JobStatus
	for _, t := range tasks {
		if t.ServiceID != svc.ID {
			continue
		}
		if job != nil {
			if t.JobIteration == nil || t.JobIteration.Index != job.JobIteration.Index {
				continue
			}
			if t.Status.State == swarm.TaskStateComplete {
				st.CompletedTasks++
			}
		}
		if t.Status.State == swarm.TaskStateRunning {
			st.RunningTasks++
		}
		if global && t.DesiredState == swarm.TaskStateRunning {
			st.DesiredTasks++
		}
		if global && t.DesiredState == swarm.TaskStateComplete && t.Status.State != swarm.TaskStateComplete {
			st.DesiredTasks++
		}
	}
	return st
}

func (s *Server) serviceInspect(w http.ResponseWriter, r *http.Request) {
	svc, err := s.Services.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ws := svc.Service
	if ok, _ := strconv.ParseBool(r.URL.Query().Get("insertDefaults")); ok {
		insertDefaults(&ws.Spec)
	}
	writeJSON(w, http.StatusOK, ws)
}

// insertDefaults fills in what Swarm reports as defaults with
// insertDefaults=true, so `docker service inspect` and update match.
func insertDefaults(spec *swarm.ServiceSpec) {
	def := func() *swarm.UpdateConfig {
		return &swarm.UpdateConfig{Parallelism: 1, FailureAction: swarm.UpdateFailureActionPause, Monitor: 5 * time.Second, Order: swarm.UpdateOrderStopFirst}
	}
	if spec.UpdateConfig == nil {
		spec.UpdateConfig = def()
	}
	if spec.RollbackConfig == nil {
		spec.RollbackConfig = def()
	}
	tt := &spec.TaskTemplate
	if tt.RestartPolicy == nil {
		d := 5 * time.Second
		zero := uint64(0)
		tt.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny, Delay: &d, MaxAttempts: &zero}
	}
	if cs := tt.ContainerSpec; cs != nil && cs.StopGracePeriod == nil {
		g := 10 * time.Second
		cs.StopGracePeriod = &g
	}
	if spec.EndpointSpec == nil {
		spec.EndpointSpec = &swarm.EndpointSpec{Mode: swarm.ResolutionModeVIP}
	}
}

func (s *Server) serviceUpdate(w http.ResponseWriter, r *http.Request) {
	var spec swarm.ServiceSpec
	version, err := decodeUpdate(r, "service", &spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	auth := registryAuth(r)
	defer clear(auth)
	opt := services.UpdateOptions{
		Version: version, Rollback: r.URL.Query().Get("rollback") == "previous",
		RegistryAuth: auth, RegistryAuthFrom: swarm.RegistryAuthSource(r.URL.Query().Get("registryAuthFrom")),
	}
	if err := s.Services.Update(r.Context(), r.PathValue("id"), spec, opt); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, swarm.ServiceUpdateResponse{})
}

func (s *Server) serviceRemove(w http.ResponseWriter, r *http.Request) {
	if err := s.Services.Remove(r.Context(), r.PathValue("id")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) taskList(w http.ResponseWriter, r *http.Request) {
	args, err := parseFilters(r.URL.Query().Get("filters"), "id", "name", "service", "node", "label", "desired-state", "_up-to-date")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	svcs, tasks, err := s.Services.Snapshot(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// The service filter takes IDs or names, as dockerd resolves them.
	svcIDs := map[string]bool{}
	hashes := map[string]string{}
	// As Swarm: a task's label filter matches its service's labels
	// (`docker stack ps` lists tasks by the stack namespace label).
	svcLabels := map[string]map[string]string{}
	for _, svc := range svcs {
		hashes[svc.ID] = model.TemplateHash(&svc.Spec)
		svcLabels[svc.ID] = svc.Spec.Labels
		for _, want := range args.values("service") {
			if svc.ID == want || strings.EqualFold(svc.Spec.Name, want) || strings.HasPrefix(svc.ID, want) {
				svcIDs[svc.ID] = true
			}
		}
	}
	// The node filter names nodes as dockerd resolves them (getNode).
	var nodeIDs []string
	for _, ref := range args.values("node") {
		id, err := s.nodeRef(r.Context(), ref)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		nodeIDs = append(nodeIDs, id)
	}
	wantSvc := len(args.values("service")) > 0
	upToDate := len(args.values("_up-to-date")) > 0
	out := make([]swarm.Task, 0, len(tasks))
	for _, t := range tasks {
		if wantSvc && !svcIDs[t.ServiceID] {
			continue
		}
		if upToDate && t.TemplateHash != hashes[t.ServiceID] {
			continue
		}
		if !matchAny(t.ID, args.values("id"), strings.HasPrefix) ||
			!matchAny(t.Name(), args.values("name"), hasPrefixFold) ||
			!matchAny(t.NodeID, nodeIDs, func(v, w string) bool { return v == w }) ||
			!matchAny(string(t.DesiredState), args.values("desired-state"), func(v, w string) bool { return v == w || w == "accepted" && v == "running" }) ||
			!services.MatchLabels(svcLabels[t.ServiceID], args.values("label")) {
			continue
		}
		out = append(out, t.Task)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) taskInspect(w http.ResponseWriter, r *http.Request) {
	t, err := s.Services.GetTask(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, t.Task)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// node builds this node's object: the stored spec (labels, availability)
// and a live description.
func (s *Server) node(ctx context.Context) (swarm.Node, error) {
	stored, err := nodes.Get(ctx, s.Services.Store(), s.Node.ID)
	if err != nil {
		return swarm.Node{}, err
	}
	n := swarm.Node{ID: s.Node.ID, Spec: stored.Spec}
	n.Version.Index = stored.Version
	n.CreatedAt, n.UpdatedAt = stored.CreatedAt, stored.UpdatedAt
	n.Description.Hostname = hostname()
	n.Description.Platform = swarm.Platform{Architecture: runtime.GOARCH, OS: runtime.GOOS}
	n.Description.Engine.Labels = engineLabels(s.EngineLabels)
	n.Description.Resources.NanoCPUs = int64(runtime.NumCPU()) * 1e9
	n.Description.Engine.EngineVersion = s.Version
	if s.EngineVersion != "" {
		n.Description.Engine.EngineVersion = s.EngineVersion
	}
	n.Description.Resources.MemoryBytes = s.MemoryBytes
	n.Description.TLSInfo = s.nodeTLSInfo(ctx)
	n.Status = swarm.NodeStatus{State: swarm.NodeStateReady, Addr: s.Node.Addr}
	n.ManagerStatus = &swarm.ManagerStatus{Leader: true, Reachability: swarm.ReachabilityReachable, Addr: s.Node.Addr + ":2377"}
	return n, nil
}

// selfNode is this node's object as node ls and node inspect show it: on
// a manager of a cluster its manager status is the membership's (Leader
// only if it leads; the address others join at, which the CLI prints in
// `swarm join-token`), and others lists the other nodes (ok false: a lone
// node, whose status is node's).
func (s *Server) selfNode(ctx context.Context) (n swarm.Node, others []swarm.Node, err error) {
	if n, err = s.node(ctx); err != nil || s.Nodes == nil {
		return n, nil, err
	}
	self, others, ok, err := s.Nodes.Managers(ctx)
	if err != nil || !ok {
		return n, nil, err
	}
	if self.Addr == "" {
		self.Addr = n.ManagerStatus.Addr
	}
	n.ManagerStatus = self
	return n, others, nil
}

func (s *Server) nodeList(w http.ResponseWriter, r *http.Request) {
	f, err := parseNodeFilter(r.URL.Query().Get("filters"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	n, others, err := s.selfNode(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	all := append([]swarm.Node{n}, others...)
	out := []swarm.Node{}
	for i := range all {
		if f.Match(&all[i]) {
			out = append(out, all[i])
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) matchNode(ref string) bool {
	return ref != "" && (strings.HasPrefix(s.Node.ID, ref) || ref == hostname() || ref == "self")
}

// ClusterNodeEditor is what a manager of a cluster of several nodes adds
// to ClusterNodes: updating any node, roles included (ok false: a lone
// node, served here).
type ClusterNodeEditor interface {
	UpdateNode(ctx context.Context, id string, version uint64, spec swarm.NodeSpec) (ok bool, err error)
}

func (s *Server) nodeInspect(w http.ResponseWriter, r *http.Request) {
	if !s.matchNode(r.PathValue("id")) {
		if n, ok, err := s.otherNode(r.Context(), r.PathValue("id")); err != nil || ok {
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			writeJSON(w, http.StatusOK, n)
			return
		}
		s.writeError(w, r, errdefs.NotFound("node %s not found", r.PathValue("id")))
		return
	}
	n, _, err := s.selfNode(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, n)
}

func (s *Server) nodeUpdate(w http.ResponseWriter, r *http.Request) {
	ed, cl := s.Nodes.(ClusterNodeEditor)
	if !cl && !s.matchNode(r.PathValue("id")) {
		s.writeError(w, r, errdefs.NotFound("node %s not found", r.PathValue("id")))
		return
	}
	var spec swarm.NodeSpec
	version, err := decodeUpdate(r, "node", &spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if cl {
		id := r.PathValue("id")
		if s.matchNode(id) {
			id = s.Node.ID
		}
		ok, err := ed.UpdateNode(r.Context(), id, version, spec)
		switch {
		case err != nil:
			s.writeError(w, r, err)
			return
		case ok:
			w.WriteHeader(http.StatusOK)
			return
		case id != s.Node.ID:
			s.writeError(w, r, errdefs.NotFound("node %s not found", r.PathValue("id")))
			return
		}
	}
	if err := nodes.Update(r.Context(), s.Services.Store(), s.Node.ID, version, spec); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) nodeRemove(w http.ResponseWriter, r *http.Request) {
	force := false
	if v := r.URL.Query().Get("force"); v != "" {
		var err error
		if force, err = strconv.ParseBool(v); err != nil {
			s.writeError(w, r, errdefs.BadRequest("invalid value for force: %q", v))
			return
		}
	}
	if err := s.removeNode(r.Context(), r.PathValue("id"), force); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}
