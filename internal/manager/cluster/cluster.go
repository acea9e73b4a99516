// Package cluster keeps the cluster object: its ID, creation time and spec
// (the settings `docker swarm init/update` manage).
//
// It holds no key material; the encryption settings in the spec only say
// whether autolock is on.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

const (
	table = "cluster"
	key   = "default"
)

// Cluster is the stored cluster object.
type Cluster struct {
	ID        string     `json:"id"`
	CreatedAt time.Time  `json:"created"`
	UpdatedAt time.Time  `json:"updated"`
	Spec      swarm.Spec `json:"spec"`
	// Version is the store revision of the last write (not stored).
	Version uint64 `json:"-"`
}

// DefaultSpec is the spec `docker swarm init` gives a new cluster.
func DefaultSpec() swarm.Spec {
	var s swarm.Spec
	s.Name = "default"
	s.Labels = map[string]string{}
	retention := int64(5)
	s.Orchestration.TaskHistoryRetentionLimit = &retention
	s.Raft.SnapshotInterval = 10000
	keep := uint64(0)
	s.Raft.KeepOldSnapshots = &keep
	s.Raft.LogEntriesForSlowFollowers = 500
	s.Raft.ElectionTick = 10
	s.Raft.HeartbeatTick = 1
	s.Dispatcher.HeartbeatPeriod = 5 * time.Second
	s.CAConfig.NodeCertExpiry = 90 * 24 * time.Hour
	return s
}

// Bootstrap returns the cluster object, creating it on first start.
func Bootstrap(ctx context.Context, st *store.Store) (Cluster, error) {
	c, err := Get(ctx, st)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return Cluster{}, err
	}
	id, err := identity.NewID()
	if err != nil {
		return Cluster{}, err
	}
	now := time.Now().UTC()
	c = Cluster{ID: id, CreatedAt: now, UpdatedAt: now, Spec: DefaultSpec()}
	val, err := json.Marshal(&c)
	if err != nil {
		return Cluster{}, err
	}
	if _, err := st.Table(table).Create(ctx, key, "", val); err != nil {
		if errors.Is(err, store.ErrNameTaken) {
			// Another manager bootstrapped first; use its cluster.
			return Get(ctx, st)
		}
		return Cluster{}, err
	}
	return Get(ctx, st)
}

// Get reads the cluster object.
func Get(ctx context.Context, st *store.Store) (Cluster, error) {
	o, err := st.Table(table).Get(ctx, key)
	if err != nil {
		return Cluster{}, err
	}
	var c Cluster
	if err := json.Unmarshal(o.Value, &c); err != nil {
		return Cluster{}, fmt.Errorf("decode cluster: %w: %w", errdefs.ErrInternal, err)
	}
	c.Version = uint64(o.ModRev)
	return c, nil
}

// Info is the wire form of the cluster.
func (c *Cluster) Info() swarm.ClusterInfo {
	return swarm.ClusterInfo{
		ID:           c.ID,
		Meta:         swarm.Meta{Version: swarm.Version{Index: c.Version}, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt},
		Spec:         c.Spec,
		SubnetSize:   24,
		DataPathPort: 4789,
	}
}
