package daemon

import (
	"context"
	"crypto/x509"
	"log/slog"
	"math/big"
	"sync"
	"testing"

	"github.com/hush-secrets/hush/internal/store/storetest"
)

// The dispatcher's check of a manager certificate runs in the dispatcher
// server's handlers, which a store swap (leave, role change, unlock) does
// not wait for: the runtime's stop closes the server's connections but
// lets handlers in flight run on. So it must read the store as the
// dispatcher's other callbacks do (curStore), not the d.store field the
// swap writes under d.mu (the race detector fails this test otherwise).
func TestRefuseManagerCertDuringStoreSwap(t *testing.T) {
	ctx := context.Background()
	st1, st2 := storetest.New(t), storetest.New(t)
	d := &Daemon{nodeID: "manager-1", log: slog.New(slog.DiscardHandler)}
	d.store = st1
	d.cur.Store(st1)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(7)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 20 {
			// Refused: no such node. The read is what matters here.
			_ = d.refuseManagerCert(ctx, "node-w", leaf)
		}
	})
	wg.Go(func() {
		// As openStore publishes a new store.
		d.mu.Lock()
		d.store = st2
		d.cur.Store(st2)
		d.mu.Unlock()
	})
	wg.Wait()
}
