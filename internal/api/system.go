package api

import (
	"context"
	"net"
	"net/http"
	"os"
	"runtime"

	"github.com/hush-secrets/hush/internal/errdefs"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
)

func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	v := s.APIVersion
	if v == "" {
		v = MaxAPIVersion
	}
	h.Set("API-Version", v)
	h.Set("OSType", runtime.GOOS)
	h.Set("Docker-Experimental", "false")
	h.Set("Swarm", s.swarmHeader())
	h.Set("Cache-Control", "no-cache, no-store, must-revalidate")
	h.Set("Pragma", "no-cache")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	if r.Method == http.MethodHead {
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("OK"))
}

func (s *Server) version(w http.ResponseWriter, r *http.Request) {
	hush := system.ComponentVersion{
		Name: "hushd", Version: s.Version,
		Details: map[string]string{"ApiVersion": MaxAPIVersion, "MinAPIVersion": MinAPIVersion},
	}
	if s.Engine != nil {
		if ev, err := s.Engine.Version(r.Context()); err == nil {
			ev.Components = append(ev.Components, hush)
			writeJSON(w, http.StatusOK, ev)
			return
		}
	}
	v := system.VersionResponse{
		Platform:      system.PlatformInfo{Name: "hush"},
		Version:       s.Version,
		APIVersion:    MaxAPIVersion,
		MinAPIVersion: MinAPIVersion,
		Os:            runtime.GOOS,
		Arch:          runtime.GOARCH,
		GoVersion:     runtime.Version(),
		Components: []system.ComponentVersion{{
			Name: "hushd", Version: s.Version,
			Details: map[string]string{"ApiVersion": MaxAPIVersion, "MinAPIVersion": MinAPIVersion},
		}},
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) state() swarm.LocalNodeState {
	if s.Swarm == nil {
		return swarm.LocalNodeStateActive
	}
	return s.Swarm.State()
}

// swarmHeader is /_ping's Swarm header: "active/manager" tells the CLI to
// show the manager commands.
func (s *Server) swarmHeader() string {
	if st := s.state(); st != swarm.LocalNodeStateActive {
		return string(st)
	}
	if _, ok := s.workerInfo(); ok {
		return "active/worker"
	}
	return "active/manager"
}

// WorkerInfo is implemented by a SwarmController whose node may be a
// worker: its /info Swarm section then comes from it (no cluster store).
type WorkerInfo interface {
	WorkerInfo() (swarm.Info, bool)
}

func (s *Server) workerInfo() (swarm.Info, bool) {
	if w, ok := s.Swarm.(WorkerInfo); ok {
		return w.WorkerInfo()
	}
	return swarm.Info{}, false
}

// CertProblem is implemented by a SwarmController that knows why its
// node's certificate cannot be renewed (an expired one): /info's
// Swarm.Error says it on a manager too, as Swarm's does.
type CertProblem interface {
	CertProblem() string
}

// swarmInfo is the Swarm section of /info for this node. A certificate
// problem is said on an active node and on a manager waiting for a
// quorum too: managers whose certificates expired together refuse each
// other, so that is where the problem's way out is needed.
func (s *Server) swarmInfo(r *http.Request) swarm.Info {
	si := s.swarmInfoState(r)
	p, ok := s.Swarm.(CertProblem)
	if !ok || si.LocalNodeState != swarm.LocalNodeStateActive && si.LocalNodeState != swarm.LocalNodeStatePending {
		return si
	}
	switch problem := p.CertProblem(); {
	case problem == "":
	case si.Error == "":
		si.Error = problem
	default:
		si.Error += " " + problem
	}
	return si
}

func (s *Server) swarmInfoState(r *http.Request) swarm.Info {
	switch st := s.state(); st {
	case swarm.LocalNodeStateInactive:
		return swarm.Info{LocalNodeState: st}
	case swarm.LocalNodeStateLocked:
		return swarm.Info{LocalNodeState: st, NodeID: s.Node.ID, NodeAddr: s.Node.Addr}
	case swarm.LocalNodeStatePending:
		// A manager waiting for its cluster's quorum.
		return swarm.Info{LocalNodeState: st, NodeID: s.Node.ID, NodeAddr: s.Node.Addr, Error: errdefs.NoLeaderMessage}
	}
	if si, ok := s.workerInfo(); ok {
		return si
	}
	si := swarm.Info{
		NodeID:           s.Node.ID,
		NodeAddr:         s.Node.Addr,
		LocalNodeState:   swarm.LocalNodeStateActive,
		ControlAvailable: true,
		RemoteManagers:   []swarm.Peer{{NodeID: s.Node.ID, Addr: net.JoinHostPort(s.Node.Addr, "2377")}},
		Nodes:            1,
		Managers:         1,
	}
	if s.Nodes != nil {
		// A manager of a cluster: every manager, as `node ls` shows them.
		if self, others, ok, err := s.Nodes.Managers(r.Context()); err == nil && ok {
			si.RemoteManagers = []swarm.Peer{{NodeID: s.Node.ID, Addr: self.Addr}}
			si.Nodes += len(others)
			for _, n := range others {
				if n.ManagerStatus != nil {
					si.Managers++
					si.RemoteManagers = append(si.RemoteManagers, swarm.Peer{NodeID: n.ID, Addr: n.ManagerStatus.Addr})
				}
			}
		}
	}
	if c, err := s.Cluster.Cluster(r.Context()); err == nil {
		ci := c.Info()
		si.Cluster = &ci
	} else {
		si.Error = "cluster store unavailable"
	}
	return si
}

// EngineInfo fetches the host engine's /info and /version answers.
type EngineInfo interface {
	Info(ctx context.Context) (system.Info, error)
	Version(ctx context.Context) (system.VersionResponse, error)
}

// info is the engine's /info with hush's swarm section: `docker info` then
// describes the host's containers and images and hush's cluster.
func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	var info system.Info
	if s.Engine != nil {
		if ei, err := s.Engine.Info(r.Context()); err == nil {
			info = ei
		} else {
			s.log.Debug("engine info unavailable", "err", err)
		}
	}
	if info.ID == "" {
		host, _ := os.Hostname()
		info = system.Info{
			ID:              s.Node.ID,
			Name:            host,
			ServerVersion:   s.Version,
			OSType:          runtime.GOOS,
			OperatingSystem: runtime.GOOS,
			Architecture:    runtime.GOARCH,
			NCPU:            runtime.NumCPU(),
		}
	}
	info.Swarm = s.swarmInfo(r)
	if s.Swarm != nil {
		info.Warnings = append(info.Warnings, s.Swarm.Warnings()...)
	}
	writeJSON(w, http.StatusOK, info)
}
