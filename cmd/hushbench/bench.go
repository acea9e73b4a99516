package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

const (
	// labelKey marks every secret hushbench creates; its value is the run
	// ID, so cleanup can find a run's secrets even when a create response
	// was lost, and a filtered list returns only this run's secrets.
	labelKey = "hushbench"
	// secretBytes is the size of each random secret value.
	secretBytes = 64
	// cleanupConcurrency is used for untimed removal of leftovers.
	cleanupConcurrency = 16
)

// bench holds the state of one run: there is no package-level state, so
// tests (and a future caller comparing two servers in one process) can run
// several benches side by side.
type bench struct {
	cfg config
	// client is the first socket's: setup, lists and cleanup go there;
	// clients has one per socket, for the measured operations.
	client  *engineClient
	clients []*engineClient
	runID   string
	label   string            // "hushbench=<run id>", as used in list filters
	labels  map[string]string // read-only after newBench; shared by workers
	created *idSet            // secrets created and not yet removed
	seq     atomic.Int64      // makes secret names unique within the run
	log     io.Writer         // progress messages (stderr), not the report
}

func newBench(cfg config, log io.Writer) (*bench, error) {
	runID, err := newRunID()
	if err != nil {
		return nil, err
	}
	// Each socket gets its own pool, sized for every worker: op i goes
	// to socket i mod len, so any socket may see all of them at once.
	var clients []*engineClient
	for _, s := range cfg.sockets() {
		clients = append(clients, newEngineClient(s, cfg.API, cfg.maxConcurrency(), cfg.Timeout))
	}
	return &bench{
		cfg:     cfg,
		clients: clients,
		client:  clients[0],
		runID:   runID,
		label:   labelKey + "=" + runID,
		labels:  map[string]string{labelKey: runID},
		created: newIDSet(),
		log:     log,
	}, nil
}

// newRunID returns 12 hex digits: short enough to keep secret names well
// under Swarm's 64-character limit, random enough that concurrent runs
// against the same server never collide.
func newRunID() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating run ID: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(b.log, "hushbench: "+format+"\n", a...)
}

// levelResult holds the measurements at one concurrency level.
type levelResult struct {
	Concurrency int        `json:"concurrency"`
	Secrets     int        `json:"secrets"` // created for this level
	Ops         []opResult `json:"ops"`
}

// runLevels measures every concurrency level in turn. It stops early only
// when ctx is cancelled.
func (b *bench) runLevels(ctx context.Context) []levelResult {
	var levels []levelResult
	for _, c := range b.cfg.Concurrency {
		if ctx.Err() != nil {
			break
		}
		levels = append(levels, b.runLevel(ctx, c))
	}
	return levels
}

// runLevel creates n secrets and runs the selected operations on them.
// Each level starts from and returns to an empty set of this run's
// secrets, so levels are independent and the filtered list always returns
// the n secrets of the level. Creating happens even when "create" is not
// selected, because the other operations need secrets to work on.
func (b *bench) runLevel(ctx context.Context, c int) levelResult {
	lr := levelResult{Concurrency: c}
	ids, create := b.createBatch(ctx, c, b.cfg.N, fmt.Sprintf("c%d", c))
	lr.Secrets = len(ids)
	b.progress(create)
	if b.cfg.Ops[opCreate] {
		lr.Ops = append(lr.Ops, create)
	}
	if len(ids) == 0 {
		b.logf("c=%d: no secret could be created; skipping the other operations", c)
		return lr
	}
	if b.cfg.Ops[opInspect] && ctx.Err() == nil {
		lr.Ops = append(lr.Ops, b.progress(b.inspectBatch(ctx, c, ids)))
	}
	if b.cfg.Ops[opList] && ctx.Err() == nil {
		lr.Ops = append(lr.Ops, b.progress(b.listBatch(ctx, c)))
	}
	if b.cfg.Ops[opRemove] && ctx.Err() == nil {
		lr.Ops = append(lr.Ops, b.progress(b.removeBatch(ctx, c, ids)))
	}
	// Whatever is left (remove not selected, failed, or interrupted)
	// goes now, untimed, so the next level starts empty.
	if ctx.Err() == nil {
		if cr := b.cleanup(ctx); cr.Failed > 0 {
			b.logf("c=%d: %d secrets could not be removed: %s", c, cr.Failed, cr.FirstError)
		}
	}
	return lr
}

func (b *bench) progress(r opResult) opResult {
	b.logf("c=%-3d %-8s %6d ok %5d errors %9.1f ops/s  p50 %.2fms  p99 %.2fms",
		r.Concurrency, r.Op, r.OK, r.errorCount(), r.OpsPerSec, r.P50Ms, r.P99Ms)
	return r
}

// at is the client of operation i: the sockets take turns, so a load
// spreads evenly over the managers of a cluster.
func (b *bench) at(i int) *engineClient { return b.clients[i%len(b.clients)] }

// newSecret creates one secret with a fresh random value and records its ID
// for cleanup before anything else can fail.
func (b *bench) newSecret(ctx context.Context, c *engineClient, group string) (string, error) {
	data := make([]byte, secretBytes)
	if _, err := rand.Read(data); err != nil {
		return "", err
	}
	name := fmt.Sprintf("hushbench-%s-%s-%d", b.runID, group, b.seq.Add(1))
	id, err := c.createSecret(ctx, name, b.labels, data)
	if err != nil {
		return "", err
	}
	b.created.add(id)
	return id, nil
}

// createBatch creates n secrets at concurrency c and returns the IDs of
// those that were created.
func (b *bench) createBatch(ctx context.Context, c, n int, group string) ([]string, opResult) {
	ids := make([]string, n)
	bt := runBatch(ctx, c, n, func(ctx context.Context, i int) error {
		id, err := b.newSecret(ctx, b.at(i), group)
		ids[i] = id
		return err
	})
	var got []string
	for _, id := range ids {
		if id != "" {
			got = append(got, id)
		}
	}
	return got, bt.result(opCreate, c)
}

func (b *bench) inspectBatch(ctx context.Context, c int, ids []string) opResult {
	bt := runBatch(ctx, c, b.cfg.N, func(ctx context.Context, i int) error {
		return b.at(i).inspectSecret(ctx, ids[i%len(ids)])
	})
	return bt.result(opInspect, c)
}

func (b *bench) listBatch(ctx context.Context, c int) opResult {
	bt := runBatch(ctx, c, b.cfg.ListN, func(ctx context.Context, _ int) error {
		_, err := b.client.listSecrets(ctx, b.label)
		return err
	})
	r := bt.result(opList, c)
	r.Note = b.describeList(ctx, b.label)
	return r
}

// describeList makes one extra, untimed request to say how big the listed
// responses were; decoding stays out of the timed requests.
func (b *bench) describeList(ctx context.Context, label string) string {
	body, err := b.client.listSecrets(ctx, label)
	if err != nil {
		return ""
	}
	list, err := decodeSecrets(body)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d secrets, %s per response", len(list), humanBytes(len(body)))
}

func (b *bench) removeBatch(ctx context.Context, c int, ids []string) opResult {
	bt := runBatch(ctx, c, len(ids), func(ctx context.Context, i int) error {
		err := b.at(i).removeSecret(ctx, ids[i])
		if err == nil {
			b.created.remove(ids[i])
		}
		return err
	})
	return bt.result(opRemove, c)
}

// listTiming is one variant (filtered or not) of the large-list test.
type listTiming struct {
	Variant    string         `json:"variant"`
	Reps       int            `json:"reps"`
	OK         int            `json:"ok"`
	Items      int            `json:"items"`
	Bytes      int            `json:"bytes"`
	MinMs      float64        `json:"min_ms"`
	MedianMs   float64        `json:"median_ms"`
	MaxMs      float64        `json:"max_ms"`
	Errors     map[string]int `json:"errors,omitempty"`
	FirstError string         `json:"first_error,omitempty"`
}

// listSizeResult is the large-list test: fill, list, empty.
type listSizeResult struct {
	Requested  int        `json:"requested"`
	Created    int        `json:"created"`
	Fill       opResult   `json:"fill"`
	Unfiltered listTiming `json:"unfiltered"`
	Filtered   listTiming `json:"filtered"`
	Remove     opResult   `json:"remove"`
}

// runListSize measures GET /secrets with many secrets stored. The
// unfiltered list also returns secrets that others keep on the server, so
// its item count is reported next to the time.
func (b *bench) runListSize(ctx context.Context) *listSizeResult {
	c, n := b.cfg.FillConc, b.cfg.ListSize
	b.logf("large list: creating %d secrets at concurrency %d", n, c)
	ids, fill := b.createBatch(ctx, c, n, "list")
	b.progress(fill)
	r := &listSizeResult{Requested: n, Created: len(ids), Fill: fill}
	if ctx.Err() == nil {
		r.Unfiltered = b.timeList(ctx, "unfiltered", "")
		r.Filtered = b.timeList(ctx, "label filter", b.label)
	}
	if ctx.Err() == nil {
		r.Remove = b.progress(b.removeBatch(ctx, c, ids))
	}
	return r
}

// timeList sends cfg.ListReps list requests one after the other, so each
// is timed alone rather than competing with the others.
func (b *bench) timeList(ctx context.Context, variant, label string) listTiming {
	var last []byte // written only by runBatch's single worker
	bt := runBatch(ctx, 1, b.cfg.ListReps, func(ctx context.Context, _ int) error {
		body, err := b.client.listSecrets(ctx, label)
		if err == nil {
			last = body
		}
		return err
	})
	t := listTiming{Variant: variant, Reps: b.cfg.ListReps}
	var lat []time.Duration
	for _, s := range bt.samples {
		switch {
		case !s.ran:
		case s.err == nil:
			lat = append(lat, s.latency)
		default:
			if t.Errors == nil {
				t.Errors, t.FirstError = map[string]int{}, s.err.Error()
			}
			t.Errors[errorKind(s.err)]++
		}
	}
	t.OK = len(lat)
	if last != nil {
		t.Bytes = len(last)
		if list, err := decodeSecrets(last); err == nil {
			t.Items = len(list)
		}
	}
	if len(lat) > 0 {
		sorted := sortedCopy(lat)
		t.MinMs, t.MedianMs, t.MaxMs = ms(sorted[0]), ms(median(sorted)), ms(sorted[len(sorted)-1])
	}
	b.logf("large list %-12s %d items, %s, median %.1fms", variant, t.Items, humanBytes(t.Bytes), t.MedianMs)
	return t
}
