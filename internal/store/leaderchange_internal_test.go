package store

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// hangKV stands for a follower whose proposal went to a leader that died:
// etcd never answers the write; only its context ends it.
type hangKV struct {
	clientv3.KV
	started chan struct{}
}

func (k hangKV) Put(ctx context.Context, _, _ string, _ ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	close(k.started)
	<-ctx.Done()
	return nil, ctx.Err()
}

func (k hangKV) Txn(ctx context.Context) clientv3.Txn { return hangTxn{ctx: ctx, started: k.started} }

type hangTxn struct {
	ctx     context.Context
	started chan struct{}
}

func (t hangTxn) If(...clientv3.Cmp) clientv3.Txn  { return t }
func (t hangTxn) Then(...clientv3.Op) clientv3.Txn { return t }
func (t hangTxn) Else(...clientv3.Op) clientv3.Txn { return t }
func (t hangTxn) Commit() (*clientv3.TxnResponse, error) {
	close(t.started)
	<-t.ctx.Done()
	return nil, t.ctx.Err()
}

// A write in flight when a new leader is elected ends then, as "no
// leader" (retryable, not acknowledged), instead of waiting out etcd's
// request timeout; without a leader change it waits for etcd's answer
// (here: until its own context ends).
func TestLeaderKVGivesUpWritesAtALeaderChange(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(ctx context.Context, kv clientv3.KV) error
	}{
		{"put", func(ctx context.Context, kv clientv3.KV) error { _, err := kv.Put(ctx, "k", "v"); return err }},
		{"txn", func(ctx context.Context, kv clientv3.KV) error { _, err := kv.Txn(ctx).Then().Commit(); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			changed := make(chan struct{})
			started := make(chan struct{})
			kv := newLeaderKV(hangKV{started: started}, func() bool { return true }, 0,
				func() <-chan struct{} { return changed })
			go func() {
				<-started
				close(changed)
			}()
			err := tc.write(context.Background(), kv)
			if !errors.Is(err, errLeaderChangedHere) {
				t.Fatalf("write across a leader change: %v, want errLeaderChangedHere", err)
			}
			if !errors.Is(wrapEtcd(err), errdefs.ErrNoLeader) {
				t.Fatalf("a write given up at a leader change maps to %v, want no leader", wrapEtcd(err))
			}
		})
		t.Run(tc.name+" no change", func(t *testing.T) {
			started := make(chan struct{})
			kv := newLeaderKV(hangKV{started: started}, func() bool { return true }, 0,
				func() <-chan struct{} { return make(chan struct{}) })
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				<-started
				cancel()
			}()
			if err := tc.write(ctx, kv); !errors.Is(err, context.Canceled) {
				t.Fatalf("write whose caller gave up: %v, want context.Canceled", err)
			}
		})
	}
}

// leaderChangeKV runs transactions on a real member, but the first
// commit fails as if a new leader had been elected meanwhile: after it
// was applied (applied) or before (dropped).
type leaderChangeKV struct {
	clientv3.KV
	applied bool
	commits *atomic.Int32
}

func (k leaderChangeKV) Txn(ctx context.Context) clientv3.Txn {
	return &leaderChangeTxn{Txn: k.KV.Txn(ctx), kv: k}
}

type leaderChangeTxn struct {
	clientv3.Txn
	kv leaderChangeKV
}

func (t *leaderChangeTxn) If(c ...clientv3.Cmp) clientv3.Txn  { t.Txn = t.Txn.If(c...); return t }
func (t *leaderChangeTxn) Then(o ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Then(o...); return t }
func (t *leaderChangeTxn) Else(o ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(o...); return t }
func (t *leaderChangeTxn) Commit() (*clientv3.TxnResponse, error) {
	if t.kv.commits.Add(1) == 1 {
		if t.kv.applied {
			if _, err := t.Txn.Commit(); err != nil {
				return nil, err
			}
		}
		return nil, errLeaderChangedHere
	}
	return t.Txn.Commit()
}

func openLeaderChangeStore(t *testing.T) *Store {
	t.Helper()
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	var keys keyring.Holder
	keys.Set(kr)
	s, err := OpenEmbedded(t.Context(), EmbeddedConfig{Dir: t.TempDir(), Name: "n1", EtcdLogLevel: "error", Keys: &keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// A create that a leader change interrupted is retried, and the retry
// tells whether the first write was applied: either way the caller gets
// its object, once, with the revision that wrote it; never "name taken"
// for its own write.
func TestCreateRetriesAcrossALeaderChange(t *testing.T) {
	for _, applied := range []bool{true, false} {
		name := map[bool]string{true: "applied", false: "dropped"}[applied]
		t.Run(name, func(t *testing.T) {
			s := openLeaderChangeStore(t)
			ctx := t.Context()
			tbl := s.Table("secrets")
			// The index key is written on first use: before the fault.
			if _, err := tbl.NameKey(ctx, "one"); err != nil {
				t.Fatal(err)
			}
			real := s.cli.KV
			var commits atomic.Int32
			s.cli.KV = leaderChangeKV{KV: real, applied: applied, commits: &commits}
			rev, err := tbl.Create(ctx, "id1", "one", []byte("value"))
			if err != nil {
				t.Fatalf("create across a leader change: %v", err)
			}
			if n := commits.Load(); n != 2 {
				t.Fatalf("%d commits, want 2 (the interrupted one and one retry)", n)
			}
			s.cli.KV = real
			o, err := tbl.Get(ctx, "id1")
			if err != nil {
				t.Fatal(err)
			}
			if string(o.Value) != "value" || o.ModRev != rev || o.CreateRev != rev {
				t.Fatalf("stored %q at create %d mod %d; Create said revision %d", o.Value, o.CreateRev, o.ModRev, rev)
			}
			if id, err := tbl.LookupName(ctx, "one"); err != nil || id != "id1" {
				t.Fatalf("name lookup: %q, %v", id, err)
			}
		})
	}

	// The retry still refuses a name that another object took.
	t.Run("name taken", func(t *testing.T) {
		s := openLeaderChangeStore(t)
		ctx := t.Context()
		tbl := s.Table("secrets")
		if _, err := tbl.Create(ctx, "other", "one", []byte("x")); err != nil {
			t.Fatal(err)
		}
		var commits atomic.Int32
		s.cli.KV = leaderChangeKV{KV: s.cli.KV, commits: &commits}
		if _, err := tbl.Create(ctx, "id1", "one", []byte("value")); !errors.Is(err, ErrNameTaken) {
			t.Fatalf("create of a taken name across a leader change: %v, want ErrNameTaken", err)
		}
	})
}
