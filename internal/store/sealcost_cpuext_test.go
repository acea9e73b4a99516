package store_test

import (
	"syscall"
	"testing"
	"time"
)

// cpuPerOp reports the process's CPU time (user + system) per operation
// as cpu-ns/op when the returned func is called after the loop: on a
// machine shared with other work it varies far less than ns/op.
func cpuPerOpExt(b *testing.B) func() {
	start := cpuTimeExt()
	return func() { b.ReportMetric(float64(cpuTimeExt()-start)/float64(b.N), "cpu-ns/op") }
}

func cpuTimeExt() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
