// Command hushbench load-tests a Docker Engine secrets API on a unix socket:
// Docker Swarm's own (dockerd in swarm mode) or hushd's, with the same
// requests, so the two can be compared figure for figure.
//
// For each concurrency level it measures create, inspect, list and remove
// (ops/s and latency percentiles), then how long GET /secrets takes with
// many secrets stored. Every secret it creates carries the label
// hushbench=<run id> and is removed before it exits, also after an error
// or an interrupt. See README.md for how to run it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit statuses.
const (
	exitOK     = 0
	exitErrors = 1 // the run finished but some requests failed, or it could not start
	exitUsage  = 2
)

// run is main without the process exit, so that it can be tested.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return exitUsage
	}
	b, err := newBench(cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "hushbench: %v\n", err)
		return exitErrors
	}
	defer func() {
		for _, c := range b.clients {
			c.close()
		}
	}()

	if cfg.FailoverPID > 0 {
		return runFailover(b, killPID(cfg.FailoverPID), stdout, stderr)
	}
	res, err := b.measure()
	if err != nil {
		fmt.Fprintf(stderr, "hushbench: %v\n", err)
		return exitErrors
	}
	writeReport(stdout, res)
	if cfg.JSONPath != "" {
		if err := writeJSON(cfg.JSONPath, res); err != nil {
			fmt.Fprintf(stderr, "hushbench: writing %s: %v\n", cfg.JSONPath, err)
			return exitErrors
		}
	}
	if res.Interrupted || res.errorCount() > 0 {
		return exitErrors
	}
	return exitOK
}

// measure runs the whole benchmark and then the cleanup. The first SIGINT
// or SIGTERM stops the load and still cleans up; a second one kills the
// process, for when cleanup itself hangs.
func (b *bench) measure() (*results, error) {
	cfg := b.cfg
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	res := &results{RunID: b.runID, StartedAt: time.Now(), Config: cfg, Client: currentClient()}
	res.Server = b.client.probeServer(ctx)
	if err := b.client.preflight(ctx, b.label); err != nil {
		return nil, err
	}
	b.logf("run %s against %s (%s)", b.runID, cfg.Socket, res.Server)

	if len(b.cfg.Ops) > 0 {
		res.Levels = b.runLevels(ctx)
	}
	if cfg.ListSize > 0 && ctx.Err() == nil {
		res.ListSize = b.runListSize(ctx)
	}
	res.Interrupted = ctx.Err() != nil
	stop() // restore default signal handling: a second interrupt exits

	if res.Interrupted {
		b.logf("interrupted; removing this run's secrets (interrupt again to skip)")
	}
	cctx, cancel := context.WithTimeout(context.Background(), cfg.CleanupLimit)
	defer cancel()
	res.Cleanup = b.cleanup(cctx)
	res.FinishedAt = time.Now()
	return res, nil
}

// runFailover is run's failover mode: preflight, the measurement, cleanup.
func runFailover(b *bench, kill func() error, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := b.client.preflight(ctx, b.label); err != nil {
		fmt.Fprintf(stderr, "hushbench: %v\n", err)
		return exitErrors
	}
	r, err := b.failover(ctx, kill)
	stop()
	cctx, cancel := context.WithTimeout(context.Background(), b.cfg.CleanupLimit)
	defer cancel()
	cl := b.cleanup(cctx)
	if err != nil {
		fmt.Fprintf(stderr, "hushbench: %v\n", err)
		return exitErrors
	}
	writeFailoverReport(stdout, r)
	fmt.Fprintf(stdout, "  cleanup: %d found, %d removed, %d failed\n", cl.Found, cl.Removed, cl.Failed)
	if b.cfg.JSONPath != "" {
		if err := writeJSON(b.cfg.JSONPath, r); err != nil {
			fmt.Fprintf(stderr, "hushbench: writing %s: %v\n", b.cfg.JSONPath, err)
			return exitErrors
		}
	}
	if r.TimedOut || cl.Failed > 0 {
		return exitErrors
	}
	return exitOK
}
