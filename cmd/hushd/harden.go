package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// protectMemory keeps hushd's memory, where key material lives while it
// runs, out of core dumps and away from same-user debuggers: the process
// is made not dumpable (which also makes /proc/<pid>/mem, maps and environ
// readable only by root, and refuses ptrace to other processes of the same
// user) and its core size limit is set to 0. --allow-core-dumps skips both,
// for debugging a crash on a machine whose dumps are protected.
func protectMemory() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("setting the core size limit to 0: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("making the process not dumpable: %w", err)
	}
	return nil
}
