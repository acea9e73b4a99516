package standalone

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
)

// Table is the store table of grants.
const Table = "containergrants"

// Item is one secret or config a grant delivers: IDs, names and file
// metadata, never data.
type Item struct {
	ID     string      `json:"id"`
	Name   string      `json:"name"`
	Target string      `json:"target"`
	UID    int         `json:"uid"`
	GID    int         `json:"gid"`
	Mode   os.FileMode `json:"mode"`
	// Version is the object's data version in the container's files:
	// written only once the files hold it, so a rotation cut short is
	// done again and the version recorded is never one the container
	// does not have.
	Version int `json:"version"`
}

// Grant records that a container holds secrets and configs, since when,
// and where their tmpfs is (Root/<ID>).
type Grant struct {
	ID string `json:"id"`
	// ContainerID is empty until the engine has created the container.
	ContainerID string    `json:"container,omitempty"`
	Name        string    `json:"name"`
	Since       time.Time `json:"since"`
	Secrets     []Item    `json:"secrets,omitempty"`
	Configs     []Item    `json:"configs,omitempty"`
	// Rotate is the container's io.hush.rotate ("": the default).
	Rotate string `json:"rotate,omitempty"`
	// Tree is set when the files are served from one directory bound at
	// /run/secrets, which a rotation swaps; grants made before rotations
	// reached containers, and those with other targets, bind each file.
	Tree bool `json:"tree,omitempty"`

	rev int64
}

// markers are the in-use markers of g's objects: the value is the
// container's name, which `docker secret rm` quotes.
func (g *Grant) markerOps(put bool) []store.Op {
	var ops []store.Op
	seen := map[string]bool{}
	for _, set := range []struct {
		table string
		items []Item
	}{{objects.Secret.Table, g.Secrets}, {objects.Config.Table, g.Configs}} {
		for _, it := range set.items {
			k := store.RefKey(set.table, it.ID, objects.ContainerRefOwner(g.ID))
			if seen[k] {
				continue
			}
			seen[k] = true
			if put {
				ops = append(ops, store.PutOp(k, objects.ContainerRefValue(g.Name)))
			} else {
				ops = append(ops, store.DeleteOp(k))
			}
		}
	}
	return ops
}

type grants struct {
	st  *store.Store
	tbl *store.Table
}

func (gs grants) create(ctx context.Context, g *Grant) error {
	val, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("encode grant: %w: %w", errdefs.ErrInternal, err)
	}
	// Every object must still exist when the grant and its markers are
	// written: a `secret rm` racing this create either sees the marker
	// and refuses, or wins and this write fails.
	var guards []store.Cond
	for _, it := range g.Secrets {
		guards = append(guards, store.Exists(gs.st.Table(objects.Secret.Table).Key(it.ID)))
	}
	for _, it := range g.Configs {
		guards = append(guards, store.Exists(gs.st.Table(objects.Config.Table).Key(it.ID)))
	}
	rev, err := gs.tbl.CreateGuarded(ctx, g.ID, g.ID, val, guards, g.markerOps(true)...)
	if err != nil {
		if errors.Is(err, store.ErrGuard) {
			return errdefs.InvalidArgument("a secret or config the container asks for was removed meanwhile: try again")
		}
		return err
	}
	g.rev = rev
	return nil
}

// update rewrites g (its container ID and name) and its markers' values.
func (gs grants) update(ctx context.Context, g *Grant) error {
	val, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("encode grant: %w: %w", errdefs.ErrInternal, err)
	}
	rev, err := gs.tbl.Update(ctx, g.ID, g.rev, val, g.markerOps(true)...)
	if err != nil {
		return err
	}
	g.rev = rev
	return nil
}

func (gs grants) remove(ctx context.Context, g *Grant) error {
	err := gs.tbl.Delete(ctx, g.ID, g.ID, 0, nil, g.markerOps(false)...)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

func (gs grants) list(ctx context.Context) ([]*Grant, error) {
	objs, err := gs.tbl.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*Grant, 0, len(objs))
	for _, o := range objs {
		g := new(Grant)
		if err := json.Unmarshal(o.Value, g); err != nil {
			return nil, fmt.Errorf("decode grant %s: %w: %w", o.ID, errdefs.ErrInternal, err)
		}
		g.rev = o.ModRev
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
