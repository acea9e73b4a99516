package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/store/storetest"
)

// A driver that lost its presence while it waited for the prepare acks
// (cut off from the quorum, or its lease not renewed in time) is taken
// over by another manager's resume (clusterresume.go), which may move the
// record on to seal. When the first driver's wait ends it drops the
// rotation it believes it still drives (dropRotation, retried for
// dropRotationWait): that drop must not delete the record the other
// manager now drives in seal, where values are already sealed under the
// new key (its managers would seal under a key no record names, and the
// rotation could no longer end).
func TestDropSparesTakenOverRotation(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	x := &Daemon{nodeID: "manager-x", log: slog.New(slog.DiscardHandler)}
	x.cur.Store(st)
	rec := rotationRecord{Old: "key-1", New: "key-2", Phase: phasePrepare, Driver: x.nodeID,
		Managers: []string{"manager-a", "manager-x"}, Started: time.Now().UTC()}
	val, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if rec.rev, err = st.Table(rotationTable).Create(ctx, rotationRecordID, "", val); err != nil {
		t.Fatal(err)
	}
	// Manager a takes it over (compare-and-swap at the revision it read)
	// and, every prepare ack in, moves it to seal.
	taken := rec
	taken.Driver = "manager-a"
	if err := putRotation(ctx, st, &taken); err != nil {
		t.Fatal(err)
	}
	taken.Phase = phaseSeal
	if err := putRotation(ctx, st, &taken); err != nil {
		t.Fatal(err)
	}
	// x's wait for the prepare acks ends: it drops its view of it.
	x.dropRotation(ctx, rec)
	cur, ok, err := getRotation(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatal("the first driver's drop deleted the rotation another manager took over and drives in seal")
	}
	if cur.Driver != "manager-a" || cur.Phase != phaseSeal {
		t.Fatalf("record after the drop: driver %q, phase %q; want manager-a, seal", cur.Driver, cur.Phase)
	}
}
