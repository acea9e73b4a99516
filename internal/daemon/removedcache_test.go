package daemon

import (
	"crypto/x509"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/store/storetest"
)

// Until the removed-node list has been read once, a node certificate
// other than this manager's own is refused as a passing condition (the
// node retries; it is not told it was removed): an empty list would
// have admitted a removed node's certificate. Once read, a failed read
// keeps the last list.
func TestRemovedListFailsClosed(t *testing.T) {
	st := storetest.New(t)
	d := &Daemon{store: st, nodeID: "m1", log: slog.New(slog.DiscardHandler)}
	d.cur.Store(st) // as openStore publishes it
	leaf := &x509.Certificate{NotBefore: time.Now().Add(-time.Hour)}
	// A removal made here before any read does not count as a read.
	d.removed.noteRemoved("gone", time.Now())
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	err := d.refuseNode("w1", leaf)
	if !errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, agent.ErrNodeRemoved) {
		t.Fatalf("a node's certificate before the list was read: %v, want Unavailable (not removed)", err)
	}
	if err := d.refuseNode("m1", leaf); err != nil {
		t.Fatalf("this manager's own certificate before the list was read: %v", err)
	}
	if err := d.refuseNode("gone", leaf); !errors.Is(err, agent.ErrNodeRemoved) {
		t.Fatalf("a node removed here: %v, want removed", err)
	}

	st2 := storetest.New(t)
	d2 := &Daemon{store: st2, nodeID: "m1", log: slog.New(slog.DiscardHandler)}
	d2.cur.Store(st2)
	if err := d2.refuseNode("w1", leaf); err != nil {
		t.Fatalf("a node never removed, list read: %v", err)
	}
	if err := st2.Close(); err != nil {
		t.Fatal(err)
	}
	d2.removed.mu.Lock()
	d2.removed.read = time.Time{} // due for another read, which fails
	d2.removed.mu.Unlock()
	if err := d2.refuseNode("w1", leaf); err != nil {
		t.Fatalf("a failed read after one that succeeded: %v, want the last list kept", err)
	}
}
