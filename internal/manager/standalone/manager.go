package standalone

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
)

// FS is what grants need of secretfs: one tmpfs per grant, named by the
// grant's ID (see SecretFS).
type FS interface {
	// Mount makes id's tmpfs; tree serves every file from one directory
	// bound at /run/secrets, which Swap can replace under a running
	// container (all targets must be directly under /run/secrets).
	Mount(ctx context.Context, id string, files []secretfs.File, tree bool) ([]secretfs.Binding, error)
	// Swap replaces the files of id's tree mount atomically for readers,
	// also one a crash left mid-swap.
	Swap(ctx context.Context, id string, files []secretfs.File) error
	// Mounted reports whether id's tmpfs exists and is complete, or is a
	// tree mount (which Swap makes whole again).
	Mounted(id string) bool
	Unmount(id string) error
	// IDs lists the IDs that have a directory under Root.
	IDs() ([]string, error)
	Root() string
}

// SecretFS adapts a secretfs.Manager to FS.
type SecretFS struct{ *secretfs.Manager }

// Mount mounts id's tmpfs and returns its bind mounts.
func (s SecretFS) Mount(ctx context.Context, id string, files []secretfs.File, tree bool) ([]secretfs.Binding, error) {
	mount := s.Manager.Mount
	if tree {
		mount = s.MountTree
	}
	mt, err := mount(ctx, id, files)
	if err != nil {
		return nil, err
	}
	return mt.Bindings(), nil
}

// Swap swaps id's tree mount (secretfs.Manager.Resume).
func (s SecretFS) Swap(ctx context.Context, id string, files []secretfs.File) error {
	return s.Resume(ctx, id, files)
}

// Mounted reports whether id's tmpfs is complete or a tree mount.
func (s SecretFS) Mounted(id string) bool {
	if _, ok := s.Lookup(id); ok {
		return true
	}
	return s.TreeMounted(id)
}

// IDs lists the mount directories.
func (s SecretFS) IDs() ([]string, error) { return s.Tasks() }

// Objects resolves and opens one kind of object (objects.Manager).
type Objects interface {
	Get(ctx context.Context, ref string) (objects.Object, error)
	// ContentVersion opens version n of the object with exact id: a
	// container is given the version its grant records.
	ContentVersion(ctx context.Context, id string, n int) ([]byte, string, error)
}

// Config wires a Manager.
type Config struct {
	Store   *store.Store
	Secrets Objects
	Configs Objects
	FS      FS
	// Names finds the name the engine gave a container created without
	// one (nil: the grant keeps its ID as the name); an ErrNotFound from
	// it tells Commit the container is already gone.
	Names func(ctx context.Context, containerID string) (string, error)
	// Control reloads, signals and restarts containers when a rotation
	// reaches them (nil: rotations are not delivered).
	Control Control
	// Changed returns a channel closed at the next write to the secrets
	// or configs tables (nil: Sync runs only at each reconcile and retry).
	Changed func() <-chan struct{}
	// Failpoint, set by tests only, is called at the named points of a
	// delivery (see rotate.go); an error it returns fails the delivery.
	Failpoint func(point string) error
	Logger    *slog.Logger
}

// Manager keeps the grants of standalone containers and their tmpfs.
type Manager struct {
	grants  grants
	secrets Objects
	configs Objects
	fs      FS
	names   func(ctx context.Context, containerID string) (string, error)
	control Control
	changed func() <-chan struct{}
	fail    func(point string) error
	log     *slog.Logger
	now     func() time.Time
	// mu serialises grant changes with reconciliation, so a reconcile
	// never removes a grant whose container is being created.
	mu      sync.Mutex
	pending map[string]bool
	// epoch counts container listings (BeginList); committed holds the
	// epoch at which each grant was committed, so a reconcile ignores
	// grants committed after its listing began (their container may be
	// missing from the list).
	epoch     uint64
	committed map[string]uint64
	// syncMu serialises deliveries of rotations (Sync); kick wakes their
	// loop.
	syncMu sync.Mutex
	kick   chan struct{}
	// failures are the deliveries that did not reach their container, by
	// container ID, for `hush secret rotate --wait` to stop on (fmu).
	fmu      sync.Mutex
	failures map[string]DeliveryFailure
}

// New returns a Manager.
func New(c Config) *Manager {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{
		grants: grants{st: c.Store, tbl: c.Store.Table(Table)}, secrets: c.Secrets, configs: c.Configs,
		fs: c.FS, names: c.Names, control: c.Control, changed: c.Changed, fail: c.Failpoint, log: log, now: func() time.Time { return time.Now().UTC() }, pending: map[string]bool{}, committed: map[string]uint64{}, kick: make(chan struct{}, 1), failures: map[string]DeliveryFailure{},
	}
}

// Binding is one read-only bind mount to add to the container.
type Binding = secretfs.Binding

// Prepared is a grant made for a container the engine has yet to create.
type Prepared struct {
	GrantID  string
	Bindings []Binding
}

// Prepare checks req's references, records a grant for the container to be
// named name ("" if the engine is to choose) and mounts its tmpfs. On
// error nothing is left behind.
func (m *Manager) Prepare(ctx context.Context, req Request, name string) (_ *Prepared, err error) {
	g := &Grant{Name: name, Since: m.now(), Rotate: req.Rotate}
	// Files directly under /run/secrets are served from one directory
	// that a rotation swaps under the running container; others are bound
	// one by one, and a rotation restarts the container.
	g.Tree, _ = req.Swappable()
	g.Tree = g.Tree && !req.BindEach
	if g.ID, err = identity.NewID(); err != nil {
		return nil, fmt.Errorf("grant id: %w: %w", errdefs.ErrInternal, err)
	}
	if g.Name == "" {
		g.Name = g.ID
	}
	if g.Secrets, err = m.resolve(ctx, m.secrets, "secret", req.Secrets); err != nil {
		return nil, err
	}
	if g.Configs, err = m.resolve(ctx, m.configs, "config", req.Configs); err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.pending[g.ID] = true
	m.mu.Unlock()
	defer func() {
		if err != nil {
			m.mu.Lock()
			delete(m.pending, g.ID)
			m.mu.Unlock()
		}
	}()
	if err := m.grants.create(ctx, g); err != nil {
		return nil, err
	}
	binds, err := m.mount(ctx, g)
	if err != nil {
		if rerr := m.grants.remove(context.WithoutCancel(ctx), g); rerr != nil {
			m.log.Warn("standalone: removing the grant of a failed mount", "grant", g.ID, "err", rerr)
		}
		return nil, err
	}
	return &Prepared{GrantID: g.ID, Bindings: binds}, nil
}

func (m *Manager) resolve(ctx context.Context, objs Objects, noun string, refs []Ref) ([]Item, error) {
	items := make([]Item, 0, len(refs))
	for _, r := range refs {
		o, err := objs.Get(ctx, r.Name)
		if err != nil || (o.Name != r.Name && o.ID != r.Name) {
			if err == nil || errors.Is(err, errdefs.ErrNotFound) {
				// 400, not 404: the docker CLI reads a 404 from create as a
				// missing image and pulls.
				return nil, errdefs.InvalidArgument("%s not found: %s", noun, r.Name)
			}
			return nil, err
		}
		if o.Templating != nil {
			return nil, errdefs.InvalidArgument("%s %s is templated: templates are rendered for service tasks only, not for containers", noun, r.Name)
		}
		items = append(items, Item{ID: o.ID, Name: o.Name, Target: r.Target, UID: r.UID, GID: r.GID, Mode: r.Mode, Version: max(o.DataVersion, 1)})
	}
	return items, nil
}

// files opens g's files at the versions want gives each item (nil: the
// versions g records); the caller wipes them.
func (m *Manager) files(ctx context.Context, g *Grant, want func(kind string, it Item) int) ([]secretfs.File, error) {
	files := make([]secretfs.File, 0, len(g.Secrets)+len(g.Configs))
	for _, set := range []struct {
		kind  string
		objs  Objects
		items []Item
	}{{objects.Secret.Table, m.secrets, g.Secrets}, {objects.Config.Table, m.configs, g.Configs}} {
		for _, it := range set.items {
			n := it.Version
			if want != nil {
				n = want(set.kind, it)
			}
			data, _, err := set.objs.ContentVersion(ctx, it.ID, n)
			if err != nil {
				wipeFiles(files)
				return nil, err
			}
			files = append(files, secretfs.File{Target: it.Target, UID: it.UID, GID: it.GID, Mode: it.Mode, Data: data})
		}
	}
	return files, nil
}

func wipeFiles(files []secretfs.File) {
	for _, f := range files {
		keyring.Wipe(f.Data)
	}
}

// mount materialises g's files at the versions it records, or returns its
// existing complete mount.
func (m *Manager) mount(ctx context.Context, g *Grant) ([]secretfs.Binding, error) {
	files, err := m.files(ctx, g, nil)
	if err != nil {
		return nil, err
	}
	defer wipeFiles(files)
	binds, err := m.fs.Mount(ctx, g.ID, files, g.Tree)
	if err != nil {
		return nil, fmt.Errorf("container secrets tmpfs: %w: %w", errdefs.ErrInternal, err)
	}
	return binds, nil
}

// Commit records the container the engine created for a prepared grant.
func (m *Manager) Commit(ctx context.Context, grantID, containerID, name string) error {
	defer func() {
		m.mu.Lock()
		delete(m.pending, grantID)
		m.committed[grantID] = m.epoch
		m.mu.Unlock()
		// A rotation since Prepare read the versions must reach it too.
		m.poke()
	}()
	g, err := m.get(ctx, grantID)
	if err != nil {
		return err
	}
	g.ContainerID = containerID
	if name != "" {
		g.Name = strings.TrimPrefix(name, "/")
	}
	if err := m.grants.update(ctx, g); err != nil {
		return err
	}
	if m.names == nil || containerID == "" {
		return nil
	}
	// Asked after the grant names the container: a removal before this
	// (its destroy event found no grant to release) shows here, one after
	// finds the grant.
	n, err := m.names(ctx, containerID)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.release(ctx, g)
	case err == nil && name == "" && n != "" && n != g.Name:
		// A rotation may have recorded a version meanwhile.
		return m.modify(ctx, grantID, func(g *Grant) bool { g.Name = n; return true })
	}
	return nil
}

// Abort undoes a prepared grant whose container the engine did not create.
func (m *Manager) Abort(ctx context.Context, grantID string) {
	defer func() {
		m.mu.Lock()
		delete(m.pending, grantID)
		m.mu.Unlock()
	}()
	g, err := m.get(ctx, grantID)
	if err == nil {
		err = m.release(ctx, g)
	}
	if err != nil {
		m.log.Warn("standalone: undoing a grant", "grant", grantID, "err", err)
	}
}

func (m *Manager) get(ctx context.Context, id string) (*Grant, error) {
	o, err := m.grants.tbl.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	g := new(Grant)
	if err := json.Unmarshal(o.Value, g); err != nil {
		return nil, fmt.Errorf("decode grant %s: %w: %w", id, errdefs.ErrInternal, err)
	}
	g.rev = o.ModRev
	return g, nil
}

// release unmounts g's tmpfs, then drops the grant and its markers.
func (m *Manager) release(ctx context.Context, g *Grant) error {
	if err := m.fs.Unmount(g.ID); err != nil {
		return err
	}
	if err := m.grants.remove(ctx, g); err != nil {
		return err
	}
	m.log.Info("standalone: container's secrets released", "container", g.ContainerID, "name", g.Name)
	return nil
}

// Released handles the engine's destroy event of a container. It holds
// mu, as a rotation's replace of the tmpfs does, so that one never mounts
// again for a grant released meanwhile.
func (m *Manager) Released(ctx context.Context, containerID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	all, err := m.grants.list(ctx)
	if err != nil {
		return err
	}
	for _, g := range all {
		if g.ContainerID == containerID {
			if err := m.release(ctx, g); err != nil {
				return err
			}
			// Gone, so no reconcile needs to know it was recent: without
			// this, committed grows with every create until one runs.
			delete(m.committed, g.ID)
			return nil
		}
	}
	return nil
}

// Renamed records a container's new name, which `secret rm` quotes.
func (m *Manager) Renamed(ctx context.Context, containerID, name string) error {
	if name == "" {
		return nil
	}
	all, err := m.grants.list(ctx)
	if err != nil {
		return err
	}
	for _, g := range all {
		if g.ContainerID == containerID && g.Name != name {
			// On the latest revision: a rotation may record meanwhile.
			return m.modify(ctx, g.ID, func(g *Grant) bool {
				if g.Name == name {
					return false
				}
				g.Name = name
				return true
			})
		}
	}
	return nil
}

// Container is an engine container that carries hush's labels.
type Container struct {
	ID   string
	Name string
	// Sources are the host paths of its bind mounts.
	Sources []string
}

// grantsOf returns the grant IDs a container's bind mounts point into.
// Only hush's own bind names one for a container hush created, but a
// client may add binds of its own into the root (anyone on the socket may
// read there, the access-control gap): so this tells only which grant a
// container created while hushd was down may be the one of.
func (m *Manager) grantsOf(c Container) []string {
	root := filepath.Clean(m.fs.Root()) + "/"
	var ids []string
	for _, s := range c.Sources {
		if rest, ok := strings.CutPrefix(filepath.Clean(s), root); ok {
			if id, _, _ := strings.Cut(rest, "/"); identity.Valid(id) && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// BeginList is called before the engine's containers are listed for
// Reconcile, and its result passed to it.
func (m *Manager) BeginList() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.epoch++
	return m.epoch
}

// Reconcile brings grants and mounts in line with the engine's containers
// (those carrying hush's labels): a grant whose container is gone is
// released, a live container's missing tmpfs is made again (after a
// reboot), and mounts without a grant are removed. Grants being prepared
// are left alone, and so are those committed since listed (BeginList)
// began.
func (m *Manager) Reconcile(ctx context.Context, containers []Container, listed uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, e := range m.committed {
		if e < listed {
			delete(m.committed, id)
		}
	}
	all, err := m.grants.list(ctx)
	if err != nil {
		return err
	}
	// A committed grant is its container's by ID: a container whose binds
	// also reach into another's grant directory must not take that grant
	// over (its removal would then tear down the other's tmpfs). Only a
	// grant hushd could not commit (it died before the engine answered)
	// is matched by the bind sources, to a container no grant holds.
	byID := map[string]Container{}
	for _, c := range containers {
		byID[c.ID] = c
	}
	claimed := map[string]bool{} // container IDs that hold a grant
	for _, g := range all {
		if _, ok := byID[g.ContainerID]; ok {
			claimed[g.ContainerID] = true
		}
	}
	live := map[string]Container{} // grant ID -> container
	uncommitted := map[string]bool{}
	for _, g := range all {
		if g.ContainerID == "" {
			uncommitted[g.ID] = true
		} else if c, ok := byID[g.ContainerID]; ok {
			live[g.ID] = c
		}
	}
	for _, c := range containers {
		if claimed[c.ID] {
			continue
		}
		for _, id := range m.grantsOf(c) {
			if _, taken := live[id]; uncommitted[id] && !taken {
				live[id] = c
				claimed[c.ID] = true
				break
			}
		}
	}
	var errs []error
	have := map[string]bool{}
	for _, g := range all {
		have[g.ID] = true
		if _, recent := m.committed[g.ID]; recent || m.pending[g.ID] {
			continue
		}
		c, ok := live[g.ID]
		if !ok {
			if err := m.release(ctx, g); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if g.ContainerID == "" || (c.Name != "" && g.Name != c.Name) {
			// Created while hushd went down before Commit.
			g.ContainerID = c.ID
			if c.Name != "" {
				g.Name = c.Name
			}
			if err := m.grants.update(ctx, g); err != nil {
				errs = append(errs, err)
			}
		}
		if !m.fs.Mounted(g.ID) {
			_, err := m.mount(ctx, g)
			if errors.Is(err, errdefs.ErrNotFound) {
				// A version it records is gone (retention took it before
				// the grant held it): it gets the current ones, which the
				// Sync after this reconcile delivers and records.
				m.log.Warn("standalone: a container's recorded version is gone; re-provisioning the current one", "container", c.ID, "name", g.Name, "err", err)
				err = m.reprovisionCurrent(ctx, g)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("re-provision container %s: %w", c.ID, err))
				continue
			}
			m.log.Info("standalone: re-provisioned a container's secrets", "container", c.ID, "name", g.Name)
		}
	}
	ids, err := m.fs.IDs()
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range ids {
		if !have[id] && !m.pending[id] {
			if err := m.fs.Unmount(id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Holder is one container or task that holds an object.
type Holder struct {
	Kind    string // "container" or "task"
	ID      string
	Name    string
	Service string // the task's service; "" for a container
	// Version is the object's data version delivered.
	Version int
	Since   time.Time
}

// Holders lists the containers holding the secret (table "secrets") or
// config with the exact id.
func (m *Manager) Holders(ctx context.Context, table, id string) ([]Holder, error) {
	all, err := m.grants.list(ctx)
	if err != nil {
		return nil, err
	}
	out := []Holder{}
	for _, g := range all {
		if g.ContainerID == "" {
			continue
		}
		items := g.Secrets
		if table == objects.Config.Table {
			items = g.Configs
		}
		for _, it := range items {
			if it.ID == id {
				out = append(out, Holder{Kind: "container", ID: g.ContainerID, Name: g.Name, Version: it.Version, Since: g.Since})
				break
			}
		}
	}
	return out, nil
}
