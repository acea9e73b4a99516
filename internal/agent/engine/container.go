package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// Bind is a host file (a secret or config) mounted into the container. It is
// always mounted read-only with rprivate propagation.
type Bind struct {
	HostPath      string
	ContainerPath string
}

// Spec is everything needed to create one task's container. It mirrors
// Swarm's ContainerSpec after the agent resolved it for a task.
type Spec struct {
	// Name is the exact container name: "<service>.<slot>.<taskID>".
	Name string
	// Labels include com.docker.swarm.service.id, .service.name, .task.id,
	// .task.name, .node.id and hush's own.
	Labels map[string]string
	// Image must already be present in the engine (see Pull).
	Image string
	// Command replaces the image's entrypoint (and then the image's CMD is
	// not used); Args replace the image's CMD (or follow Command).
	Command, Args []string
	// Env is KEY=value pairs. It may hold secrets: never logged.
	Env []string
	// Dir is the working directory, User the user[:group], Hostname the
	// container's hostname; empty keeps the image's (or engine's) default.
	Dir, User, Hostname string
	TTY, OpenStdin      bool
	// StopSignal overrides the image's stop signal. The grace period is not
	// stored on the container (Swarm does not either): the caller passes it
	// to Stop.
	StopSignal string
	// Init runs an init process as PID 1; nil keeps the engine's default.
	Init *bool
	// Groups are supplementary groups (names or GIDs) of the container's
	// process.
	Groups []string
	// ReadOnly mounts the root filesystem read-only.
	ReadOnly bool
	// Healthcheck replaces the image's health check; nil keeps it.
	Healthcheck *container.HealthConfig
	// ExtraHosts are /etc/hosts entries in the engine's "name:IP" form.
	ExtraHosts []string
	// DNS, DNSSearch and DNSOptions go to the container's resolv.conf.
	DNS                   []netip.Addr
	DNSSearch, DNSOptions []string
	// SecurityOpt are engine security options (no-new-privileges=true,
	// seccomp=..., apparmor=unconfined, label=...).
	SecurityOpt []string
	// Sysctls are namespaced kernel parameters.
	Sysctls map[string]string
	// CapAdd and CapDrop change the default capability set.
	CapAdd, CapDrop []string
	// Isolation is the engine's isolation technology ("" or "default" on
	// Linux).
	Isolation container.Isolation
	// OomScoreAdj is the container's OOM killer preference.
	OomScoreAdj int
	// LogConfig selects the container's log driver; nil keeps the engine's
	// default driver.
	LogConfig *container.LogConfig
	// Binds are secret and config files, mounted read-only.
	Binds []Bind
	// Mounts are the service's other mounts (volumes, binds, tmpfs),
	// passed to the engine as they are.
	Mounts []mount.Mount
	// Networks are engine network IDs (names work, but an engine before API
	// 1.44 may hold two networks of one name). The container is created on
	// the first and connected to the others before Create returns. Empty
	// means the engine's default network.
	Networks []string
	// NetworkAliases are set on each network (not on the built-in bridge,
	// host or none networks, which do not support them), e.g. the service
	// name so that services reach each other by name.
	NetworkAliases []string
	// Resources are limits (cgroup limits, pids, ulimits); nil means none.
	// Swarm's reservations are for scheduling only and never set here.
	Resources *container.Resources
	// Ports are bound on the host (a service's published ports).
	Ports []Publish
}

// State is what the engine reports about a container.
type State struct {
	ID      string
	Name    string // without the leading "/"
	Running bool
	// ExitCode is the last exit code (0 while running or never started).
	ExitCode int
	// Status is created, running, paused, restarting, removing, exited or
	// dead.
	Status string
	Err    string
	Pid    int
	Labels map[string]string
	// Health is the health check's status: starting, healthy, unhealthy,
	// or "" for a container without a health check.
	Health     string
	StartedAt  time.Time // zero if never started
	FinishedAt time.Time // zero if never finished
}

// cleanupTimeout bounds the best-effort removal of a half-created container.
const cleanupTimeout = 15 * time.Second

// Create creates the container described by s, connects it to its networks
// and returns its ID. It does not start it. If a container named s.Name
// exists already and carries the same task label, Create returns its ID
// (connecting it to any of s.Networks it misses); if that container belongs
// to another task (or none), it fails with ErrConflict. A missing image is
// ErrImageNotFound: Create never pulls.
func (e *Engine) Create(ctx context.Context, s Spec) (string, error) {
	if s.Name == "" {
		return "", errors.New("engine: create: spec has no name")
	}
	if s.Image == "" {
		return "", fmt.Errorf("engine: create %s: spec has no image", s.Name)
	}
	for _, b := range s.Binds {
		if b.HostPath == "" || b.ContainerPath == "" {
			return "", fmt.Errorf("engine: create %s: bind with an empty path", s.Name)
		}
	}

	opts := client.ContainerCreateOptions{
		Name:       s.Name,
		Config:     containerConfig(s),
		HostConfig: hostConfig(s),
	}
	if len(s.Networks) > 0 {
		first := s.Networks[0]
		opts.NetworkingConfig = &network.NetworkingConfig{
			EndpointsConfig: map[string]*network.EndpointSettings{
				first: endpoint(first, s.NetworkAliases),
			},
		}
	}

	// Two rounds: a name conflict whose container vanishes before it can be
	// inspected (it was being removed) is retried once.
	for attempt := 0; ; attempt++ {
		res, err := e.cli.ContainerCreate(ctx, opts)
		if err == nil {
			for _, w := range res.Warnings {
				e.log.Warn("engine warning on create", "container", s.Name, "warning", w)
			}
			if err := e.connectNetworks(ctx, res.ID, s, nil); err != nil {
				e.removeQuietly(ctx, res.ID, s.Name)
				return "", err
			}
			e.log.Debug("container created", "container", s.Name, "id", res.ID, "image", s.Image)
			return res.ID, nil
		}
		switch {
		case cerrdefs.IsConflict(err):
			id, xerr := e.existing(ctx, s)
			if errors.Is(xerr, ErrNotFound) && attempt == 0 {
				continue
			}
			return id, xerr
		case cerrdefs.IsNotFound(err):
			if ok, herr := e.HasImage(ctx, s.Image); herr == nil && !ok {
				return "", fmt.Errorf("create %s: %w: %s", s.Name, ErrImageNotFound, s.Image)
			}
		}
		return "", wrap(err, "create %s", s.Name)
	}
}

// existing returns the ID of the container named s.Name if it belongs to the
// same task, after connecting it to networks it misses.
func (e *Engine) existing(ctx context.Context, s Spec) (string, error) {
	res, err := e.cli.ContainerInspect(ctx, s.Name, client.ContainerInspectOptions{})
	if err != nil {
		return "", wrap(err, "create %s: inspect existing container", s.Name)
	}
	c := res.Container
	if strings.TrimPrefix(c.Name, "/") != s.Name {
		return "", fmt.Errorf("create %s: %w: name resolves to container %s named %s", s.Name, ErrConflict, c.ID, c.Name)
	}
	var have map[string]string
	if c.Config != nil {
		have = c.Config.Labels
	}
	want, wok := s.Labels[LabelTaskID]
	got, gok := have[LabelTaskID]
	if !wok || !gok || want != got {
		return "", fmt.Errorf("create %s: %w: a container with this name exists for another task (%s=%q)", s.Name, ErrConflict, LabelTaskID, got)
	}
	attached := map[string]bool{}
	if c.NetworkSettings != nil {
		for name, ep := range c.NetworkSettings.Networks {
			attached[name] = true
			if ep != nil && ep.NetworkID != "" {
				attached[ep.NetworkID] = true
			}
		}
	}
	if c.HostConfig != nil && c.HostConfig.NetworkMode != "" {
		attached[string(c.HostConfig.NetworkMode)] = true
	}
	if err := e.connectNetworks(ctx, c.ID, s, attached); err != nil {
		return "", err
	}
	e.log.Debug("container exists already", "container", s.Name, "id", c.ID)
	return c.ID, nil
}

// connectNetworks connects the container to s.Networks[1:] (the first one is
// set at create), skipping those in attached.
func (e *Engine) connectNetworks(ctx context.Context, id string, s Spec, attached map[string]bool) error {
	for i, n := range s.Networks {
		if i == 0 || attached[n] {
			continue
		}
		_, err := e.cli.NetworkConnect(ctx, n, client.NetworkConnectOptions{
			Container:      id,
			EndpointConfig: endpoint(n, s.NetworkAliases),
		})
		if err != nil {
			return wrap(err, "create %s: connect to network %s", s.Name, n)
		}
	}
	return nil
}

func (e *Engine) removeQuietly(ctx context.Context, id, name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := e.Remove(ctx, id); err != nil {
		e.log.Warn("could not remove half-created container", "container", name, "id", id, "err", err)
	}
}

// builtinNetwork reports whether n is one of the engine's predefined network
// modes, on which aliases are not supported.
func builtinNetwork(n string) bool {
	switch n {
	case "bridge", "default", "host", "none":
		return true
	}
	return strings.HasPrefix(n, "container:")
}

func endpoint(n string, aliases []string) *network.EndpointSettings {
	ep := &network.EndpointSettings{}
	if !builtinNetwork(n) {
		// The engine resolves an endpoint by NetworkID when it is set, and
		// by the network's name otherwise, even when the caller gave an ID:
		// with two networks of one name (engines before API 1.44 allow
		// that) the name is ambiguous and the start fails.
		ep.NetworkID = n
		if len(aliases) > 0 {
			ep.Aliases = slices.Clone(aliases)
		}
	}
	return ep
}

func containerConfig(s Spec) *container.Config {
	cfg := &container.Config{
		Image:      s.Image,
		Hostname:   s.Hostname,
		User:       s.User,
		WorkingDir: s.Dir,
		Env:        slices.Clone(s.Env),
		Labels:     s.Labels,
		Tty:        s.TTY,
		OpenStdin:  s.OpenStdin,
		StopSignal: s.StopSignal,
	}
	if s.Healthcheck != nil {
		hc := *s.Healthcheck
		hc.Test = slices.Clone(hc.Test)
		cfg.Healthcheck = &hc
	}
	// As Swarm does: Command replaces the whole invocation (entrypoint plus
	// Args as its arguments); Args alone replace the image's CMD.
	if len(s.Command) > 0 {
		cfg.Entrypoint = slices.Clone(s.Command)
		cfg.Cmd = slices.Clone(s.Args)
	} else if len(s.Args) > 0 {
		cfg.Cmd = slices.Clone(s.Args)
	}
	for _, p := range s.Ports {
		if cfg.ExposedPorts == nil {
			cfg.ExposedPorts = network.PortSet{}
		}
		cfg.ExposedPorts[p.containerPort()] = struct{}{}
	}
	return cfg
}

// Publish is a port the container binds on the host: Published 0 lets the
// engine choose one.
type Publish struct {
	Target, Published uint16
	Protocol          string // "tcp" (default), "udp", "sctp"
}

func (p Publish) containerPort() network.Port {
	proto := network.IPProtocol(p.Protocol)
	if proto == "" {
		proto = network.TCP
	}
	port, _ := network.PortFrom(p.Target, proto)
	return port
}

func hostConfig(s Spec) *container.HostConfig {
	hc := &container.HostConfig{
		Init:           s.Init,
		GroupAdd:       slices.Clone(s.Groups),
		ReadonlyRootfs: s.ReadOnly,
		ExtraHosts:     slices.Clone(s.ExtraHosts),
		DNS:            slices.Clone(s.DNS),
		DNSSearch:      slices.Clone(s.DNSSearch),
		DNSOptions:     slices.Clone(s.DNSOptions),
		SecurityOpt:    slices.Clone(s.SecurityOpt),
		Sysctls:        maps.Clone(s.Sysctls),
		CapAdd:         slices.Clone(s.CapAdd),
		CapDrop:        slices.Clone(s.CapDrop),
		Isolation:      s.Isolation,
		OomScoreAdj:    s.OomScoreAdj,
	}
	if s.LogConfig != nil {
		hc.LogConfig = container.LogConfig{Type: s.LogConfig.Type, Config: maps.Clone(s.LogConfig.Config)}
	}
	if len(s.Networks) > 0 {
		hc.NetworkMode = container.NetworkMode(s.Networks[0])
	}
	if s.Resources != nil {
		hc.Resources = *s.Resources
	}
	for _, b := range s.Binds {
		hc.Mounts = append(hc.Mounts, mount.Mount{
			Type:        mount.TypeBind,
			Source:      b.HostPath,
			Target:      b.ContainerPath,
			ReadOnly:    true,
			BindOptions: &mount.BindOptions{Propagation: mount.PropagationRPrivate},
		})
	}
	hc.Mounts = append(hc.Mounts, s.Mounts...)
	// Swarm's executor always sends a port map, empty or not (docker
	// inspect shows {} rather than null).
	hc.PortBindings = network.PortMap{}
	for _, p := range s.Ports {
		b := network.PortBinding{}
		if p.Published != 0 {
			b.HostPort = strconv.Itoa(int(p.Published))
		}
		hc.PortBindings[p.containerPort()] = append(hc.PortBindings[p.containerPort()], b)
	}
	return hc
}

// graceSeconds rounds d up to whole seconds (the engine's unit), at least 0.
func graceSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	s := math.Ceil(d.Seconds())
	if s > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(s)
}

// Start starts the container. Starting a running container is not an
// error.
func (e *Engine) Start(ctx context.Context, id string) error {
	if _, err := e.cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return wrap(err, "start %s", id)
	}
	return nil
}

// Stop sends the container's stop signal, waits up to grace (rounded up to
// whole seconds; nil: the container's own stop timeout, or the engine's
// default) and then kills it. A container that is not running, or gone, is
// not an error.
func (e *Engine) Stop(ctx context.Context, id string, grace *time.Duration) error {
	var opts client.ContainerStopOptions
	if grace != nil {
		t := graceSeconds(*grace)
		opts.Timeout = &t
	}
	if _, err := e.cli.ContainerStop(ctx, id, opts); err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil
		}
		return wrap(err, "stop %s", id)
	}
	return nil
}

// Remove removes the container, killing it if it runs, and its anonymous
// volumes (as Swarm does; named volumes are kept). A container that is gone,
// or already being removed, is not an error.
func (e *Engine) Remove(ctx context.Context, id string) error {
	_, err := e.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	switch {
	case err == nil, cerrdefs.IsNotFound(err):
		return nil
	case cerrdefs.IsConflict(err) && strings.Contains(err.Error(), "already in progress"):
		return nil
	}
	return wrap(err, "remove %s", id)
}

// Inspect returns the container's state; an unknown id is ErrNotFound.
func (e *Engine) Inspect(ctx context.Context, id string) (State, error) {
	if id == "" {
		return State{}, fmt.Errorf("inspect: %w: empty container id", ErrNotFound)
	}
	res, err := e.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return State{}, wrap(err, "inspect %s", id)
	}
	return toState(res.Container), nil
}

func toState(c container.InspectResponse) State {
	st := State{ID: c.ID, Name: strings.TrimPrefix(c.Name, "/")}
	if c.Config != nil {
		st.Labels = c.Config.Labels
	}
	if s := c.State; s != nil {
		st.Running = s.Running
		st.ExitCode = s.ExitCode
		st.Status = string(s.Status)
		st.Err = s.Error
		st.Pid = s.Pid
		st.StartedAt = parseTime(s.StartedAt)
		st.FinishedAt = parseTime(s.FinishedAt)
		if s.Health != nil {
			st.Health = string(s.Health.Status)
		}
	}
	return st
}

// parseTime parses an engine timestamp; the engine reports "never" as
// 0001-01-01T00:00:00Z, which becomes the zero time.
func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() <= 1 {
		return time.Time{}
	}
	return t
}

// ListTasks returns the state of every container, running or not, labelled
// com.docker.swarm.task.id, sorted by name. Containers without that label
// are never listed.
func (e *Engine) ListTasks(ctx context.Context) ([]State, error) {
	res, err := e.cli.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", LabelTaskID),
	})
	if err != nil {
		return nil, wrap(err, "list task containers")
	}
	out := make([]State, 0, len(res.Items))
	for _, c := range res.Items {
		if _, ok := c.Labels[LabelTaskID]; !ok {
			continue // never touch unlabelled containers, whatever the filter did
		}
		st, err := e.Inspect(ctx, c.ID)
		if errors.Is(err, ErrNotFound) {
			continue // removed since it was listed
		}
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b State) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Logs returns the container's stdout and stderr as the engine sends them:
// multiplexed with stdcopy framing (see github.com/moby/moby/api/pkg/stdcopy),
// or raw for a container created with TTY. tail is "" or "all" for
// everything, else a number of lines; since is "" or a timestamp or
// duration as docker logs --since takes. The caller closes the reader;
// cancelling ctx also ends it.
func (e *Engine) Logs(ctx context.Context, id string, follow bool, tail string, timestamps bool, since string) (io.ReadCloser, error) {
	if tail != "" && tail != "all" {
		if _, err := strconv.Atoi(tail); err != nil {
			return nil, fmt.Errorf("logs %s: invalid tail %q", id, tail)
		}
	}
	rc, err := e.cli.ContainerLogs(ctx, id, client.ContainerLogsOptions{
		ShowStdout: true,
		ShowStderr: true,
		Follow:     follow,
		Tail:       tail,
		Timestamps: timestamps,
		Since:      since,
	})
	if err != nil {
		return nil, wrap(err, "logs %s", id)
	}
	return rc, nil
}
