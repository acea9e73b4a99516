package services

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

func authManager(t *testing.T, withSealer bool) (*Manager, *store.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := storetest.New(t)
	mir := store.NewMirror(st)
	m := New(st, mir, nil)
	if withSealer {
		mk, err := keyring.GenerateMasterKey()
		if err != nil {
			t.Fatal(err)
		}
		kr, err := keyring.New(mk)
		if err != nil {
			t.Fatal(err)
		}
		m.UseSealer(kr)
	}
	done := make(chan struct{})
	go func() { mir.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := mir.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return m, st
}

// encAuth is an X-Registry-Auth value as the docker CLI sends it.
func encAuth(user, password string) []byte {
	b, _ := json.Marshal(map[string]string{"username": user, "password": password, "serveraddress": "127.0.0.1:5000"})
	return []byte(base64.URLEncoding.EncodeToString(b))
}

func wantAuth(t *testing.T, m *Manager, id string, want []byte) {
	t.Helper()
	got, err := m.RegistryAuth(context.Background(), id)
	if err != nil {
		t.Fatalf("RegistryAuth: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("RegistryAuth = %q, want %q", got, want)
	}
}

// noTrace fails if the stored record or the served service holds the
// password or the header value in any form but sealed.
func noTrace(t *testing.T, m *Manager, st *store.Store, id string, forms ...string) {
	t.Helper()
	ctx := context.Background()
	svc, err := m.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	served, _ := json.Marshal(svc.Service)
	o, err := st.Table("services").Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range forms {
		if bytes.Contains(served, []byte(f)) {
			t.Fatalf("the served service holds %q", f)
		}
		if bytes.Contains(o.Value, []byte(f)) {
			t.Fatalf("the stored service holds %q in the clear", f)
		}
	}
	if bytes.Contains(served, []byte("ullAuth")) {
		t.Fatalf("the served service names its credentials: %s", served)
	}
}

func TestRegistryAuthLifecycle(t *testing.T) {
	m, st := authManager(t, true)
	ctx := context.Background()
	a1, a2, a3 := encAuth("alice", "pw-one-4f1c"), encAuth("alice", "pw-two-9d2e"), encAuth("bob", "pw-three-77aa")

	id, err := m.CreateWith(ctx, spec("web"), CreateOptions{RegistryAuth: a1})
	if err != nil {
		t.Fatal(err)
	}
	wantAuth(t, m, id, a1)
	noTrace(t, m, st, id, "pw-one-4f1c", string(a1))

	update := func(opt UpdateOptions) error {
		t.Helper()
		svc, err := m.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		next := svc.Spec
		next.Labels = map[string]string{"n": svc.ID + string(rune('a'+svc.SpecVersion))}
		opt.Version = svc.Version.Index
		return m.Update(ctx, id, next, opt)
	}
	steps := []struct {
		name string
		opt  UpdateOptions
		want []byte // the credentials after the step
		err  string // the refusal, if one; nothing changes
	}{
		{"no header, no source: kept", UpdateOptions{}, a1, ""},
		{"no header, from spec: kept", UpdateOptions{RegistryAuthFrom: swarm.RegistryAuthFromSpec}, a1, ""},
		{"new header replaces", UpdateOptions{RegistryAuth: a2}, a2, ""},
		{"from previous spec", UpdateOptions{RegistryAuthFrom: swarm.RegistryAuthFromPreviousSpec}, a1, ""},
		{"header wins over source", UpdateOptions{RegistryAuth: a3, RegistryAuthFrom: swarm.RegistryAuthFromPreviousSpec}, a3, ""},
		{"rollback swaps", UpdateOptions{Rollback: true}, a1, ""},
		{"rollback again", UpdateOptions{Rollback: true}, a3, ""},
		{"bad source", UpdateOptions{RegistryAuthFrom: "elsewhere"}, a3, "invalid registryAuthFrom 'elsewhere'"},
		{"not base64url", UpdateOptions{RegistryAuth: []byte("pw-bad-0000!!")}, a3, "invalid X-Registry-Auth header: must be base64url-encoded JSON registry credentials"},
		{"not JSON", UpdateOptions{RegistryAuth: []byte(base64.URLEncoding.EncodeToString([]byte("pw-bad-0000")))}, a3, "invalid X-Registry-Auth header: must be base64url-encoded JSON registry credentials"},
		{"too long", UpdateOptions{RegistryAuth: bytes.Repeat([]byte("A"), MaxRegistryAuth+1)}, a3, "invalid X-Registry-Auth header: longer than 16384 bytes"},
	}
	for _, s := range steps {
		before, _ := m.Get(ctx, id)
		err := update(s.opt)
		if s.err == "" && err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if s.err != "" {
			if err == nil || err.Error() != s.err || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("%s: got %v, want 400 %q", s.name, err, s.err)
			}
			if strings.Contains(err.Error(), "pw-bad") {
				t.Fatalf("%s: the refusal quotes the header", s.name)
			}
			after, _ := m.Get(ctx, id)
			if after.Version.Index != before.Version.Index {
				t.Fatalf("%s: refused, yet the service changed", s.name)
			}
		}
		wantAuth(t, m, id, s.want)
	}
	noTrace(t, m, st, id, "pw-one-4f1c", "pw-two-9d2e", "pw-three-77aa", string(a1), string(a2), string(a3))

	// A service without credentials has none; a bad header at create
	// stores nothing.
	plain, err := m.Create(ctx, spec("plain"))
	if err != nil {
		t.Fatal(err)
	}
	wantAuth(t, m, plain, nil)
	if _, err := m.CreateWith(ctx, spec("bad"), CreateOptions{RegistryAuth: []byte("%%%")}); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad header at create: %v", err)
	}
	if _, err := m.Get(ctx, "bad"); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a refused create stored the service: %v", err)
	}
	if _, err := m.RegistryAuth(ctx, "nosuchservice"); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("RegistryAuth of a missing service: %v", err)
	}
}

// TestRegistryAuthBoundToService: sealed credentials copied onto another
// service's record do not open.
func TestRegistryAuthBoundToService(t *testing.T) {
	m, st := authManager(t, true)
	ctx := context.Background()
	a, err := m.CreateWith(ctx, spec("a"), CreateOptions{RegistryAuth: encAuth("u", "p")})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Create(ctx, spec("b"))
	if err != nil {
		t.Fatal(err)
	}
	sa, _ := m.Get(ctx, a)
	sb, _ := m.Get(ctx, b)
	sb.PullAuth = sa.PullAuth
	val, _ := json.Marshal(sb)
	if _, err := st.Table("services").Update(ctx, b, int64(sb.Version.Index), val); err != nil {
		t.Fatal(err)
	}
	if got, err := m.RegistryAuth(ctx, b); err == nil {
		t.Fatalf("credentials copied from another service opened: %q", got)
	}
}

func TestRegistryAuthWithoutSealer(t *testing.T) {
	m, _ := authManager(t, false)
	_, err := m.CreateWith(context.Background(), spec("web"), CreateOptions{RegistryAuth: encAuth("u", "p")})
	if err == nil || !errdefs.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "X-Registry-Auth") {
		t.Fatalf("got %v, want a refusal naming X-Registry-Auth", err)
	}
}

// FuzzCheckRegistryAuth: any header value is accepted or refused with a
// 400 that never quotes it.
func FuzzCheckRegistryAuth(f *testing.F) {
	for _, s := range [][]byte{encAuth("u", "p"), []byte("e30="), []byte(""), []byte("!!"), []byte("eyJ1c2VybmFtZSI6")} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := checkRegistryAuth(b)
		if err == nil {
			return
		}
		if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("refusal %v is not a 400", err)
		}
		if len(b) >= 4 && strings.Contains(err.Error(), string(b)) {
			t.Fatalf("refusal %q quotes the header", err)
		}
	})
}

// A master-key rotation re-wraps both sealed credentials of a service
// record, keeps every other field, and the results open under the new key
// only with the service's own binding.
func TestRewrapAuth(t *testing.T) {
	old, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(old)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := kr.Seal([]byte(`{"username":"u","password":"p1"}`), authAAD("svc1"))
	if err != nil {
		t.Fatal(err)
	}
	prev, err := kr.Seal([]byte(`{"username":"u","password":"p0"}`), authAAD("svc1"))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := json.Marshal(map[string]any{"ID": "svc1", "unknownField": 7, "pullAuth": cur, "previousPullAuth": prev})
	if err != nil {
		t.Fatal(err)
	}
	next, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr.Rotate(next)
	out, n, err := RewrapAuth("svc1", rec, kr.Rewrap)
	if err != nil || n != 2 {
		t.Fatalf("RewrapAuth: n=%d err=%v, want 2 re-wrapped", n, err)
	}
	var got struct {
		Unknown  int             `json:"unknownField"`
		PullAuth *keyring.Sealed `json:"pullAuth"`
		Prev     *keyring.Sealed `json:"previousPullAuth"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if got.Unknown != 7 || got.PullAuth == nil || got.Prev == nil {
		t.Fatalf("record after re-wrap lost fields: %s", out)
	}
	for name, s := range map[string]*keyring.Sealed{"pullAuth": got.PullAuth, "previousPullAuth": got.Prev} {
		if s.KeyID != next.ID {
			t.Errorf("%s sealed under %q, want the new key %q", name, s.KeyID, next.ID)
		}
		if _, err := kr.Open(*s, authAAD("svc1")); err != nil {
			t.Errorf("%s does not open after re-wrap: %v", name, err)
		}
		if _, err := kr.Open(*s, authAAD("svc2")); err == nil {
			t.Errorf("%s opens under another service's binding", name)
		}
	}
	// A second pass finds nothing left under an old key.
	if _, n, err := RewrapAuth("svc1", out, kr.Rewrap); err != nil || n != 0 {
		t.Fatalf("second RewrapAuth: n=%d err=%v, want 0", n, err)
	}
}
