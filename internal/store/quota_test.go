package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store"
)

const testQuota = 64 << 20

func openQuota(t *testing.T, dir string) *store.Store {
	t.Helper()
	return openQuotaOf(t, dir, testQuota)
}

func openQuotaOf(t *testing.T, dir string, quota int64) *store.Store {
	t.Helper()
	s, err := store.OpenEmbedded(context.Background(), store.EmbeddedConfig{Dir: dir, Name: "n1", EtcdLogLevel: "error", QuotaBytes: quota, Keys: packageKeys()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func noSpaceAlarm(t *testing.T, s *store.Store) bool {
	t.Helper()
	resp, err := s.Client().AlarmList(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Alarms) > 0
}

// value is a big object, the size of a large secret.
var value = []byte(strings.Repeat("v", 400<<10))

// TestQuotaRefusesBeforeFull fills a small-quota store through the table
// API: writes are refused with the quota's category and text before etcd
// raises its alarm, the refused write stores nothing, deletes work, and
// writes work again once space is freed.
func TestQuotaRefusesBeforeFull(t *testing.T) {
	ctx := context.Background()
	s := openQuota(t, t.TempDir())
	defer s.Close()
	tb := s.Table("things")
	var ids []string
	var refusal error
	for i := range 1000 {
		id := fmt.Sprint("id", i)
		if _, err := tb.Create(ctx, id, id, value); err != nil {
			refusal = err
			if _, gerr := tb.Get(ctx, id); !errors.Is(gerr, store.ErrNotFound) {
				t.Fatalf("refused write stored something: %v", gerr)
			}
			break
		}
		ids = append(ids, id)
	}
	if refusal == nil {
		t.Fatal("never refused")
	}
	if !errdefs.Is(refusal, errdefs.ErrNoSpace) || errdefs.Is(refusal, errdefs.ErrUnavailable) {
		t.Fatalf("refusal %v: want the no-space category, not unavailable", refusal)
	}
	if !strings.Contains(refusal.Error(), fmt.Sprint(testQuota)) {
		t.Fatalf("refusal %q does not name the quota", refusal)
	}
	if noSpaceAlarm(t, s) {
		t.Fatal("etcd's NOSPACE alarm was raised: hush should refuse before")
	}
	if len(ids) < 100 {
		t.Fatalf("refused after %d objects of %d bytes in a %d-byte quota", len(ids), len(value), testQuota)
	}
	// Updates are refused too; reads still work.
	o, err := tb.Get(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Update(ctx, ids[0], o.ModRev, append(value, 'x')); !errdefs.Is(err, errdefs.ErrNoSpace) {
		t.Fatalf("update when full: %v", err)
	}
	// Deleting a tenth of the objects makes room (the check keeps the data
	// within the quota, so a tenth frees more than the headroom).
	tenth := len(ids) / 10
	for _, id := range ids[:tenth] {
		if err := tb.Delete(ctx, id, id, 0, nil); err != nil {
			t.Fatalf("delete when full: %v", err)
		}
	}
	if _, err := tb.Create(ctx, "again", "again", value); err != nil {
		t.Fatalf("create after deleting %d of %d objects: %v", tenth, len(ids), err)
	}
}

// TestQuotaAlarmDeletesWork fills the store past hush's check (raw puts,
// as an older hushd could have) until etcd raises its NOSPACE alarm:
// deletes still work under the alarm, the store opens again after a
// restart, a refused write answers the quota's error (never
// "unavailable"), and once deletes freed enough the alarm is disarmed and
// writes work again.
//
// Its quota is a quarter of testQuota: the restart replays the whole WAL
// (every raw put, etcd snapshots only every 10000 entries) and then
// defragments the full backend, which took 19-31 s of the test's 33-49 s
// under -race at load 11-13, and past the store's 60 s start bound at load
// 15-19 ("etcd did not start in time"). A smaller store replays and
// defragments a quarter of that (reopen 6-8 s at load 15-18), and still
// fills to the alarm (32-35 objects).
func TestQuotaAlarmDeletesWork(t *testing.T) {
	const alarmQuota = testQuota / 4
	ctx := context.Background()
	dir := t.TempDir()
	s := openQuotaOf(t, dir, alarmQuota)
	tb := s.Table("things")
	var ids []string
	for i := range 1000 {
		id := fmt.Sprint("id", i)
		if err := s.Put(ctx, tb.Key(id), value); err != nil {
			break
		}
		ids = append(ids, id)
	}
	if !noSpaceAlarm(t, s) {
		t.Fatal("no NOSPACE alarm after filling the store")
	}
	// Nothing of hush's has written or reclaimed yet: the delete runs
	// under the alarm.
	if err := tb.Delete(ctx, ids[0], "", 0, nil); err != nil {
		t.Fatalf("delete under the alarm: %v", err)
	}
	if !noSpaceAlarm(t, s) {
		t.Fatal("the alarm went away by itself")
	}
	ids = ids[1:]
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openQuotaOf(t, dir, alarmQuota)
	defer s.Close()
	tb = s.Table("things")
	if _, err := tb.Get(ctx, ids[0]); err != nil {
		t.Fatalf("read after restart: %v", err)
	}
	for {
		_, err := tb.Create(ctx, "x", "x", value)
		if err == nil {
			break
		}
		if !errdefs.Is(err, errdefs.ErrNoSpace) || errdefs.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("create when full: %v, want the no-space category", err)
		}
		if len(ids) < 10 {
			t.Fatalf("still refused with the store almost empty: %v", err)
		}
		for _, id := range ids[:10] {
			if err := tb.Delete(ctx, id, "", 0, nil); err != nil {
				t.Fatalf("delete when full: %v", err)
			}
		}
		ids = ids[10:]
	}
	if noSpaceAlarm(t, s) {
		t.Fatal("alarm still raised after a write succeeded")
	}
}
