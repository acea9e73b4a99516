package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// rawKVs returns every key and value under the store's root as etcd holds
// them.
func rawKVs(t *testing.T, st *store.Store) map[string][]byte {
	t.Helper()
	resp, err := st.Client().Get(context.Background(), "/hush/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out
}

func TestEveryValueSealed(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	const canary = "CanaryName-5f1c"
	tb := st.Table("services")
	val := []byte(`{"env":["PASSWORD=canary-value-77aa"]}`)
	ref := store.PutOp(store.RefKey("secrets", "sec1", "svc1"), canary)
	if _, err := tb.Create(ctx, "svc1", canary, val, ref); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Table("nodes").Create(ctx, "node1", "", []byte(`{"hostname":"canary-host-91"}`)); err != nil {
		t.Fatal(err)
	}
	kvs := rawKVs(t, st)
	if len(kvs) < 4 { // object, index entry, reference marker, index key, node
		t.Fatalf("expected the object, its index entry, the marker and the index key, got %d keys", len(kvs))
	}
	for k, v := range kvs {
		for _, c := range []string{canary, strings.ToLower(canary), "canary-value-77aa", "canary-host-91"} {
			if strings.Contains(k, c) || bytes.Contains(v, []byte(c)) {
				t.Errorf("%q (or its value) holds %q in the clear", k, c)
			}
		}
		if !bytes.HasPrefix(v, []byte("\xffhs")) {
			t.Errorf("value of %s is not in sealed form", k)
		}
	}
	// Reads open what writes sealed.
	o, err := tb.Get(ctx, "svc1")
	if err != nil || !bytes.Equal(o.Value, val) {
		t.Fatalf("get: %q %v", o.Value, err)
	}
	owners, err := st.RefValues(ctx, "secrets", "sec1", 0)
	if err != nil || len(owners) != 1 || owners[0] != canary {
		t.Fatalf("reference values: %q %v", owners, err)
	}
	if id, err := tb.LookupName(ctx, strings.ToUpper(canary)); err != nil || id != "svc1" {
		t.Fatalf("lookup by name in another case: %q %v", id, err)
	}
}

// A sealed value moved to another key does not open: the associated data
// binds it to its key.
func TestSealedValueBoundToItsKey(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	tb := st.Table("secrets")
	for _, id := range []string{"a", "b"} {
		if _, err := tb.Create(ctx, id, "name-"+id, []byte("value of "+id)); err != nil {
			t.Fatal(err)
		}
	}
	kvs := rawKVs(t, st)
	if _, err := st.Client().Put(ctx, tb.Key("b"), string(kvs[tb.Key("a")])); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Get(ctx, "b"); !errors.Is(err, keyring.ErrDecrypt) || !errdefs.Is(err, errdefs.ErrInternal) {
		t.Fatalf("a value moved to another key: %v, want a decryption failure", err)
	}
	// Bytes in the clear are never taken as a value.
	if _, err := st.Client().Put(ctx, tb.Key("b"), "plain"); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Get(ctx, "b"); !errors.Is(err, store.ErrNotSealed) {
		t.Fatalf("an unsealed value: %v, want ErrNotSealed", err)
	}
}

func TestLockedStoreOpensNothing(t *testing.T) {
	ctx := context.Background()
	keys := storetest.NewKeys(t)
	st := storetest.NewIn(t, t.TempDir(), keys)
	tb := st.Table("secrets")
	if _, err := tb.Create(ctx, "a", "alpha", []byte("v")); err != nil {
		t.Fatal(err)
	}
	kr := keys.Keyring()
	keys.Set(nil)
	if _, err := tb.Get(ctx, "a"); !errors.Is(err, store.ErrLocked) || !errdefs.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("get while locked: %v", err)
	}
	if _, err := tb.Create(ctx, "b", "beta", []byte("v")); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("create while locked: %v", err)
	}
	if _, err := tb.LookupName(ctx, "alpha"); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("lookup while locked: %v", err)
	}
	if ok, err := tb.Exists(ctx, "a"); err != nil || !ok {
		t.Fatalf("exists while locked: %v %v", ok, err)
	}
	keys.Set(kr)
	if _, err := tb.Get(ctx, "a"); err != nil {
		t.Fatalf("get after unlock: %v", err)
	}
}

func TestNameIndexKeyedHash(t *testing.T) {
	ctx := context.Background()
	st1, st2 := storetest.New(t), storetest.New(t)
	tests := []struct {
		name     string
		a, b     func() (string, error)
		wantSame bool
	}{
		{"case folded", func() (string, error) { return st1.Table("secrets").NameKey(ctx, "DB_pass") },
			func() (string, error) { return st1.Table("secrets").NameKey(ctx, "db_PASS") }, true},
		{"tables differ", func() (string, error) { return st1.Table("secrets").NameKey(ctx, "db") },
			func() (string, error) { return st1.Table("configs").NameKey(ctx, "db") }, false},
		{"index keys differ per store", func() (string, error) { return st1.Table("secrets").NameKey(ctx, "db") },
			func() (string, error) { return st2.Table("secrets").NameKey(ctx, "db") }, false},
		{"names differ", func() (string, error) { return st1.Table("secrets").NameKey(ctx, "db1") },
			func() (string, error) { return st1.Table("secrets").NameKey(ctx, "db2") }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := tc.a()
			if err != nil {
				t.Fatal(err)
			}
			b, err := tc.b()
			if err != nil {
				t.Fatal(err)
			}
			if (a == b) != tc.wantSame {
				t.Fatalf("%s vs %s: same=%v, want %v", a, b, a == b, tc.wantSame)
			}
			for _, k := range []string{a, b} {
				if h := k[strings.LastIndexByte(k, '/')+1:]; len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
					t.Fatalf("index entry %s is not a 256-bit hex hash", k)
				}
			}
		})
	}
}

// oldRecord writes a record as hush wrote it before values were sealed:
// the value in the clear, the index entry under the lowercased name with
// the ID as its value (store.go before issue 8).
func oldRecord(t *testing.T, st *store.Store, kind, id, name string, val []byte, extra ...clientv3.Op) {
	t.Helper()
	ops := append([]clientv3.Op{clientv3.OpPut("/hush/v1/"+kind+"/"+id, string(val))}, extra...)
	if name != "" {
		ops = append(ops, clientv3.OpPut("/hush/v1/names/"+kind+"/"+strings.ToLower(name), id))
	}
	if _, err := st.Client().Txn(context.Background()).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
}

// oldSecret is an objects record of the earlier format: the data sealed by
// the manager, the rest in the clear.
func oldSecret(t *testing.T, keys *keyring.Holder, id, name string, data []byte) []byte {
	t.Helper()
	sealed, err := keys.Seal(data, fmt.Appendf(nil, "hush/%s/%s/v%d", "secrets", id, 1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]any{
		"id": id, "created": "2026-01-02T03:04:05Z", "updated": "2026-01-02T03:04:05Z", "name": name,
		"labels": map[string]string{"team": "label-" + name}, "dataVersion": 1, "sealed": sealed,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMigrateEarlierStore(t *testing.T) {
	ctx := context.Background()
	keys := storetest.NewKeys(t)
	st := storetest.NewIn(t, t.TempDir(), keys)
	const n = 130 // several batches
	for i := range n {
		id := fmt.Sprintf("sec%03d", i)
		name := fmt.Sprintf("Old_Secret_%03d", i)
		oldRecord(t, st, "secrets", id, name, oldSecret(t, keys, id, name, []byte("data-"+id)),
			clientv3.OpPut(store.RefKey("secrets", id, "svc1"), "old-service-name"))
	}
	oldRecord(t, st, "services", "svc1", "old-service-name", []byte(`{"env":["K=old-env-value"]}`))
	oldRecord(t, st, "nodes", "node1", "", []byte(`{"id":"node1"}`))
	before, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// A crash after the second batch: part is migrated, part is not.
	crash := errors.New("crash")
	done, err := st.Migrate(ctx, func(b int) error {
		if b == 2 {
			return crash
		}
		return nil
	})
	if !errors.Is(err, crash) || done == 0 || done >= 2*n {
		t.Fatalf("interrupted migration: %d records, %v", done, err)
	}
	sealed, clear := 0, 0
	for _, v := range rawKVs(t, st) {
		if bytes.HasPrefix(v, []byte("\xffhs")) {
			sealed++
		} else {
			clear++
		}
	}
	if sealed == 0 || clear == 0 {
		t.Fatalf("after the crash: %d sealed, %d clear; want some of each", sealed, clear)
	}
	// Resumed: the rest is migrated, nothing twice.
	rest, err := st.Migrate(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3*n + 3 - done; rest != want {
		t.Fatalf("resumed migration sealed %d records, want %d", rest, want)
	}
	if again, err := st.Migrate(ctx, nil); err != nil || again != 0 {
		t.Fatalf("a third run: %d %v", again, err)
	}
	for k, v := range rawKVs(t, st) {
		if !bytes.HasPrefix(v, []byte("\xffhs")) {
			t.Errorf("%s not sealed after the migration", k)
		}
		for _, c := range []string{"old_secret", "Old_Secret", "old-service-name", "old-env-value", "label-"} {
			if strings.Contains(k, c) || bytes.Contains(v, []byte(c)) {
				t.Errorf("%s holds %q in the clear", k, c)
			}
		}
	}
	// The old revisions (the clear values) are compacted away.
	if _, err := st.Client().Get(ctx, "/hush/v1/services/svc1", clientv3.WithRev(before)); err == nil {
		t.Error("the clear revision of a migrated record can still be read")
	}
	// The records read as before, through the managers.
	m := objects.New(objects.Secret, st, keys, nil)
	o, err := m.Get(ctx, "old_secret_007")
	if err != nil || o.ID != "sec007" || o.Labels["team"] != "label-Old_Secret_007" {
		t.Fatalf("migrated secret by name: %+v %v", o, err)
	}
	data, err := m.Data(ctx, "sec007")
	if err != nil || string(data) != "data-sec007" {
		t.Fatalf("migrated secret data: %q %v", data, err)
	}
	if err := m.Remove(ctx, "sec007"); err == nil || !strings.Contains(err.Error(), "old-service-name") {
		t.Fatalf("the migrated reference marker no longer names its service: %v", err)
	}
	if id, err := st.Table("services").LookupName(ctx, "OLD-SERVICE-NAME"); err != nil || id != "svc1" {
		t.Fatalf("migrated index entry: %q %v", id, err)
	}
}

// rotate loads a new master key into keys' keyring and returns the old ID.
func rotate(t *testing.T, keys *keyring.Holder) (old string, next keyring.MasterKey) {
	t.Helper()
	old, err := keys.CurrentID()
	if err != nil {
		t.Fatal(err)
	}
	next, err = keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	keys.Keyring().Rotate(next)
	return old, next
}

func TestRewrapEveryKey(t *testing.T) {
	ctx := context.Background()
	keys := storetest.NewKeys(t)
	st := storetest.NewIn(t, t.TempDir(), keys)
	m := objects.New(objects.Secret, st, keys, nil)
	st.RegisterInner(objects.Secret.Table, m.RewrapData)
	st.RegisterInner(objects.FingerprintTable, objects.RewrapFingerprintKey)
	const n = 70
	ids := make([]string, n)
	for i := range n {
		id, err := m.Create(ctx, objects.Spec{Name: fmt.Sprintf("s%d", i), Data: fmt.Appendf(nil, "data-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	nameKey, err := st.Table("secrets").NameKey(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	oldID, _ := rotate(t, keys)
	if left, err := st.Referencing(ctx, oldID); err != nil || left < 2*n {
		t.Fatalf("before the re-wrap %d values need the old key (%v), want at least %d", left, err, 2*n)
	}

	crash := errors.New("crash")
	got, err := st.Rewrap(ctx, func(b int) error {
		if b == 1 {
			return crash
		}
		return nil
	})
	if !errors.Is(err, crash) || got == 0 {
		t.Fatalf("interrupted re-wrap: %d, %v", got, err)
	}
	rest, err := st.Rewrap(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Each secret: its record, its data inside, its index entry; plus the
	// index key, the fingerprint key (its record and its key inside) and
	// the format marker (if written: not here).
	if total := got + rest; total != 3*n+3 {
		t.Fatalf("re-wrapped %d keys, want %d", total, 3*n+3)
	}
	if left, err := st.Referencing(ctx, oldID); err != nil || left != 0 {
		t.Fatalf("after the re-wrap %d values need the old key (%v)", left, err)
	}
	if again, err := st.Rewrap(ctx, nil); err != nil || again != 0 {
		t.Fatalf("second re-wrap: %d %v", again, err)
	}
	if err := keys.Keyring().Forget(oldID); err != nil {
		t.Fatal(err)
	}
	// Everything opens without the old key; the index was not re-keyed.
	for i, id := range ids {
		data, err := m.Data(ctx, id)
		if err != nil || string(data) != fmt.Sprintf("data-%d", i) {
			t.Fatalf("secret %d after rotation: %q %v", i, data, err)
		}
	}
	if nk, err := st.Table("secrets").NameKey(ctx, "s1"); err != nil || nk != nameKey {
		t.Fatalf("index entry changed with the master key: %s -> %s (%v)", nameKey, nk, err)
	}
	// Every sealed value names its master key (the envelope's key ID, "kid"
	// in sealed values inside records): none names the old one.
	for k, v := range rawKVs(t, st) {
		if bytes.Contains(v, []byte(oldID)) {
			t.Errorf("%s still names the old key", k)
		}
	}
}

// The largest secret and config fit under etcd's request limit, sealed
// twice (data by the manager, the record by the store).
func TestLargestObjectsFit(t *testing.T) {
	ctx := context.Background()
	keys := storetest.NewKeys(t)
	st := storetest.NewIn(t, t.TempDir(), keys)
	labels := map[string]string{}
	for i := range 64 {
		labels[fmt.Sprintf("label%02d", i)] = strings.Repeat("l", 1000)
	}
	for _, kind := range []objects.Kind{objects.Secret, objects.Config} {
		m := objects.New(kind, st, keys, nil)
		data := bytes.Repeat([]byte{0xa5}, kind.MaxSize-1)
		id, err := m.Create(ctx, objects.Spec{Name: "largest-" + kind.Name, Labels: labels, Data: data})
		if err != nil {
			t.Fatalf("%s of %d bytes: %v", kind.Name, len(data), err)
		}
		got, err := m.Data(ctx, id)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s read back: %d bytes, %v", kind.Name, len(got), err)
		}
		if v := rawKVs(t, st)[st.Table(kind.Table).Key(id)]; len(v) > store.MaxRequestBytes {
			t.Fatalf("%s record is %d bytes, over the limit", kind.Name, len(v))
		}
	}
}

// A store whose values were sealed one data key each (before a write's
// values shared one) opens as before: records, name index, mirror; and a
// master-key rotation then re-wraps old and new values alike.
func TestPerValueSealedStoreOpens(t *testing.T) {
	ctx := context.Background()
	keys := storetest.NewKeys(t)
	st := storetest.NewIn(t, t.TempDir(), keys)
	tb := st.Table("secrets")
	nk, err := tb.NameKey(ctx, "old-one")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{tb.Key("old1"): `{"n":"old-one"}`, nk: "old1"} {
		if err := store.PutPerValueSealedForTest(ctx, st, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tb.Create(ctx, "new1", "new-one", []byte(`{"n":"new-one"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Create(ctx, "new2", "OLD-ONE", []byte(`{}`)); !errors.Is(err, store.ErrNameTaken) {
		t.Fatalf("a name held in the old form was taken again: %v", err)
	}
	m := runMirror(t, st, "secrets")
	check := func() {
		t.Helper()
		for name, id := range map[string]string{"old-one": "old1", "New-One": "new1"} {
			got, err := tb.LookupName(ctx, name)
			if err != nil || got != id {
				t.Fatalf("lookup %s: %q %v", name, got, err)
			}
			o, err := tb.Get(ctx, id)
			if err != nil || !strings.Contains(string(o.Value), strings.ToLower(name)) {
				t.Fatalf("get %s: %q %v", id, o.Value, err)
			}
		}
		if snap := snapshot(t, m, "secrets"); len(snap) != 2 || snap["old1"] != `{"n":"old-one"}` {
			t.Fatalf("mirror: %v", snap)
		}
	}
	check()
	oldID, _ := rotate(t, keys)
	if _, err := st.Rewrap(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if left, err := st.Referencing(ctx, oldID); err != nil || left != 0 {
		t.Fatalf("after the re-wrap %d values need the old key (%v)", left, err)
	}
	if err := keys.Keyring().Forget(oldID); err != nil {
		t.Fatal(err)
	}
	check()
}
