package store

import (
	"github.com/hush-secrets/hush/internal/keyring"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func TestTuningApply(t *testing.T) {
	cfg := embed.NewConfig()
	def := *cfg
	Tuning{}.apply(cfg)
	if cfg.SnapshotCount != def.SnapshotCount || cfg.MaxSnapFiles != def.MaxSnapFiles || cfg.TickMs != def.TickMs || cfg.ElectionMs != def.ElectionMs || cfg.SnapshotCatchUpEntries != def.SnapshotCatchUpEntries {
		t.Fatal("a zero tuning changed etcd's defaults")
	}
	Tuning{SnapshotCount: 5000, MaxSnapFiles: 3, SnapshotCatchUpEntries: 800, Heartbeat: 200 * time.Millisecond, ElectionTimeout: 2 * time.Second}.apply(cfg)
	if cfg.SnapshotCount != 5000 || cfg.MaxSnapFiles != 3 || cfg.SnapshotCatchUpEntries != 800 || cfg.TickMs != 200 || cfg.ElectionMs != 2000 {
		t.Fatalf("tuning not applied: %d %d %d %d %d", cfg.SnapshotCount, cfg.MaxSnapFiles, cfg.SnapshotCatchUpEntries, cfg.TickMs, cfg.ElectionMs)
	}
}

// etcd starts with a tuning it accepts (the cluster package refuses the
// tick values it would not).
func TestOpenWithTuning(t *testing.T) {
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
	s, err := OpenEmbedded(t.Context(), EmbeddedConfig{Dir: t.TempDir(), Name: "tuned", EtcdLogLevel: "error", Keys: &keys,
		Tuning: Tuning{SnapshotCount: 5000, MaxSnapFiles: 3, SnapshotCatchUpEntries: 500, Heartbeat: 100 * time.Millisecond, ElectionTimeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
