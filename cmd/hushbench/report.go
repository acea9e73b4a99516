package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// results is everything one run measured; it is what --json writes.
type results struct {
	RunID       string          `json:"run_id"`
	StartedAt   time.Time       `json:"started_at"`
	FinishedAt  time.Time       `json:"finished_at"`
	Interrupted bool            `json:"interrupted"`
	Config      config          `json:"config"`
	Server      serverInfo      `json:"server"`
	Client      clientInfo      `json:"client"`
	Levels      []levelResult   `json:"levels"`
	ListSize    *listSizeResult `json:"list_size,omitempty"`
	Cleanup     cleanupResult   `json:"cleanup"`
}

// clientInfo records the machine that generated the load: on a small
// machine the client competes with the server for CPU, which matters when
// comparing figures.
type clientInfo struct {
	Hostname   string `json:"hostname,omitempty"`
	GOOS       string `json:"goos"`
	GOARCH     string `json:"goarch"`
	NumCPU     int    `json:"num_cpu"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
}

func currentClient() clientInfo {
	host, _ := os.Hostname()
	return clientInfo{
		Hostname:   host,
		GOOS:       runtime.GOOS,
		GOARCH:     runtime.GOARCH,
		NumCPU:     runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion:  runtime.Version(),
	}
}

// errorCount is the number of failed operations in the whole run, cleanup
// included; it decides the exit status.
func (r *results) errorCount() int {
	n := r.Cleanup.Failed
	for _, l := range r.Levels {
		for _, o := range l.Ops {
			n += o.errorCount()
		}
	}
	if ls := r.ListSize; ls != nil {
		n += ls.Fill.errorCount() + ls.Remove.errorCount()
		n += ls.Unfiltered.Reps - ls.Unfiltered.OK + ls.Filtered.Reps - ls.Filtered.OK
	}
	return n
}

func writeJSON(path string, r any) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// MarshalJSON writes the selected operations as a list in run order.
func (s opSet) MarshalJSON() ([]byte, error) {
	var ops []string
	for _, op := range allOps {
		if s[op] {
			ops = append(ops, op)
		}
	}
	return json.Marshal(ops)
}

// writeReport prints the human-readable report.
func writeReport(w io.Writer, r *results) {
	writeHeader(w, r)
	writeOpsTable(w, r)
	if r.ListSize != nil {
		writeListSize(w, r.ListSize)
	}
	writeErrors(w, r)
	writeCleanup(w, r.Cleanup)
}

func writeHeader(w io.Writer, r *results) {
	c := r.Config
	fmt.Fprintf(w, "hushbench run %s, %s, took %s\n", r.RunID, r.StartedAt.UTC().Format(time.RFC3339),
		r.FinishedAt.Sub(r.StartedAt).Round(time.Second))
	api := c.API
	if api == "" {
		api = "(unversioned)"
	}
	fmt.Fprintf(w, "server:  unix://%s, API path %s; %s\n", c.Socket, api, r.Server)
	fmt.Fprintf(w, "client:  %s/%s, %d CPUs, %s, host %s\n", r.Client.GOOS, r.Client.GOARCH, r.Client.NumCPU, r.Client.GoVersion, r.Client.Hostname)
	fmt.Fprintf(w, "load:    n=%d ops per op and level (list: %d), %d-byte random secrets, closed loop\n", c.N, c.ListN, secretBytes)
	if r.Interrupted {
		fmt.Fprintln(w, "NOTE:    run was interrupted; figures are partial")
	}
	fmt.Fprintln(w)
}

func writeOpsTable(w io.Writer, r *results) {
	if len(r.Levels) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "op\tconc\tok\terrors\tops/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\t")
	for _, op := range allOps {
		for _, l := range r.Levels {
			for _, o := range l.Ops {
				if o.Op == op {
					writeOpRow(tw, o)
				}
			}
		}
	}
	tw.Flush()
	for _, l := range r.Levels {
		for _, o := range l.Ops {
			if o.Note != "" {
				fmt.Fprintf(w, "  %s at c=%d: %s\n", o.Op, o.Concurrency, o.Note)
			}
		}
	}
	fmt.Fprintln(w)
}

func writeOpRow(w io.Writer, o opResult) {
	fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t\n",
		o.Op, o.Concurrency, o.OK, o.errorCount(), o.OpsPerSec, o.P50Ms, o.P90Ms, o.P99Ms, o.MaxMs)
}

func writeListSize(w io.Writer, ls *listSizeResult) {
	fmt.Fprintf(w, "large list: %d of %d secrets created at c=%d (%.1f ops/s, p50 %.2f ms, p99 %.2f ms)\n",
		ls.Created, ls.Requested, ls.Fill.Concurrency, ls.Fill.OpsPerSec, ls.Fill.P50Ms, ls.Fill.P99Ms)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "GET /secrets\tok/reps\titems\tresponse\tmin ms\tmedian ms\tmax ms\t")
	for _, t := range []listTiming{ls.Unfiltered, ls.Filtered} {
		fmt.Fprintf(tw, "%s\t%d/%d\t%d\t%s\t%.1f\t%.1f\t%.1f\t\n",
			t.Variant, t.OK, t.Reps, t.Items, humanBytes(t.Bytes), t.MinMs, t.MedianMs, t.MaxMs)
	}
	tw.Flush()
	fmt.Fprintln(w, "  (unfiltered also lists secrets that others keep on the server)")
	fmt.Fprintf(w, "  removed at c=%d: %d ok (%.1f ops/s, p50 %.2f ms, p99 %.2f ms)\n\n",
		ls.Remove.Concurrency, ls.Remove.OK, ls.Remove.OpsPerSec, ls.Remove.P50Ms, ls.Remove.P99Ms)
}

// writeErrors lists unexpected outcomes per measurement, with the first
// error message (a bounded server error body, never a secret value).
func writeErrors(w io.Writer, r *results) {
	var lines []string
	add := func(what string, errs map[string]int, first string) {
		if len(errs) == 0 {
			return
		}
		var kinds []string
		for _, k := range slices.Sorted(maps.Keys(errs)) {
			kinds = append(kinds, fmt.Sprintf("%s ×%d", k, errs[k]))
		}
		lines = append(lines, fmt.Sprintf("  %s: %s\n    first: %s", what, strings.Join(kinds, ", "), first))
	}
	for _, l := range r.Levels {
		for _, o := range l.Ops {
			add(fmt.Sprintf("%s c=%d", o.Op, o.Concurrency), o.Errors, o.FirstError)
		}
	}
	if ls := r.ListSize; ls != nil {
		add("large-list create", ls.Fill.Errors, ls.Fill.FirstError)
		add("large-list GET unfiltered", ls.Unfiltered.Errors, ls.Unfiltered.FirstError)
		add("large-list GET filtered", ls.Filtered.Errors, ls.Filtered.FirstError)
		add("large-list remove", ls.Remove.Errors, ls.Remove.FirstError)
	}
	if len(lines) == 0 {
		fmt.Fprintln(w, "errors: none (every response had the expected status)")
		return
	}
	fmt.Fprintln(w, "errors (unexpected responses):")
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

func writeCleanup(w io.Writer, c cleanupResult) {
	fmt.Fprintf(w, "cleanup: %d leftover secrets found, %d removed, %d failed", c.Found, c.Removed, c.Failed)
	if c.FirstError != "" {
		fmt.Fprintf(w, " (first error: %s)", c.FirstError)
	}
	fmt.Fprintln(w)
}

func humanBytes(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}

// UnmarshalJSON reads what MarshalJSON writes, so results files can be
// loaded back (e.g. to compare two runs).
func (s *opSet) UnmarshalJSON(data []byte) error {
	var ops []string
	if err := json.Unmarshal(data, &ops); err != nil {
		return err
	}
	*s = opSet{}
	for _, op := range ops {
		(*s)[op] = true
	}
	return nil
}
