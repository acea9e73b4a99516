package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Operation names accepted by --ops, in the order they run within a level.
const (
	opCreate  = "create"
	opInspect = "inspect"
	opList    = "list"
	opRemove  = "remove"
)

var allOps = []string{opCreate, opInspect, opList, opRemove}

// opSet is the selection made with --ops.
type opSet map[string]bool

// config is everything the command line decides.
type config struct {
	Socket       string        `json:"socket"`
	API          string        `json:"api"`
	Concurrency  []int         `json:"concurrency"`
	N            int           `json:"n"`
	ListN        int           `json:"list_n"`
	ListSize     int           `json:"list_size"`
	ListReps     int           `json:"list_reps"`
	FillConc     int           `json:"list_fill_concurrency"`
	Ops          opSet         `json:"ops"`
	JSONPath     string        `json:"-"`
	Timeout      time.Duration `json:"-"`
	CleanupLimit time.Duration `json:"-"`
	// Failover mode: kill this pid after the warm-up (0: the normal run).
	FailoverPID    int           `json:"failover_pid,omitempty"`
	FailoverWarmup time.Duration `json:"-"`
	FailoverLimit  time.Duration `json:"-"`
}

// maxConcurrency is the largest number of requests ever in flight, which
// sizes the connection pool so that no request waits for a connection.
func (c config) maxConcurrency() int {
	m := c.FillConc
	for _, v := range c.Concurrency {
		m = max(m, v)
	}
	return max(m, cleanupConcurrency, failoverWriters)
}

// parseConfig reads the command line. Errors are already explained to the
// user on out (flag's convention), so the caller only needs the exit code.
func parseConfig(args []string, out io.Writer) (config, error) {
	fs := flag.NewFlagSet("hushbench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: hushbench [flags]\n\n"+
			"Load-tests the Docker secrets API (POST /secrets/create, GET /secrets,\n"+
			"GET /secrets/{id}, DELETE /secrets/{id}) on a unix socket: Docker Swarm\n"+
			"or hushd. Removes every secret it created before exiting.\n\nflags:\n")
		fs.PrintDefaults()
	}

	var cfg config
	var conc, ops string
	fs.StringVar(&cfg.Socket, "socket", "/var/run/docker.sock", "unix socket of the Docker Engine API server (dockerd in swarm mode, or hushd); several, comma-separated, take turns (the managers of one cluster)")
	fs.StringVar(&cfg.API, "api", "v1.41", `API version prefix for request paths ("" for unversioned paths)`)
	fs.StringVar(&conc, "concurrency", "1,8,16", "comma-separated concurrency levels (requests in flight)")
	fs.IntVar(&cfg.N, "n", 2000, "operations per op and concurrency level (also the number of secrets created per level)")
	fs.IntVar(&cfg.ListN, "list-n", 0, "filtered list operations per level (0 = n/10); each list returns the n secrets of the level")
	fs.IntVar(&cfg.ListSize, "list-size", 10000, "secrets to create for the large-list test (0 skips it)")
	fs.IntVar(&cfg.ListReps, "list-reps", 10, "timed GET /secrets requests per variant in the large-list test")
	fs.IntVar(&cfg.FillConc, "list-fill-concurrency", 16, "concurrency used to create and remove the large-list secrets")
	fs.StringVar(&ops, "ops", strings.Join(allOps, ","), "comma-separated operations to measure: "+strings.Join(allOps, ","))
	fs.StringVar(&cfg.JSONPath, "json", "", "also write machine-readable results to this file")
	fs.DurationVar(&cfg.Timeout, "timeout", 60*time.Second, "timeout for a single request")
	fs.DurationVar(&cfg.CleanupLimit, "cleanup-timeout", 5*time.Minute, "time allowed for removing leftovers at exit")
	fs.IntVar(&cfg.FailoverPID, "failover-pid", 0, "failover mode: write through every --socket, SIGKILL this pid (a cluster's leader) after --failover-warmup, and measure until each socket acknowledges writes again")
	fs.DurationVar(&cfg.FailoverWarmup, "failover-warmup", 3*time.Second, "failover mode: writing time before the kill")
	fs.DurationVar(&cfg.FailoverLimit, "failover-limit", 60*time.Second, "failover mode: give up this long after the kill")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, usageError(fs, "unexpected arguments: %q", fs.Args())
	}

	var err error
	if cfg.Concurrency, err = parseConcurrency(conc); err != nil {
		return config{}, usageError(fs, "--concurrency: %v", err)
	}
	if cfg.Ops, err = parseOps(ops); err != nil {
		return config{}, usageError(fs, "--ops: %v", err)
	}
	cfg.API = normalizeAPI(cfg.API)
	if cfg.ListN == 0 {
		cfg.ListN = max(1, cfg.N/10)
	}
	if err := cfg.validate(); err != nil {
		return config{}, usageError(fs, "%v", err)
	}
	return cfg, nil
}

func (c config) validate() error {
	switch {
	case c.N < 1:
		return errors.New("--n must be at least 1")
	case c.ListN < 1:
		return errors.New("--list-n must be at least 1")
	case c.ListSize < 0:
		return errors.New("--list-size must not be negative")
	case c.ListReps < 1:
		return errors.New("--list-reps must be at least 1")
	case c.FillConc < 1:
		return errors.New("--list-fill-concurrency must be at least 1")
	case c.FailoverPID < 0:
		return errors.New("--failover-pid must not be negative")
	case c.FailoverPID > 0 && (c.FailoverWarmup <= 0 || c.FailoverLimit <= 0):
		return errors.New("--failover-warmup and --failover-limit must be positive")
	case c.Timeout <= 0:
		return errors.New("--timeout must be positive")
	case slices.Contains(c.sockets(), ""):
		return errors.New("--socket must not be empty or hold an empty entry")
	}
	return nil
}

// sockets lists the sockets of --socket.
func (c config) sockets() []string { return strings.Split(c.Socket, ",") }

func usageError(fs *flag.FlagSet, format string, a ...any) error {
	err := fmt.Errorf(format, a...)
	// The full flag list would bury the one line that matters.
	fmt.Fprintf(fs.Output(), "hushbench: %v (see hushbench -h)\n", err)
	return err
}

func parseConcurrency(s string) ([]int, error) {
	var levels []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		levels = append(levels, v)
	}
	return levels, nil
}

func parseOps(s string) (opSet, error) {
	set := opSet{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !isKnownOp(f) {
			return nil, fmt.Errorf("unknown operation %q (want some of %s)", f, strings.Join(allOps, ","))
		}
		set[f] = true
	}
	return set, nil
}

func isKnownOp(name string) bool {
	for _, op := range allOps {
		if op == name {
			return true
		}
	}
	return false
}

// normalizeAPI accepts "1.41" as well as "v1.41", since docker's own
// DOCKER_API_VERSION is written without the "v".
func normalizeAPI(s string) string {
	s = strings.Trim(strings.TrimSpace(s), "/")
	if s == "" || strings.HasPrefix(s, "v") {
		return s
	}
	return "v" + s
}
