package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// countingHandler counts the creates one socket receives.
func countingHandler(h http.Handler, n *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/secrets/create") {
			n.Add(1)
		}
		h.ServeHTTP(w, r)
	})
}

// Several sockets (the managers of one cluster) share the load: each gets
// its turn of the creates, and the cleanup still finds everything.
func TestRunSpreadsOverSockets(t *testing.T) {
	f := &fakeEngine{secrets: map[string]swarm.Secret{}}
	var a, b atomic.Int64
	sa := serveHandler(t, countingHandler(f.handler(), &a))
	sb := serveHandler(t, countingHandler(f.handler(), &b))
	var out, errOut bytes.Buffer
	code := run([]string{"--socket", sa + "," + sb, "--n", "40", "--concurrency", "4", "--list-size", "0", "--ops", "create"}, &out, &errOut)
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	// Each level creates n secrets for create and n more for the other
	// operations' setup; op i goes to socket i mod 2.
	if a.Load() != b.Load() || a.Load() == 0 {
		t.Errorf("creates per socket: %d and %d, want equal and non-zero", a.Load(), b.Load())
	}
	assertEmptyAndSecret(t, f, out.String()+errOut.String())
}

func TestSocketListRefusesEmptyEntry(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--socket", "/tmp/a,"}, &out, &errOut); code != exitUsage {
		t.Fatalf("exit %d, want %d", code, exitUsage)
	}
	if !strings.Contains(errOut.String(), "--socket") {
		t.Errorf("error does not name --socket: %s", errOut.String())
	}
}

// The failover mode measures the outage a kill causes: here the "kill"
// makes one socket's server refuse writes for a while, and the measured
// time to the first acknowledged write after it cannot be shorter.
func TestFailoverMeasuresOutage(t *testing.T) {
	const outage = 300 * time.Millisecond
	// One store behind two sockets, as a cluster's managers are.
	f := &fakeEngine{secrets: map[string]swarm.Secret{}}
	sock := serveFake(t, f)
	sock2 := serveFake(t, f)
	cfg, err := parseConfig([]string{"--socket", sock + "," + sock2, "--failover-pid", "1", "--failover-warmup", "200ms", "--failover-limit", "20s",
		"--json", filepath.Join(t.TempDir(), "f.json")}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := newBench(cfg, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	killed := false
	kill := func() error {
		killed = true
		until := time.Now().Add(outage)
		f.mu.Lock()
		f.downUntil = until
		f.mu.Unlock()
		return nil
	}
	var out, errOut bytes.Buffer
	if code := runFailover(b, kill, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	if !killed {
		t.Fatal("kill was not called")
	}
	data, err := os.ReadFile(cfg.JSONPath)
	if err != nil {
		t.Fatal(err)
	}
	var r failoverResult
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	if r.FirstAckMs < float64(outage.Milliseconds()) || r.AllAckMs < r.FirstAckMs || r.MaxGapMs < float64(outage.Milliseconds()) {
		t.Errorf("measured first %.0f ms, all %.0f ms, gap %.0f ms; the outage was %v", r.FirstAckMs, r.AllAckMs, r.MaxGapMs, outage)
	}
	if r.Errors["HTTP 503"] == 0 || r.OK == 0 || r.TimedOut {
		t.Errorf("result %+v: want 503s during the outage, acknowledgements, no time-out", r)
	}
	assertEmptyAndSecret(t, f, out.String()+errOut.String())
}
