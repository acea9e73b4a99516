package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// sample is the outcome of one timed operation.
type sample struct {
	ran     bool // false if the run was interrupted before this operation
	latency time.Duration
	err     error
}

// batch is the raw outcome of running one operation n times.
type batch struct {
	samples []sample
	elapsed time.Duration
}

// opFunc performs operation number i of a batch.
type opFunc func(ctx context.Context, i int) error

// runBatch performs op n times with conc workers in a closed loop: each
// worker sends its next request as soon as the previous one has answered,
// so the server always has exactly conc requests in flight. Latency is
// measured around the whole call, response body included.
func runBatch(ctx context.Context, conc, n int, op opFunc) batch {
	samples := make([]sample, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range min(conc, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				t0 := time.Now()
				err := op(ctx, i)
				// Each index is written by exactly one worker, so
				// samples needs no lock.
				samples[i] = sample{ran: ctx.Err() == nil || err == nil, latency: time.Since(t0), err: err}
			}
		})
	}
	wg.Wait()
	return batch{samples: samples, elapsed: time.Since(start)}
}

// opResult is the measured result of one operation at one concurrency.
type opResult struct {
	Op          string         `json:"op"`
	Concurrency int            `json:"concurrency"`
	Requested   int            `json:"requested"`
	Completed   int            `json:"completed"`
	OK          int            `json:"ok"`
	Errors      map[string]int `json:"errors,omitempty"`
	FirstError  string         `json:"first_error,omitempty"`
	ElapsedSec  float64        `json:"elapsed_s"`
	OpsPerSec   float64        `json:"ops_per_s"`
	P50Ms       float64        `json:"p50_ms"`
	P90Ms       float64        `json:"p90_ms"`
	P99Ms       float64        `json:"p99_ms"`
	MaxMs       float64        `json:"max_ms"`
	MeanMs      float64        `json:"mean_ms"`
	Note        string         `json:"note,omitempty"`
}

// result turns a batch into an opResult. Throughput and percentiles count
// successful operations only; failures are counted by kind next to them,
// so a server cannot look fast by failing quickly.
func (b batch) result(op string, conc int) opResult {
	r := opResult{Op: op, Concurrency: conc, Requested: len(b.samples)}
	var ok []time.Duration
	for _, s := range b.samples {
		if !s.ran {
			continue
		}
		r.Completed++
		if s.err == nil {
			ok = append(ok, s.latency)
			continue
		}
		if r.Errors == nil {
			r.Errors = map[string]int{}
			r.FirstError = s.err.Error()
		}
		r.Errors[errorKind(s.err)]++
	}
	r.OK = len(ok)
	r.ElapsedSec = b.elapsed.Seconds()
	if b.elapsed > 0 {
		r.OpsPerSec = float64(r.OK) / b.elapsed.Seconds()
	}
	l := summarize(ok)
	r.P50Ms, r.P90Ms, r.P99Ms, r.MaxMs, r.MeanMs = ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max), ms(l.Mean)
	return r
}

func (r opResult) errorCount() int { return r.Completed - r.OK }

// errorKind is the bucket an error is counted in: the HTTP status for an
// unexpected response, otherwise the class of transport failure.
func errorKind(err error) string {
	var se *statusError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("HTTP %d", se.Status)
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	default:
		return "transport"
	}
}
