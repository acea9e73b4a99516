package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The secrets namespace as porcupine checks it: each name is independent
// (the model is partitioned by name), and a name's state is "" (absent),
// the ID of the secret that holds it, or unknownID (created by an
// operation whose outcome the client never learned).
const unknownID = "?"

type secOp struct {
	create bool // else inspect
	name   string
}

// secOut is what the client saw.
type secOut struct {
	kind string // "ok" (created, id), "exists", "found" (id), "absent", "unknown"
	id   string
}

var secretsModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range h {
			n := op.Input.(secOp).name
			if _, ok := by[n]; !ok {
				order = append(order, n)
			}
			by[n] = append(by[n], op)
		}
		out := make([][]porcupine.Operation, 0, len(order))
		for _, n := range order {
			out = append(out, by[n])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(secOp), output.(secOut)
		if in.create {
			switch out.kind {
			case "ok":
				return st == "", out.id
			case "exists":
				return st != "", st
			default: // unknown: it took effect here (its return is infinite, so "never" is a later point)
				if st == "" {
					return true, unknownID
				}
				return true, st
			}
		}
		switch out.kind {
		case "found":
			if st == unknownID {
				return true, out.id
			}
			return st == out.id, st
		case "absent":
			return st == "", st
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(secOp), output.(secOut)
		verb := "inspect"
		if in.create {
			verb = "create"
		}
		return fmt.Sprintf("%s(%s) -> %s %s", verb, in.name, out.kind, out.id)
	},
}

// secRecorder is the history of the clients' operations.
type secRecorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	// acked is every create acknowledged, name -> ID, and by manager the
	// call and return times of its acknowledged creates.
	acked   map[string]string
	ackedBy map[string][][2]time.Duration
}

func (r *secRecorder) now() int64 { return int64(time.Since(r.start)) }

func (r *secRecorder) add(client int, mgr string, in secOp, call int64, out secOut) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ret := r.now()
	if out.kind == "unknown" {
		// Possibly applied, at any time from its call on.
		ret = math.MaxInt64
	}
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	if in.create && out.kind == "ok" {
		r.acked[in.name] = out.id
		r.ackedBy[mgr] = append(r.ackedBy[mgr], [2]time.Duration{time.Duration(call), time.Duration(ret)})
	}
}

// tryDocker runs the docker CLI against h's socket like Docker does, but
// returns instead of failing the test (it runs on client goroutines) and
// bounds the call by timeout.
func tryDocker(h *Hushd, timeout time.Duration, stdin string, args ...string) (stdout, stderr string, code int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, dockerBinary(), args...)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "DOCKER_HOST=unix://"+h.Socket, "DOCKER_CONFIG="+h.configDir, "DOCKER_CLI_HINTS=false")
	cmd.Stdin = strings.NewReader(stdin)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err = cmd.Run()
	if ctx.Err() != nil {
		return so.String(), se.String(), -1, ctx.Err()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return so.String(), se.String(), ee.ExitCode(), nil
	}
	return so.String(), se.String(), 0, err
}

// refused: the CLI could not connect at all, so nothing was sent.
func refused(stderr string) bool {
	return strings.Contains(stderr, "Cannot connect to the Docker daemon")
}

// secCreate and secInspect run one operation and classify its outcome.
// Anything but a definite answer is unknown: a create that failed with a
// 503 or timed out may still have been applied.
func secCreate(h *Hushd, name string) (secOut, bool) {
	out, errOut, code, err := tryDocker(h, 20*time.Second, "v-"+name, "secret", "create", name, "-")
	switch {
	case err == nil && code == 0:
		return secOut{kind: "ok", id: strings.TrimSpace(out)}, true
	case err == nil && strings.Contains(errOut, "already exists"):
		return secOut{kind: "exists"}, true
	case err == nil && refused(errOut):
		return secOut{}, false
	}
	return secOut{kind: "unknown"}, true
}

func secInspect(h *Hushd, name string) (secOut, bool) {
	out, errOut, code, err := tryDocker(h, 20*time.Second, "", "secret", "inspect", "--format", "{{.ID}}", name)
	switch {
	case err == nil && code == 0:
		return secOut{kind: "found", id: strings.TrimSpace(out)}, true
	case err == nil && strings.Contains(errOut, "secret "+name+" not found"):
		return secOut{kind: "absent"}, true
	}
	// A read that failed changed nothing: it is left out of the history.
	return secOut{kind: "failed: " + strings.TrimSpace(errOut)}, false
}

// kill -9 of the leader while clients write (and read) secrets through
// every manager: writes go on through the other two, no acknowledged
// write is lost, and the history is linearizable.
func testLabKillLeader(t *testing.T, c *labCluster) {
	sfx := randHex(t, 3)
	rec := &secRecorder{start: time.Now(), acked: map[string]string{}, ackedBy: map[string][][2]time.Duration{}}
	var counter atomic.Int64 // creates so far: names advance with it
	name := func(k int64) string { return fmt.Sprintf("lin-%s-%d", sfx, max(k, 0)) }
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const perManager = 2
	for i, mname := range []string{"m1", "m2", "m3"} {
		h := c.byName[mname]
		for j := range perManager {
			client := i*perManager + j
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(client), uint64(time.Now().UnixNano())))
				for {
					select {
					case <-stop:
						return
					default:
					}
					if !h.running() {
						return
					}
					var in secOp
					var out secOut
					var ok bool
					call := rec.now()
					if rng.IntN(2) == 0 {
						// About two creates per name, from different clients:
						// concurrent creates of one name contend.
						in = secOp{create: true, name: name(counter.Add(1) / 2)}
						out, ok = secCreate(h, in.name)
					} else {
						in = secOp{name: name(counter.Load()/2 - 3 + rng.Int64N(5))}
						out, ok = secInspect(h, in.name)
					}
					if ok {
						rec.add(client, mname, in, call, out)
					}
				}
			}()
		}
	}
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer halt()

	// Some history before the kill.
	waitFor(t, 60*time.Second, "20 acknowledged creates before the kill", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.acked) >= 20
	})
	leader := c.leader(t)
	survivors := []string{}
	for _, n := range []string{"m1", "m2", "m3"} {
		if n != leader {
			survivors = append(survivors, n)
		}
	}
	killedAt := time.Duration(rec.now())
	c.byName[leader].Kill()
	t.Logf("killed the leader %s at %s", leader, killedAt)

	// Writes go on through both survivors: each acknowledges creates
	// called after the kill.
	var firstAfter time.Duration
	waitFor(t, 60*time.Second, "5 acknowledged creates through each surviving manager after the kill", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, n := range survivors {
			after := 0
			for _, cr := range rec.ackedBy[n] {
				if cr[0] > killedAt {
					if firstAfter == 0 || cr[1] < firstAfter {
						firstAfter = cr[1]
					}
					after++
				}
			}
			if after < 5 {
				return false
			}
		}
		return true
	})
	halt()
	t.Logf("failover: the first create called after the kill was acknowledged %s after it (measured, not asserted)", firstAfter-killedAt)

	// The killed leader restarts and catches up; then every acknowledged
	// create reads back with its ID on every manager, and those reads join
	// the history.
	c.byName[leader].start()
	c.waitHealthy(t)
	rec.mu.Lock()
	names := make([]string, 0, len(rec.acked))
	for n := range rec.acked {
		names = append(names, n)
	}
	rec.mu.Unlock()
	last := counter.Load()/2 + 1
	for k := range last + 1 {
		n := name(k)
		for i, mname := range []string{"m1", "m2", "m3"} {
			var out secOut
			var call int64
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				var ok bool
				call = rec.now()
				if out, ok = secInspect(c.byName[mname], n); ok {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("inspect %s on %s after the run: no answer within 30s; last: %s", n, mname, out.kind)
				}
			}
			rec.add(100+i, mname, secOp{name: n}, call, out)
			if id, acked := rec.acked[n]; acked && (out.kind != "found" || out.id != id) {
				t.Errorf("acknowledged create of %s (ID %s) lost: inspect on %s says %s %s", n, id, mname, out.kind, out.id)
			}
		}
	}

	// And each manager's list holds every acknowledged create.
	for _, mname := range []string{"m1", "m2", "m3"} {
		listed := strings.Fields(c.byName[mname].MustDocker("secret", "ls", "--format", "{{.ID}}:{{.Name}}"))
		for n, id := range rec.acked {
			if !slices.Contains(listed, id+":"+n) {
				t.Errorf("acknowledged create of %s (ID %s) missing from secret ls on %s", n, id, mname)
			}
		}
	}

	counts := map[string]int{}
	for _, op := range rec.ops {
		counts[op.Output.(secOut).kind]++
	}
	t.Logf("history: %d operations %v, %d names created and acknowledged", len(rec.ops), counts, len(names))
	res, info := porcupine.CheckOperationsVerbose(secretsModel, rec.ops, 60*time.Second)
	switch res {
	case porcupine.Ok:
	case porcupine.Illegal:
		path := t.TempDir() + "/history.html"
		if err := porcupine.VisualizePath(secretsModel, info, path); err == nil {
			if b, err := os.ReadFile(path); err == nil {
				_ = os.WriteFile(os.TempDir()+"/hush-lin-"+sfx+".html", b, 0o600)
			}
		}
		t.Fatalf("the history of %d operations is not linearizable (visualisation: %s)", len(rec.ops), os.TempDir()+"/hush-lin-"+sfx+".html")
	default:
		t.Fatalf("porcupine could not decide within 60s on %d operations", len(rec.ops))
	}
}

// The model refuses what a secrets namespace must never do, so the check
// above can fail.
func TestSecretsModel(t *testing.T) {
	const inf = math.MaxInt64
	op := func(call, ret int64, create bool, name, kind, id string) porcupine.Operation {
		return porcupine.Operation{Input: secOp{create: create, name: name}, Call: call, Return: ret, Output: secOut{kind: kind, id: id}}
	}
	for _, tc := range []struct {
		name string
		h    []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"create then read", []porcupine.Operation{op(0, 1, true, "a", "ok", "X"), op(2, 3, false, "a", "found", "X")}, porcupine.Ok},
		{"two creates of one name acknowledged", []porcupine.Operation{op(0, 1, true, "a", "ok", "X"), op(2, 3, true, "a", "ok", "Y")}, porcupine.Illegal},
		{"acknowledged create lost", []porcupine.Operation{op(0, 1, true, "a", "ok", "X"), op(2, 3, false, "a", "absent", "")}, porcupine.Illegal},
		{"read of another ID", []porcupine.Operation{op(0, 1, true, "a", "ok", "X"), op(2, 3, false, "a", "found", "Y")}, porcupine.Illegal},
		{"exists before any create", []porcupine.Operation{op(0, 1, true, "a", "exists", "")}, porcupine.Illegal},
		{"stale read after a read saw it", []porcupine.Operation{op(0, inf, true, "a", "unknown", ""), op(1, 2, false, "a", "found", "X"), op(3, 4, false, "a", "absent", "")}, porcupine.Illegal},
		{"unknown create seen later", []porcupine.Operation{op(0, inf, true, "a", "unknown", ""), op(1, 2, false, "a", "absent", ""), op(3, 4, false, "a", "found", "X")}, porcupine.Ok},
		{"unknown create never applied", []porcupine.Operation{op(0, inf, true, "a", "unknown", ""), op(5, 6, true, "a", "ok", "Y")}, porcupine.Ok},
		{"concurrent creates, one wins", []porcupine.Operation{op(0, 5, true, "a", "ok", "X"), op(1, 4, true, "a", "exists", ""), op(6, 7, false, "b", "absent", "")}, porcupine.Ok},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := porcupine.CheckOperationsTimeout(secretsModel, tc.h, 10*time.Second); got != tc.want {
				t.Fatalf("check: %s, want %s", got, tc.want)
			}
		})
	}
}
