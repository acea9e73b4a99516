package main

import (
	"testing"
	"time"
)

func durations(ms ...int) []time.Duration {
	out := make([]time.Duration, len(ms))
	for i, v := range ms {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

func seq(n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i+1) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"single p0", durations(7), 0, 7 * time.Millisecond},
		{"single p50", durations(7), 50, 7 * time.Millisecond},
		{"single p100", durations(7), 100, 7 * time.Millisecond},
		{"p0 is min", durations(1, 2, 3, 4), 0, 1 * time.Millisecond},
		{"p50 of even count is lower middle", durations(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p50 of odd count is middle", durations(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"p90 of 10", seq(10), 90, 9 * time.Millisecond},
		{"p99 of 100 is not max", seq(100), 99, 99 * time.Millisecond},
		{"p99 of 1000", seq(1000), 99, 990 * time.Millisecond},
		{"p99 of 10 rounds up to max", seq(10), 99, 10 * time.Millisecond},
		{"p100 is max", seq(10), 100, 10 * time.Millisecond},
		{"p above 100 clamps to max", seq(10), 150, 10 * time.Millisecond},
		{"negative p clamps to min", seq(10), -5, 1 * time.Millisecond},
		{"duplicates", durations(5, 5, 5, 9), 75, 5 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name   string
		sorted []time.Duration
		want   time.Duration
	}{
		{"empty", nil, 0},
		{"one", durations(3), 3 * time.Millisecond},
		{"odd", durations(1, 2, 9), 2 * time.Millisecond},
		{"even averages middle two", durations(1, 2, 4, 9), 3 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.sorted); got != tt.want {
				t.Errorf("median(%v) = %v, want %v", tt.sorted, got, tt.want)
			}
		})
	}
}

func TestSummarizeDoesNotNeedSortedInput(t *testing.T) {
	in := durations(9, 1, 5, 3, 7)
	got := summarize(in)
	want := latencySummary{
		P50:  5 * time.Millisecond,
		P90:  9 * time.Millisecond,
		P99:  9 * time.Millisecond,
		Max:  9 * time.Millisecond,
		Mean: 5 * time.Millisecond,
	}
	if got != want {
		t.Errorf("summarize(%v) = %+v, want %+v", in, got, want)
	}
	if in[0] != 9*time.Millisecond {
		t.Errorf("summarize reordered its input: %v", in)
	}
}
