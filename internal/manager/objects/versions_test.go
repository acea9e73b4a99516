package objects

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
)

func mustCreate(t *testing.T, m *Manager, name, data string, labels map[string]string) string {
	t.Helper()
	id, err := m.Create(context.Background(), Spec{Name: name, Data: []byte(data), Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mustRotate(t *testing.T, m *Manager, id, data string) int {
	t.Helper()
	n, _, err := m.Rotate(context.Background(), id, 0, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func content(t *testing.T, m *Manager, id string, n int) string {
	t.Helper()
	b, _, err := m.ContentVersion(context.Background(), id, n)
	if err != nil {
		t.Fatalf("version %d: %v", n, err)
	}
	return string(b)
}

func TestRotateVersions(t *testing.T) {
	m, _ := newManager(t, Secret)
	ctx := context.Background()
	id := mustCreate(t, m, "s", "v1", nil)
	o, _ := m.Get(ctx, id)
	tests := []struct {
		name      string
		rev       uint64
		data      string
		wantN     int
		wantAdded bool
		wantErr   error
	}{
		{"new value", o.Version, "v2", 2, true, nil},
		{"stale revision", o.Version, "v3", 0, false, errdefs.ErrConflict},
		{"unchanged value", 0, "v2", 2, false, nil},
		{"any revision", 0, "v3", 3, true, nil},
		{"empty", 0, "", 0, false, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		n, added, err := m.Rotate(ctx, id, tt.rev, []byte(tt.data))
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("%s: err %v, want %v", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || n != tt.wantN || added != tt.wantAdded {
			t.Errorf("%s: got %d %v %v, want %d %v", tt.name, n, added, err, tt.wantN, tt.wantAdded)
		}
	}
	for n, want := range map[int]string{1: "v1", 2: "v2", 3: "v3", 0: "v3"} {
		if got := content(t, m, id, n); got != want {
			t.Errorf("version %d: got %q want %q", n, got, want)
		}
	}
	o2, _ := m.Get(ctx, id)
	if o2.ID != id || o2.Name != "s" || o2.DataVersion != 3 || o2.Version <= o.Version {
		t.Errorf("after rotations: %+v", o2)
	}
	// The docker API's update with new data makes a version too, together
	// with its labels.
	if err := m.Update(ctx, id, o2.Version, Spec{Name: "s", Data: []byte("v4"), Labels: map[string]string{"l": "x"}}); err != nil {
		t.Fatal(err)
	}
	o3, _ := m.Get(ctx, id)
	if o3.DataVersion != 4 || o3.Labels["l"] != "x" || content(t, m, id, 0) != "v4" {
		t.Errorf("after update with data: %+v", o3)
	}
}

func TestRetention(t *testing.T) {
	m, _ := newManager(t, Secret)
	held := map[int][]string{}
	m.UseHolders(func(context.Context, string, string) (map[int][]string, error) { return held, nil })
	tests := []struct {
		name    string
		labels  map[string]string
		cluster int
		held    map[int][]string
		rotates int
		want    []int
	}{
		{"default keeps 10", nil, 0, nil, 12, []int{4, 5, 6, 7, 8, 9, 10, 11, 12, 13}},
		{"label keeps 3", map[string]string{KeepLabel: "3"}, 0, nil, 5, []int{4, 5, 6}},
		{"cluster keeps 2", nil, 2, nil, 4, []int{4, 5}},
		{"label beats cluster", map[string]string{KeepLabel: "3"}, 2, nil, 4, []int{3, 4, 5}},
		{"held versions stay", map[string]string{KeepLabel: "2"}, 0, map[int][]string{1: {"t1"}, 3: {"t3"}}, 4, []int{1, 3, 5}},
	}
	for i, tt := range tests {
		keep := tt.cluster
		m.UseKeep(func() int { return keep })
		held = tt.held
		id := mustCreate(t, m, "r"+string(rune('a'+i)), "v1", tt.labels)
		for j := 0; j < tt.rotates; j++ {
			mustRotate(t, m, id, strings.Repeat("x", j+2))
		}
		_, vs, err := m.Versions(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for _, v := range vs {
			got = append(got, v.Version)
		}
		if !equalInts(got, tt.want) {
			t.Errorf("%s: kept %v, want %v", tt.name, got, tt.want)
		}
		if !vs[len(vs)-1].Current {
			t.Errorf("%s: newest not current", tt.name)
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDestroy(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := context.Background()
	m.UseHolders(func(_ context.Context, kind, _ string) (map[int][]string, error) {
		if kind != "secret" {
			t.Errorf("holders asked for kind %q", kind)
		}
		return map[int][]string{2: {"task2"}}, nil
	})
	id := mustCreate(t, m, "d", "canary-one-4c1e", nil)
	mustRotate(t, m, id, "v2")
	mustRotate(t, m, id, "v3")
	tests := []struct {
		name string
		n    int
		want error
	}{
		{"current", 3, errdefs.ErrFailedPrecondition},
		{"held by a task", 2, errdefs.ErrFailedPrecondition},
		{"missing", 9, errdefs.ErrNotFound},
		{"old", 1, nil},
		{"twice", 1, errdefs.ErrFailedPrecondition},
	}
	for _, tt := range tests {
		err := m.Destroy(ctx, id, 0, tt.n)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%s: err %v, want %v", tt.name, err, tt.want)
		}
	}
	if _, _, err := m.ContentVersion(ctx, id, 1); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("destroyed version opened: %v", err)
	}
	if _, _, err := m.Rollback(ctx, id, 0, 1); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("rollback to a destroyed version: %v", err)
	}
	raw, err := st.Table("secrets").Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var r record
	if err := json.Unmarshal(raw.Value, &r); err != nil {
		t.Fatal(err)
	}
	if v := r.find(1); v == nil || v.Sealed != nil {
		t.Fatalf("destroyed version still sealed in the record: %+v", v)
	}
	if got := content(t, m, id, 2); got != "v2" {
		t.Fatalf("held version: %q", got)
	}
	_, vs, err := m.Versions(ctx, id)
	if err != nil || len(vs) != 3 || !vs[0].Destroyed || vs[1].Destroyed || len(vs[1].HeldBy) != 1 {
		t.Fatalf("versions after destroy: %+v %v", vs, err)
	}
}

func TestRollback(t *testing.T) {
	m, _ := newManager(t, Config)
	ctx := context.Background()
	id := mustCreate(t, m, "c", "one", nil)
	if _, _, err := m.Rollback(ctx, id, 0, 0); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("rollback with one version: %v", err)
	}
	mustRotate(t, m, id, "two")
	mustRotate(t, m, id, "three")
	tests := []struct {
		name    string
		to      int
		wantN   int
		wantVal string
		wantErr error
	}{
		{"previous", 0, 4, "two", nil},
		{"to current", 4, 0, "", errdefs.ErrInvalidArgument},
		{"to 1", 1, 5, "one", nil},
		{"to 3", 3, 6, "three", nil},
		{"unknown", 42, 0, "", errdefs.ErrNotFound},
	}
	for _, tt := range tests {
		n, added, err := m.Rollback(ctx, id, 0, tt.to)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("%s: err %v want %v", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !added || n != tt.wantN || content(t, m, id, 0) != tt.wantVal {
			t.Errorf("%s: got %d %v %v, value %q", tt.name, n, added, err, content(t, m, id, 0))
		}
	}
}

func TestFingerprint(t *testing.T) {
	m, _ := newManager(t, Secret)
	ctx := context.Background()
	a := mustCreate(t, m, "a", "same", nil)
	b := mustCreate(t, m, "b", "same", nil)
	mustRotate(t, m, b, "different")
	_, va, _ := m.Versions(ctx, a)
	_, vb, _ := m.Versions(ctx, b)
	plain := sha256.Sum256([]byte("same"))
	switch {
	case va[0].Fingerprint == "" || va[0].Fingerprint != vb[0].Fingerprint:
		t.Errorf("same value, fingerprints %q %q", va[0].Fingerprint, vb[0].Fingerprint)
	case vb[0].Fingerprint == vb[1].Fingerprint:
		t.Errorf("different values share fingerprint %q", vb[1].Fingerprint)
	case strings.HasPrefix(hex.EncodeToString(plain[:]), va[0].Fingerprint):
		t.Errorf("fingerprint is a plain digest")
	}
	// A second manager over the same store (configs) uses the same key.
	m2 := New(Config, m.st, m.seal, nil)
	k1, err1 := m.fingerprintKey(ctx)
	k2, err2 := m2.fingerprintKey(ctx)
	if err1 != nil || err2 != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("fingerprint keys differ: %v %v", err1, err2)
	}
}

// TestLegacyRecord reads a record written before versions existed.
func TestLegacyRecord(t *testing.T) {
	m, st := newManager(t, Secret)
	ctx := context.Background()
	sealed, err := m.seal.Seal([]byte("old"), m.aad("legacyid0000000000000000a", 1))
	if err != nil {
		t.Fatal(err)
	}
	val, _ := json.Marshal(map[string]any{"id": "legacyid0000000000000000a", "name": "old", "dataVersion": 1, "sealed": sealed})
	if _, err := st.Table("secrets").Create(ctx, "legacyid0000000000000000a", "old", val); err != nil {
		t.Fatal(err)
	}
	if got := content(t, m, "legacyid0000000000000000a", 0); got != "old" {
		t.Fatalf("legacy value %q", got)
	}
	if n := mustRotate(t, m, "legacyid0000000000000000a", "new"); n != 2 || content(t, m, "legacyid0000000000000000a", 1) != "old" {
		t.Fatalf("legacy rotate: %d", n)
	}
}

// TestLargeValuesFit: versions of large values are dropped (oldest unheld
// first) so the record stays within one store write; when held versions
// alone do not fit, the rotation is refused and nothing changes.
func TestLargeValuesFit(t *testing.T) {
	m, _ := newManager(t, Config)
	ctx := context.Background()
	held := map[int][]string{}
	m.UseHolders(func(context.Context, string, string) (map[int][]string, error) { return held, nil })
	big := func(c byte) string { return strings.Repeat(string(c), 600<<10) }
	id := mustCreate(t, m, "big", big('a'), nil)
	mustRotate(t, m, id, big('b'))
	mustRotate(t, m, id, big('c'))
	_, vs, err := m.Versions(ctx, id)
	if err != nil || len(vs) != 1 || vs[0].Version != 3 {
		t.Fatalf("versions of a large value: %+v %v", vs, err)
	}
	held = map[int][]string{3: {"task"}}
	if _, _, err := m.Rotate(ctx, id, 0, []byte(big('d'))); !errors.Is(err, errdefs.ErrNoSpace) {
		t.Fatalf("rotation that cannot fit: %v", err)
	}
	if got := content(t, m, id, 0); got != big('c') {
		t.Fatal("a refused rotation changed the value")
	}
}
