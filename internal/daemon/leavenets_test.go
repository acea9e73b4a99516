package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/networks"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
)

// bridgeEngine is the networks of one engine several nodes share: the
// CI lab runs several on one, each realising its tasks' networks there.
type bridgeEngine struct {
	mu    sync.Mutex
	seq   int
	nets  map[string]networks.EngineSpec
	inUse map[string]bool // endpoints attached: the engine refuses removal
}

func (e *bridgeEngine) ListNetworks(_ context.Context, labels map[string]string) ([]networks.EngineNetwork, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []networks.EngineNetwork
	for id, s := range e.nets {
		ok := true
		for k, v := range labels {
			ok = ok && s.Labels[k] == v
		}
		if ok {
			out = append(out, networks.EngineNetwork{ID: id, Name: s.Name, Labels: maps.Clone(s.Labels)})
		}
	}
	return out, nil
}

func (e *bridgeEngine) CreateNetwork(_ context.Context, s networks.EngineSpec) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seq++
	id := fmt.Sprintf("b%063d", e.seq)
	e.nets[id] = s
	return id, nil
}

func (e *bridgeEngine) RemoveNetwork(_ context.Context, id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.inUse[id] {
		return fmt.Errorf("network %s has active endpoints: %w", id, networks.ErrEngineInUse)
	}
	delete(e.nets, id)
	return nil
}

func (e *bridgeEngine) InspectNetwork(_ context.Context, id string) (network.Inspect, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.nets[id]
	return network.Inspect{Network: network.Network{ID: id, Name: s.Name, Labels: maps.Clone(s.Labels)}}, nil
}

func (e *bridgeEngine) has(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.nets[id]
	return ok
}

// TestLeaveRemovesOwnBridges: a node's ID changes only with its data dir
// (node.json), so once it has left, a node that joins again under a new
// ID on the same engine can never tell its former identity's bridges
// from those of another node sharing the engine: every leave (a worker's,
// a lone manager's, an etcd member's) removes the bridges the node
// realised, once its task containers are gone. Another node's bridges
// (the same swarm network realised for it), a network hush did not
// create, one carrying only the node label and one a container still
// uses stay (the leave names that one in its log); the new identity's
// first prune leaves them too. Before, the leaving node's bridges stayed
// on the engine for good.
func TestLeaveRemovesOwnBridges(t *testing.T) {
	const (
		rejoined = "rejoinednodeaaaaaaaaaaaaa"
		sharing  = "sharingnodeaaaaaaaaaaaaaa"
	)
	for _, tc := range []struct {
		name  string
		start func(t *testing.T, log *slog.Logger) *Daemon
		leave func(ctx context.Context, d *Daemon) error
	}{
		{
			name: "worker",
			start: func(t *testing.T, log *slog.Logger) *Daemon {
				dir := t.TempDir()
				// What a worker holds: a detached store (issue 9); its
				// leave opens an inactive node's.
				st := store.Detached(errdefs.Unavailable("%s", msgNotManager), log)
				d := &Daemon{cfg: Config{DataDir: dir}, log: log, nodeID: "formernodeaaaaaaaaaaaaaaa", store: st,
					plainKey: keyring.FileKeyStore{Path: filepath.Join(dir, "keys", "master.key")}, state: swarm.LocalNodeStateActive}
				d.cur.Store(st)
				d.bg, d.stopBG = context.WithCancel(context.Background())
				t.Cleanup(func() {
					d.stopBG()
					d.bgDone.Wait()
					_ = d.store.Close()
				})
				return d
			},
			leave: func(ctx context.Context, d *Daemon) error { return d.leaveWorkerLocked(ctx) },
		},
		{
			name: "lone manager",
			start: func(t *testing.T, log *slog.Logger) *Daemon {
				return startWith(t, Config{DataDir: t.TempDir(), Logger: log})
			},
			leave: func(ctx context.Context, d *Daemon) error { return d.Leave(ctx, true) },
		},
		{
			name: "etcd member",
			start: func(t *testing.T, log *slog.Logger) *Daemon {
				listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))
				return startWith(t, Config{DataDir: t.TempDir(), ListenAddr: listen, Logger: log})
			},
			leave: func(ctx context.Context, d *Daemon) error { return d.Leave(ctx, true) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			logs := &lockedLog{}
			d := tc.start(t, slog.New(slog.NewTextHandler(logs, nil)))
			former := d.nodeID
			eng := &bridgeEngine{nets: map[string]networks.EngineSpec{}, inUse: map[string]bool{}}
			r := networks.NewRealiser(eng, nil)
			// This test's daemons have no engine: the bridges are the
			// fake's, realised as the node's agent would.
			d.realiser = r
			realise := func(node string, n model.TaskNetwork) string {
				t.Helper()
				id, err := r.Realise(ctx, node, n)
				if err != nil {
					t.Fatal(err)
				}
				return id
			}
			front := model.TaskNetwork{ID: "frontnetworkaaaaaaaaaaaaa", Name: "leavetest_front"}
			back := model.TaskNetwork{ID: "backnetworkaaaaaaaaaaaaaa", Name: "leavetest_back"}
			busyNet := model.TaskNetwork{ID: "busynetworkaaaaaaaaaaaaaa", Name: "leavetest_busy"}
			own := map[string]string{"front": realise(former, front), "back": realise(former, back)}
			busy := realise(former, busyNet)
			eng.inUse[busy] = true
			stay := map[string]string{"another node's front": realise(sharing, front), "busy": busy}
			stay["a user's network"], _ = eng.CreateNetwork(ctx, networks.EngineSpec{Name: "leavetest_user"})
			stay["only the node label"], _ = eng.CreateNetwork(ctx, networks.EngineSpec{Name: "leavetest_labelled",
				Labels: map[string]string{networks.LabelNodeID: former}})

			if err := tc.leave(ctx, d); err != nil {
				t.Fatal(err)
			}
			// The one that had to stay is named, for the operator to remove.
			if l := logs.String(); !strings.Contains(l, "leavetest_busy") || strings.Contains(l, "engine_network=leavetest_front") {
				t.Errorf("the leave's log does not name just the bridge that stays:\n%s", l)
			}
			// The node joins again under a new ID: its first pass prunes its own.
			if err := r.Prune(ctx, rejoined, nil); err != nil {
				t.Fatal(err)
			}
			for name, id := range own {
				if eng.has(id) {
					t.Errorf("the former identity's %s bridge was left on the engine", name)
				}
			}
			for name, id := range stay {
				if !eng.has(id) {
					t.Errorf("%s was removed", name)
				}
			}
		})
	}
}

// lockedLog collects a daemon's log lines from any goroutine.
type lockedLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
