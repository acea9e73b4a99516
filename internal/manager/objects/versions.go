package objects

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/store"
)

// KeepLabel is the per-object label that sets how many versions are kept.
const KeepLabel = "io.hush.versions.keep"

// DefaultKeep is how many versions are kept when neither the label nor the
// cluster setting says otherwise.
const DefaultKeep = 10

// maxKeep bounds the versions one object may keep: each costs up to the
// kind's MaxSize in the store.
const maxKeep = 100

// Holders reports, for object id of a kind, which tasks hold which version
// (version number → task IDs). Tasks that are gone hold nothing.
type Holders func(ctx context.Context, kind, id string) (map[int][]string, error)

// rotation is the Manager's state for versions.
type rotation struct {
	holders Holders
	// keep returns the cluster-wide default retention (0: DefaultKeep).
	keep func() int

	mu    sync.Mutex
	fpKey []byte
}

// UseHolders tells the manager which versions tasks hold, so that neither
// retention nor destroy removes a version still in use.
func (m *Manager) UseHolders(h Holders) { m.rot.holders = h }

// UseKeep sets the cluster-wide retention default (a func so that a
// cluster update applies at once).
func (m *Manager) UseKeep(keep func() int) { m.rot.keep = keep }

func validateKeep(labels map[string]string) error {
	v, ok := labels[KeepLabel]
	if !ok {
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxKeep {
		return errdefs.InvalidArgument("label %s must be a number of versions from 1 to %d, not %q", KeepLabel, maxKeep, v)
	}
	return nil
}

func (m *Manager) keepOf(r *record) int {
	if n, err := strconv.Atoi(r.Labels[KeepLabel]); err == nil && n >= 1 && n <= maxKeep {
		return n
	}
	if m.rot.keep != nil {
		if n := m.rot.keep(); n >= 1 && n <= maxKeep {
			return n
		}
	}
	return DefaultKeep
}

func (m *Manager) held(ctx context.Context, id string) (map[int][]string, error) {
	if m.rot.holders == nil {
		return nil, nil
	}
	h, err := m.rot.holders(ctx, m.kind.Name, id)
	if err != nil {
		return nil, fmt.Errorf("%s %s holders: %w", m.kind.Name, id, err)
	}
	return h, nil
}

// fpTable and fpID are where the fingerprint key lives, sealed.
const (
	fpTable = "hushmeta"
	fpID    = "fingerprint-key"
	fpAAD   = "hush/hushmeta/fingerprint-key"
)

// fingerprintKey returns hush's own HMAC key for fingerprints, made on
// first use and kept in the store sealed by the keyring. A plain digest of
// a low-entropy secret could be brute-forced from `hush secret versions`
// output; an HMAC under a key that never leaves hushd cannot.
func (m *Manager) fingerprintKey(ctx context.Context) ([]byte, error) {
	m.rot.mu.Lock()
	defer m.rot.mu.Unlock()
	if m.rot.fpKey != nil {
		return m.rot.fpKey, nil
	}
	tbl := m.st.Table(fpTable)
	for attempt := 0; attempt < 3; attempt++ {
		o, err := tbl.Get(ctx, fpID)
		if err == nil {
			var s keyring.Sealed
			if err := json.Unmarshal(o.Value, &s); err != nil {
				return nil, fmt.Errorf("fingerprint key: %w: %w", errdefs.ErrInternal, err)
			}
			k, err := m.seal.Open(s, []byte(fpAAD))
			if err != nil {
				return nil, fmt.Errorf("fingerprint key: %w: %w", errdefs.ErrInternal, err)
			}
			m.rot.fpKey = k
			return k, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return nil, fmt.Errorf("fingerprint key: %w: %w", errdefs.ErrInternal, err)
		}
		s, err := m.seal.Seal(k, []byte(fpAAD))
		keyring.Wipe(k)
		if err != nil {
			return nil, fmt.Errorf("fingerprint key: %w: %w", errdefs.ErrInternal, err)
		}
		val, err := json.Marshal(s)
		if err != nil {
			return nil, fmt.Errorf("fingerprint key: %w: %w", errdefs.ErrInternal, err)
		}
		// Another manager (secrets or configs) may create it first: read
		// the winner's key on the next round.
		if _, err := tbl.Create(ctx, fpID, "", val); err != nil && !errors.Is(err, store.ErrNameTaken) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("fingerprint key: %w: not created", errdefs.ErrInternal)
}

// fingerprint is the first 12 bytes of HMAC-SHA256(key, kind || value), hex.
func (m *Manager) fingerprint(ctx context.Context, data []byte) (string, error) {
	k, err := m.fingerprintKey(ctx)
	if err != nil {
		return "", err
	}
	h := hmac.New(sha256.New, k)
	h.Write([]byte(m.kind.Table + "\x00"))
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil)[:12]), nil
}

// newVersion seals data as version n of id under a fresh data key.
func (m *Manager) newVersion(ctx context.Context, id string, n int, data []byte, now time.Time) (version, error) {
	fp, err := m.fingerprint(ctx, data)
	if err != nil {
		return version{}, err
	}
	sealed, err := m.seal.Seal(data, m.aad(id, n))
	if err != nil {
		return version{}, fmt.Errorf("seal %s: %w: %w", m.kind.Name, errdefs.ErrInternal, err)
	}
	return version{N: n, Created: now, Fingerprint: fp, Sealed: &sealed}, nil
}

// addVersion makes data the current version of r unless it equals the
// current value (compared in constant time), then applies retention. It
// reports whether a version was added.
func (m *Manager) addVersion(ctx context.Context, r *record, data []byte, now time.Time) (bool, error) {
	if cur, err := m.open(r); err == nil {
		same := subtle.ConstantTimeCompare(cur, data) == 1
		keyring.Wipe(cur)
		if same {
			return false, nil
		}
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return false, err
	}
	n := 0
	for _, v := range r.Versions {
		n = max(n, v.N)
	}
	v, err := m.newVersion(ctx, r.ID, n+1, data, now)
	if err != nil {
		return false, err
	}
	r.Versions = append(r.Versions, v)
	r.DataVersion = v.N
	held, err := m.held(ctx, r.ID)
	if err != nil {
		return false, err
	}
	m.retain(r, held)
	if err := m.fit(r, held); err != nil {
		return false, err
	}
	return true, nil
}

// maxRecordBytes bounds one object's stored record, all versions included:
// one store write must stay under etcd's request limit (1.5 MiB), and the
// largest single version (a config just under 1000 KiB, base64 in JSON)
// takes about 1.33 MiB.
const maxRecordBytes = 1400 << 10

// fit drops the oldest versions no task holds until the record fits in
// maxRecordBytes, so large values keep fewer versions than the retention
// asks; if held versions alone do not fit, the rotation is refused.
func (m *Manager) fit(r *record, held map[int][]string) error {
	for {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode %s: %w: %w", m.kind.Name, errdefs.ErrInternal, err)
		}
		if len(b) <= maxRecordBytes {
			return nil
		}
		drop := -1
		for i, v := range r.Versions {
			if v.N != r.DataVersion && len(held[v.N]) == 0 && v.Sealed != nil {
				drop = i
				break
			}
		}
		if drop < 0 {
			return errdefs.NoSpace("%s %s: the new version does not fit next to the versions that tasks and containers still hold (%d bytes, at most %d): wait for the rollout, or destroy unused versions", m.kind.Name, r.Name, len(b), maxRecordBytes)
		}
		r.Versions = append(r.Versions[:drop], r.Versions[drop+1:]...)
	}
}

// retain drops the oldest versions beyond the object's retention, never the
// current one and never one a task holds.
func (m *Manager) retain(r *record, held map[int][]string) {
	keep := m.keepOf(r)
	sort.Slice(r.Versions, func(i, j int) bool { return r.Versions[i].N < r.Versions[j].N })
	excess := len(r.Versions) - keep
	if excess <= 0 {
		return
	}
	out := r.Versions[:0]
	for _, v := range r.Versions {
		if excess > 0 && v.N != r.DataVersion && len(held[v.N]) == 0 {
			excess--
			continue
		}
		out = append(out, v)
	}
	r.Versions = out
}

// checkRev refuses a stale expected revision (0: any).
func checkRev(want uint64, rev int64) error {
	if want != 0 && want != uint64(rev) {
		return errdefs.OutOfSequence()
	}
	return nil
}

// Rotate makes data the current version of the object ref names, in one
// transaction, if the object is at revision rev (0: whatever it is). It
// returns the current version number afterwards and whether it changed.
func (m *Manager) Rotate(ctx context.Context, ref string, rev uint64, data []byte) (int, bool, error) {
	if len(data) == 0 || len(data) >= m.kind.MaxSize {
		return 0, false, errdefs.InvalidArgument("%s data must be larger than 0 and less than %d bytes", m.kind.Name, m.kind.MaxSize)
	}
	r, cur, err := m.resolve(ctx, ref)
	if err != nil {
		return 0, false, err
	}
	if err := checkRev(rev, cur); err != nil {
		return 0, false, err
	}
	now := m.now()
	added, err := m.addVersion(ctx, &r, data, now)
	if err != nil || !added {
		return r.DataVersion, false, err
	}
	r.UpdatedAt = now
	if err := m.write(ctx, &r, cur); err != nil {
		return 0, false, err
	}
	m.log.Info(m.kind.Name+" rotated", "id", r.ID, "name", r.Name, "dataVersion", r.DataVersion)
	return r.DataVersion, true, nil
}

// Rollback makes the value of version to (0: the newest version before the
// current one that can still be opened) current again, as a new version.
func (m *Manager) Rollback(ctx context.Context, ref string, rev uint64, to int) (int, bool, error) {
	r, cur, err := m.resolve(ctx, ref)
	if err != nil {
		return 0, false, err
	}
	if err := checkRev(rev, cur); err != nil {
		return 0, false, err
	}
	if to == 0 {
		for _, v := range r.Versions {
			if v.N < r.DataVersion && v.Sealed != nil && v.N > to {
				to = v.N
			}
		}
		if to == 0 {
			return 0, false, errdefs.FailedPrecondition("%s %s has no earlier version to roll back to", m.kind.Name, r.Name)
		}
	}
	if to == r.DataVersion {
		return 0, false, errdefs.InvalidArgument("version %d is already the current version of %s %s", to, m.kind.Name, r.Name)
	}
	data, err := m.openVersion(&r, to)
	if err != nil {
		return 0, false, err
	}
	defer keyring.Wipe(data)
	now := m.now()
	added, err := m.addVersion(ctx, &r, data, now)
	if err != nil || !added {
		return r.DataVersion, false, err
	}
	r.UpdatedAt = now
	if err := m.write(ctx, &r, cur); err != nil {
		return 0, false, err
	}
	m.log.Info(m.kind.Name+" rolled back", "id", r.ID, "name", r.Name, "from", to, "dataVersion", r.DataVersion)
	return r.DataVersion, true, nil
}

// Destroy erases version n of the object ref names: its sealed value and
// wrapped data key leave the record, so it can never be opened again. The
// current version and versions a task holds are refused.
func (m *Manager) Destroy(ctx context.Context, ref string, rev uint64, n int) error {
	r, cur, err := m.resolve(ctx, ref)
	if err != nil {
		return err
	}
	if err := checkRev(rev, cur); err != nil {
		return err
	}
	v := r.find(n)
	switch {
	case v == nil:
		return errdefs.NotFound("%s %s has no version %d", m.kind.Name, r.Name, n)
	case v.Sealed == nil:
		return errdefs.FailedPrecondition("version %d of %s %s is already destroyed", n, m.kind.Name, r.Name)
	case n == r.DataVersion:
		return errdefs.FailedPrecondition("version %d is the current version of %s %s: rotate or roll back first", n, m.kind.Name, r.Name)
	}
	held, err := m.held(ctx, r.ID)
	if err != nil {
		return err
	}
	if err := heldError(held[n], n, m.kind.Name, r.Name); err != nil {
		return err
	}
	v.Sealed = nil
	r.UpdatedAt = m.now()
	if err := m.write(ctx, &r, cur); err != nil {
		return err
	}
	m.log.Info(m.kind.Name+" version destroyed", "id", r.ID, "name", r.Name, "version", n)
	return nil
}

// heldError refuses to destroy version n while tasks or standalone
// containers hold it, naming the first of each.
func heldError(holders []string, n int, kind, name string) error {
	var tasks, containers []string
	for _, h := range holders {
		if id, cname, ok := ParseContainerHolder(h); ok {
			if cname == "" {
				cname = id
			}
			containers = append(containers, cname)
		} else {
			tasks = append(tasks, h)
		}
	}
	var by []string
	if len(tasks) > 0 {
		by = append(by, fmt.Sprintf("%d running task(s): %s", len(tasks), tasks[0]))
	}
	if len(containers) > 0 {
		by = append(by, fmt.Sprintf("%d container(s): %s", len(containers), containers[0]))
	}
	if len(by) == 0 {
		return nil
	}
	return errdefs.FailedPrecondition("version %d of %s %s is held by %s", n, kind, name, strings.Join(by, " and "))
}

// VersionInfo describes one version for `hush secret versions`.
type VersionInfo struct {
	Version     int
	Created     time.Time
	Fingerprint string
	Current     bool
	Destroyed   bool
	// HeldBy are the IDs of the tasks that hold this version, and the
	// standalone containers (ContainerHolder).
	HeldBy []string
}

// Versions returns the object ref names and its versions, oldest first.
func (m *Manager) Versions(ctx context.Context, ref string) (Object, []VersionInfo, error) {
	r, rev, err := m.resolve(ctx, ref)
	if err != nil {
		return Object{}, nil, err
	}
	held, err := m.held(ctx, r.ID)
	if err != nil {
		return Object{}, nil, err
	}
	out := make([]VersionInfo, 0, len(r.Versions))
	for _, v := range r.Versions {
		hb := append([]string(nil), held[v.N]...)
		sort.Strings(hb)
		out = append(out, VersionInfo{
			Version: v.N, Created: v.Created, Fingerprint: v.Fingerprint,
			Current: v.N == r.DataVersion, Destroyed: v.Sealed == nil, HeldBy: hb,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return toObject(&r, rev), out, nil
}

// VersionsOf maps each of ids that exists to its current version number,
// for the orchestrator's up-to-date checks. It looks up only the objects
// asked for: the orchestrator passes the ones its services mount, and a
// pass that listed every object made each create cost O(objects).
func (m *Manager) VersionsOf(ctx context.Context, ids []string) (map[string]int, error) {
	out := make(map[string]int, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	if m.mirror != nil {
		var es []*mirrored
		err := m.mirror.Read(ctx, m.kind.Table, func(items map[string]store.Entry) {
			for _, id := range ids {
				if e, ok := items[id]; ok {
					es = append(es, e.Value.(*mirrored))
				}
			}
		})
		if err == nil {
			objs, derr := m.mirroredObjects(es)
			if derr == nil {
				for _, o := range objs {
					out[o.ID] = o.DataVersion
				}
				return out, nil
			}
		} else if !errors.Is(err, store.ErrMirrorStale) {
			return nil, err
		}
	}
	for _, id := range ids {
		r, _, err := m.get(ctx, id)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[id] = r.DataVersion
	}
	return out, nil
}
