package objects

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/identity"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/store"
)

// Kind describes one kind of blob object.
type Kind struct {
	// Name is the singular noun used in messages ("secret", "config").
	Name string
	// Table is the store table ("secrets", "configs").
	Table string
	// MaxSize is the exclusive upper bound of the data size.
	MaxSize int
	// Readable kinds return their data to API clients (configs, as in
	// Swarm); secret data never leaves except to the dispatcher.
	Readable bool
}

// Swarm's limits: secrets < 500 KiB, configs < 1000 KiB.
var (
	Secret = Kind{Name: "secret", Table: "secrets", MaxSize: model.MaxSecretData}
	Config = Kind{Name: "config", Table: "configs", MaxSize: model.MaxConfigData, Readable: true}
)

// Driver mirrors the wire Driver (name and options).
type Driver struct {
	Name    string            `json:",omitempty"`
	Options map[string]string `json:",omitempty"`
}

// Spec is what a client may set on create. Data is write-only.
type Spec struct {
	Name       string
	Labels     map[string]string
	Data       []byte
	Driver     *Driver
	Templating *Driver
}

// Object is the client-visible state of a secret or config: never its data.
type Object struct {
	ID         string
	Version    uint64
	CreatedAt  time.Time
	UpdatedAt  time.Time
	Name       string
	Labels     map[string]string
	Driver     *Driver
	Templating *Driver

	// DataVersion is the number of the current version of the data.
	DataVersion int

	// sealed lets Reveal open a readable kind's data without a store read.
	sealed keyring.Sealed
}

// record is the stored form. The data is only ever present sealed.
type record struct {
	ID          string            `json:"id"`
	CreatedAt   time.Time         `json:"created"`
	UpdatedAt   time.Time         `json:"updated"`
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Driver      *Driver           `json:"driver,omitempty"`
	Templating  *Driver           `json:"templating,omitempty"`
	DataVersion int               `json:"dataVersion"`
	// Sealed is the data of records written before versions existed
	// (version 1); decode moves it into Versions.
	Sealed   keyring.Sealed `json:"sealed,omitzero"`
	Versions []version      `json:"versions,omitempty"`
}

// version is one stored value of an object, sealed under its own data key
// (keyring.Seal makes a fresh DEK per call) with AAD naming kind, ID and
// version number.
type version struct {
	N       int       `json:"n"`
	Created time.Time `json:"created"`
	// Fingerprint is a keyed HMAC of the value (see fingerprint.go).
	Fingerprint string `json:"fp,omitempty"`
	// Sealed is nil once the version is destroyed: no copy of its wrapped
	// data key is left in the record, so it can never be opened again.
	Sealed *keyring.Sealed `json:"sealed,omitempty"`
}

// current returns the version the record's DataVersion names.
func (r *record) current() *version {
	return r.find(r.DataVersion)
}

func (r *record) find(n int) *version {
	for i := range r.Versions {
		if r.Versions[i].N == n {
			return &r.Versions[i]
		}
	}
	return nil
}

// Sealer is the part of the keyring the manager needs.
type Sealer interface {
	Seal(plaintext, aad []byte) (keyring.Sealed, error)
	Open(s keyring.Sealed, aad []byte) ([]byte, error)
}

// Manager implements the control API of one kind.
type Manager struct {
	kind  Kind
	st    *store.Store
	tbl   *store.Table
	seal  Sealer
	log   *slog.Logger
	now   func() time.Time
	newID func() (string, error)
	// mirror, when set, serves lists from memory.
	mirror *store.Mirror
	// rot holds what versions need: holders, retention, fingerprint key.
	rot rotation
}

// UseMirror registers this kind with mir and serves lists from it. Call
// before mir runs.
func (m *Manager) UseMirror(mir *store.Mirror) {
	mir.RegisterSealed(m.kind.Table, func(o store.Object) (any, error) {
		return m.newMirrored(o), nil
	})
	m.mirror = mir
}

// New returns a manager for kind over st, sealing with s.
func New(kind Kind, st *store.Store, s Sealer, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{
		kind: kind, st: st, tbl: st.Table(kind.Table), seal: s, log: log,
		now:   func() time.Time { return time.Now().UTC() },
		newID: identity.NewID,
	}
}

// Kind returns the manager's kind.
func (m *Manager) Kind() Kind { return m.kind }

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`)

// ValidateName applies Swarm's rule for object names.
func ValidateName(name string) error {
	if name == "" {
		return errdefs.InvalidArgument("name must be provided")
	}
	if len(name) > 64 || !nameRE.MatchString(name) {
		return errdefs.InvalidArgument("invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]")
	}
	return nil
}

func (m *Manager) validateSpec(s *Spec) error {
	if err := ValidateName(s.Name); err != nil {
		return err
	}
	if s.Driver != nil && s.Driver.Name != "" {
		// hush has no secret-driver plugins. Swarm without the plugin answers
		// the same; accepting the spec would store an object with no value.
		return errdefs.InvalidArgument("plugin %q not found", s.Driver.Name)
	}
	if err := validateTemplating(s.Templating); err != nil {
		return err
	}
	if len(s.Data) == 0 || len(s.Data) >= m.kind.MaxSize {
		return errdefs.InvalidArgument("%s data must be larger than 0 and less than %d bytes", m.kind.Name, m.kind.MaxSize)
	}
	return nil
}

// TemplateDriver is the one templating driver hush renders (as Swarm's
// executor does).
const TemplateDriver = "golang"

// validateTemplating refuses at create what no task could be given: Swarm
// stores any driver name and then fails every task that mounts the object
// ("unrecognized template type"); hush says so when the object is made.
func validateTemplating(d *Driver) error {
	if d == nil {
		return nil
	}
	if d.Name != TemplateDriver {
		return errdefs.InvalidArgument("templating driver %q is not supported: hush renders only the %q driver (Templating.Name)", d.Name, TemplateDriver)
	}
	if len(d.Options) > 0 {
		return errdefs.InvalidArgument("templating driver %q takes no options (Templating.Options)", d.Name)
	}
	return nil
}

// aad binds a ciphertext to its object kind, ID and data version, so a
// sealed value copied onto another object (or version) fails to open.
func (m *Manager) aad(id string, dataVersion int) []byte {
	return fmt.Appendf(nil, "hush/%s/%s/v%d", m.kind.Table, id, dataVersion)
}

// Create validates spec, seals its data and stores it; it returns the ID.
func (m *Manager) Create(ctx context.Context, s Spec) (string, error) {
	if err := m.validateSpec(&s); err != nil {
		return "", err
	}
	id, err := m.newID()
	if err != nil {
		return "", fmt.Errorf("%s id: %w: %w", m.kind.Name, errdefs.ErrInternal, err)
	}
	if err := validateKeep(s.Labels); err != nil {
		return "", err
	}
	now := m.now()
	v, err := m.newVersion(ctx, id, 1, s.Data, now)
	if err != nil {
		return "", err
	}
	rec := record{
		ID: id, CreatedAt: now, UpdatedAt: now, Name: s.Name, Labels: s.Labels,
		Templating: s.Templating, DataVersion: 1, Versions: []version{v},
	}
	val, err := json.Marshal(&rec)
	if err != nil {
		return "", fmt.Errorf("encode %s: %w: %w", m.kind.Name, errdefs.ErrInternal, err)
	}
	if _, err := m.tbl.Create(ctx, id, s.Name, val); err != nil {
		if errors.Is(err, store.ErrNameTaken) {
			return "", errdefs.AlreadyExists("%s %s already exists", m.kind.Name, s.Name)
		}
		return "", err
	}
	m.log.Info(m.kind.Name+" created", "id", id, "name", s.Name)
	return id, nil
}

func (m *Manager) decode(o store.Object) (record, error) {
	var r record
	if err := json.Unmarshal(o.Value, &r); err != nil {
		return r, fmt.Errorf("decode %s %s: %w: %w", m.kind.Name, o.ID, errdefs.ErrInternal, err)
	}
	if len(r.Versions) == 0 {
		// Written before versions: its one value is version DataVersion.
		if r.DataVersion == 0 {
			r.DataVersion = 1
		}
		sealed := r.Sealed
		r.Versions = []version{{N: r.DataVersion, Created: r.CreatedAt, Sealed: &sealed}}
	}
	r.Sealed = keyring.Sealed{}
	return r, nil
}

func toObject(r *record, modRev int64) Object {
	labels := r.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	o := Object{
		ID: r.ID, Version: uint64(modRev), CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		Name: r.Name, Labels: labels, Driver: r.Driver, Templating: r.Templating,
		DataVersion: r.DataVersion,
	}
	if v := r.current(); v != nil && v.Sealed != nil {
		o.sealed = *v.Sealed
	}
	return o
}

// get loads the record of an exact ID.
func (m *Manager) get(ctx context.Context, id string) (record, int64, error) {
	o, err := m.tbl.Get(ctx, id)
	if err != nil {
		return record{}, 0, err
	}
	r, err := m.decode(o)
	return r, o.ModRev, err
}

// resolve finds the record that ref names (see store.Table.Resolve).
func (m *Manager) resolve(ctx context.Context, ref string) (record, int64, error) {
	o, err := m.tbl.Resolve(ctx, m.kind.Name, ref)
	if err != nil {
		return record{}, 0, err
	}
	r, err := m.decode(o)
	return r, o.ModRev, err
}

// Get returns the object that ref names.
func (m *Manager) Get(ctx context.Context, ref string) (Object, error) {
	// A full ID is served from the mirror (decoded at its first read);
	// names and prefixes go through the store's index, as does an entry
	// that does not open now.
	if m.mirror != nil && identity.Valid(ref) {
		var e *mirrored
		err := m.mirror.Read(ctx, m.kind.Table, func(items map[string]store.Entry) {
			if it, ok := items[ref]; ok {
				e = it.Value.(*mirrored)
			}
		})
		if err == nil && e != nil {
			if o, err := m.object(e); err == nil {
				return o, nil
			}
		}
	}
	r, rev, err := m.resolve(ctx, ref)
	if err != nil {
		return Object{}, err
	}
	return toObject(&r, rev), nil
}

// Filters selects objects in List. Within one field values are alternatives;
// fields combine with AND, as in Swarm.
type Filters struct {
	IDPrefixes   []string
	NamePrefixes []string
	Names        []string
	// Labels maps a key to a required value; "" means the key must exist.
	Labels map[string]string
}

func (f *Filters) match(o *Object) bool {
	if len(f.Names) > 0 && !containsFold(f.Names, o.Name) {
		return false
	}
	if len(f.NamePrefixes) > 0 && !hasAnyPrefixFold(o.Name, f.NamePrefixes) {
		return false
	}
	if len(f.IDPrefixes) > 0 && !hasAnyPrefix(o.ID, f.IDPrefixes) {
		return false
	}
	for k, v := range f.Labels {
		got, ok := o.Labels[k]
		if !ok || (v != "" && got != v) {
			return false
		}
	}
	return true
}

// Names match case-insensitively, as Swarm's name index does.
func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func hasAnyPrefixFold(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if len(s) >= len(p) && strings.EqualFold(s[:len(p)], p) {
			return true
		}
	}
	return false
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// List returns the objects that match f, ordered by ID.
func (m *Manager) List(ctx context.Context, f Filters) ([]Object, error) {
	if m.mirror != nil {
		var es []*mirrored
		err := m.mirror.Read(ctx, m.kind.Table, func(items map[string]store.Entry) {
			es = make([]*mirrored, 0, len(items))
			for _, e := range items {
				es = append(es, e.Value.(*mirrored))
			}
		})
		if err == nil {
			// Entries are sorted, not Objects: swapping whole Objects
			// was a third of a 10,000-object list's time.
			slices.SortFunc(es, func(a, b *mirrored) int { return strings.Compare(a.id, b.id) })
			all, derr := m.mirroredObjects(es)
			if derr == nil {
				out := make([]Object, 0, len(all))
				for i := range all {
					if f.match(&all[i]) {
						out = append(out, all[i])
					}
				}
				return out, nil
			}
			// An entry that does not open now (keys being rotated or
			// unloaded): the store's read decides, as for a stale mirror.
		} else if !errors.Is(err, store.ErrMirrorStale) {
			return nil, err
		}
	}
	prefix := ""
	if len(f.IDPrefixes) == 1 {
		prefix = f.IDPrefixes[0]
	}
	objs, err := m.tbl.ListPrefix(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]Object, 0, len(objs))
	for _, so := range objs {
		r, err := m.decode(so)
		if err != nil {
			return nil, err
		}
		o := toObject(&r, so.ModRev)
		if f.match(&o) {
			out = append(out, o)
		}
	}
	return out, nil
}

// Update changes the labels of the object ref names, if version is current.
// Unlike Swarm, changed data is accepted: it becomes a new version (the
// docker CLI's `stack deploy` with a changed file sends it), in the same
// transaction as the labels. Unchanged data makes no version. Driver and
// templating changes are ignored, as in Swarm.
func (m *Manager) Update(ctx context.Context, ref string, version uint64, s Spec) error {
	r, _, err := m.resolve(ctx, ref)
	if err != nil {
		return err
	}
	if s.Name != r.Name {
		return errdefs.InvalidArgument("only updates to Labels are allowed")
	}
	if err := validateKeep(s.Labels); err != nil {
		return err
	}
	if s.Data != nil && (len(s.Data) == 0 || len(s.Data) >= m.kind.MaxSize) {
		return errdefs.InvalidArgument("%s data must be larger than 0 and less than %d bytes", m.kind.Name, m.kind.MaxSize)
	}
	r.Labels = s.Labels
	now := m.now()
	r.UpdatedAt = now
	added := false
	if s.Data != nil {
		if added, err = m.addVersion(ctx, &r, s.Data, now); err != nil {
			return err
		}
	}
	if err := m.write(ctx, &r, int64(version)); err != nil {
		return err
	}
	if added {
		m.log.Info(m.kind.Name+" rotated", "id", r.ID, "name", r.Name, "dataVersion", r.DataVersion)
	} else {
		m.log.Info(m.kind.Name+" updated", "id", r.ID, "name", r.Name)
	}
	return nil
}

// write stores r if the object is still at revision rev.
func (m *Manager) write(ctx context.Context, r *record, rev int64) error {
	val, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode %s: %w: %w", m.kind.Name, errdefs.ErrInternal, err)
	}
	if _, err := m.tbl.Update(ctx, r.ID, rev, val); err != nil {
		switch {
		case errors.Is(err, store.ErrStale):
			return errdefs.OutOfSequence()
		case errors.Is(err, store.ErrNotFound):
			return errdefs.ControlNotFound("%s %s not found", m.kind.Name, r.ID)
		}
		return err
	}
	return nil
}

// Remove deletes the object ref names unless a service spec references it.
func (m *Manager) Remove(ctx context.Context, ref string) error {
	if done, err := m.removeMirrored(ctx, ref); done {
		return err
	}
	r, _, err := m.resolve(ctx, ref)
	if err != nil {
		return err
	}
	noRefs := store.NoneUnder(store.RefPrefix(m.kind.Table, r.ID))
	err = m.tbl.Delete(ctx, r.ID, r.Name, 0, []store.Cond{noRefs})
	switch {
	case err == nil:
		m.log.Info(m.kind.Name+" removed", "id", r.ID, "name", r.Name)
		return nil
	case errors.Is(err, store.ErrGuard):
		return m.inUse(ctx, &r)
	case errors.Is(err, store.ErrNotFound):
		return errdefs.ControlNotFound("%s %s not found", m.kind.Name, r.ID)
	}
	return err
}

// removeMirrored removes the object of full ID ref as the mirror has it,
// in one transaction guarded by the revision the mirror saw, instead of
// reading it from the store first (a linearizable read: a read-index round
// on the leader, plus opening and decoding the value). A full ID resolves
// to that object before any name or prefix, and the guard makes the delete
// apply only to the version seen, so the outcome is the one the resolving
// path would give. done is false when that path must decide: the ref is no
// full ID, the mirror lacks the object, or the guarded delete was refused
// (the object changed or went since, or is in use, whose message needs the
// store's references).
func (m *Manager) removeMirrored(ctx context.Context, ref string) (done bool, err error) {
	if m.mirror == nil || !identity.Valid(ref) {
		return false, nil
	}
	e, ok := m.mirror.Entry(m.kind.Table, ref)
	if !ok {
		return false, nil
	}
	me, ok := e.Value.(*mirrored)
	if !ok {
		return false, nil
	}
	o, err := m.object(me)
	if err != nil {
		return false, nil
	}
	noRefs := store.NoneUnder(store.RefPrefix(m.kind.Table, o.ID))
	err = m.tbl.Delete(ctx, o.ID, o.Name, e.ModRev, []store.Cond{noRefs})
	switch {
	case err == nil:
		m.log.Info(m.kind.Name+" removed", "id", o.ID, "name", o.Name)
		return true, nil
	case errors.Is(err, store.ErrGuard), errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrStale):
		return false, nil
	}
	return true, err
}

// inUse builds Swarm's in-use message from the reference markers, whose
// values are the referring services' names.
func (m *Manager) inUse(ctx context.Context, r *record) error {
	names, err := m.st.RefValues(ctx, m.kind.Table, r.ID, 0)
	if err != nil {
		return err
	}
	sort.Strings(names)
	return inUseError(m.kind.Name, r.Name, names)
}

// inUseError is Swarm's in-use text. Markers of standalone containers
// (ContainerRefValue) are listed as containers where Swarm says service.
func inUseError(kind, name string, values []string) error {
	var services, containers []string
	for _, v := range values {
		if c, ok := strings.CutPrefix(v, containerRefValuePrefix); ok {
			containers = append(containers, c)
		} else {
			services = append(services, v)
		}
	}
	var parts []string
	for _, p := range []struct {
		noun string
		list []string
	}{{"service", services}, {"container", containers}} {
		if len(p.list) == 0 {
			continue
		}
		sort.Strings(p.list)
		noun := p.noun
		if len(p.list) != 1 {
			noun += "s"
		}
		parts = append(parts, "the following "+noun+": "+strings.Join(p.list, ", "))
	}
	return errdefs.InvalidArgument("%s '%s' is in use by %s", kind, name, strings.Join(parts, "; and by "))
}

// containerRefValuePrefix starts the value of the in-use markers that
// standalone containers' grants write (internal/manager/standalone). No
// service name starts with a NUL byte.
const containerRefValuePrefix = "\x00container:"

// ContainerRefOwner is the owner, in store.RefKey, of a standalone
// container's grant.
func ContainerRefOwner(grantID string) string { return "container/" + grantID }

// ContainerRefValue is the value of a standalone container's in-use
// marker: its name, marked as a container's.
func ContainerRefValue(containerName string) string { return containerRefValuePrefix + containerName }

// containerHolderPrefix marks, among the holders of a version (Holders),
// a standalone container rather than a task.
const containerHolderPrefix = "container:"

// ContainerHolder names a standalone container among the holders of a
// version: task IDs never contain a colon, container IDs and names never.
func ContainerHolder(containerID, name string) string {
	return containerHolderPrefix + containerID + ":" + name
}

// ParseContainerHolder reads a ContainerHolder; ok is false for a task.
func ParseContainerHolder(h string) (containerID, name string, ok bool) {
	rest, ok := strings.CutPrefix(h, containerHolderPrefix)
	if !ok {
		return "", "", false
	}
	containerID, name, ok = strings.Cut(rest, ":")
	return containerID, name, ok
}

func (m *Manager) open(r *record) ([]byte, error) {
	return m.openVersion(r, r.DataVersion)
}

// openVersion opens version n of r; a destroyed or pruned version is gone.
func (m *Manager) openVersion(r *record, n int) ([]byte, error) {
	v := r.find(n)
	if v == nil || v.Sealed == nil {
		return nil, errdefs.NotFound("%s %s has no version %d (destroyed or not kept)", m.kind.Name, r.ID, n)
	}
	b, err := m.seal.Open(*v.Sealed, m.aad(r.ID, n))
	if err != nil {
		// The message names the object, never its content.
		return nil, fmt.Errorf("open %s %s: %w: %w", m.kind.Name, r.ID, errdefs.ErrInternal, err)
	}
	return b, nil
}

// Reveal returns the data of an object of a readable kind (configs) for an
// API response; for secrets it refuses, whatever the caller.
func (m *Manager) Reveal(o *Object) ([]byte, error) {
	if !m.kind.Readable {
		return nil, fmt.Errorf("%s data is never returned: %w", m.kind.Name, errdefs.ErrForbidden)
	}
	b, err := m.seal.Open(o.sealed, m.aad(o.ID, o.DataVersion))
	if err != nil {
		return nil, fmt.Errorf("open %s %s: %w: %w", m.kind.Name, o.ID, errdefs.ErrInternal, err)
	}
	return b, nil
}

// Content returns the plaintext of the object with exact id and the name of
// its templating driver ("" when it is not templated), for the dispatcher.
// Callers own the slice and should Wipe it when done.
func (m *Manager) Content(ctx context.Context, id string) ([]byte, string, error) {
	return m.ContentVersion(ctx, id, 0)
}

// ContentVersion is Content of version n (0: the current version): a task
// is given the version it holds, not whatever is current.
func (m *Manager) ContentVersion(ctx context.Context, id string, n int) ([]byte, string, error) {
	r, _, err := m.get(ctx, id)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, "", errdefs.NotFound("%s %s not found", m.kind.Name, id)
		}
		return nil, "", err
	}
	if n == 0 {
		n = r.DataVersion
	}
	b, err := m.openVersion(&r, n)
	if err != nil {
		return nil, "", err
	}
	templating := ""
	if r.Templating != nil {
		templating = r.Templating.Name
	}
	return b, templating, nil
}

// Data returns the plaintext of the object with exact id. Callers own the
// slice and should Wipe it when done.
func (m *Manager) Data(ctx context.Context, id string) ([]byte, error) {
	r, _, err := m.get(ctx, id)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, errdefs.NotFound("%s %s not found", m.kind.Name, id)
		}
		return nil, err
	}
	return m.open(&r)
}
