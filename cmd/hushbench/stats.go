package main

import (
	"math"
	"slices"
	"time"
)

// latencySummary is the distribution of latencies of the successful
// operations of one measurement.
type latencySummary struct {
	P50, P90, P99, Max, Mean time.Duration
}

func summarize(latencies []time.Duration) latencySummary {
	if len(latencies) == 0 {
		return latencySummary{}
	}
	sorted := sortedCopy(latencies)
	var sum time.Duration
	for _, d := range sorted {
		sum += d
	}
	return latencySummary{
		P50:  percentile(sorted, 50),
		P90:  percentile(sorted, 90),
		P99:  percentile(sorted, 99),
		Max:  sorted[len(sorted)-1],
		Mean: sum / time.Duration(len(sorted)),
	}
}

// sortedCopy returns an ascending copy, leaving the caller's order alone.
func sortedCopy(d []time.Duration) []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

// percentile returns the p-th percentile of an ascending slice by the
// nearest-rank method: the smallest sample that at least p% of samples are
// less than or equal to. Unlike interpolation it always reports a latency
// that was actually observed, and p99 of 100 samples is the 99th, not the
// maximum. It returns 0 for an empty slice.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// median of an ascending slice; for an even count the mean of the two
// middle samples, as usually meant by "median" of a handful of repetitions.
func median(sorted []time.Duration) time.Duration {
	n := len(sorted)
	switch {
	case n == 0:
		return 0
	case n%2 == 1:
		return sorted[n/2]
	default:
		return (sorted[n/2-1] + sorted[n/2]) / 2
	}
}

// ms converts a duration to milliseconds with microsecond resolution for
// tables and JSON, where float milliseconds are easier to compare than
// Go's duration strings.
func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Microsecond)) / 1000
}
