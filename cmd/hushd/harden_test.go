package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// protectMemory changes the process it runs in for good, so it runs in a
// child: this test binary, re-run with an environment variable set.
func TestProtectMemory(t *testing.T) {
	if os.Getenv("HUSH_TEST_PROTECT_MEMORY") == "1" {
		if err := protectMemory(); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		dumpable, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		var lim unix.Rlimit
		if err2 := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err != nil || err2 != nil {
			fmt.Println("error:", err, err2)
			os.Exit(1)
		}
		fmt.Printf("dumpable=%d core=%d/%d\n", dumpable, lim.Cur, lim.Max)
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestProtectMemory$")
	cmd.Env = append(os.Environ(), "HUSH_TEST_PROTECT_MEMORY=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); !strings.Contains(got, "dumpable=0 core=0/0") {
		t.Fatalf("after protectMemory: %q, want dumpable=0 core=0/0", got)
	}
}

// hushd restore holds the backup key and the master key: it protects its
// memory as the daemon does, before it reads the key file.
func TestRestoreProtectsMemory(t *testing.T) {
	if os.Getenv("HUSH_TEST_RESTORE_PROTECT") == "1" {
		var out, errb strings.Builder
		code := runRestore([]string{"--data-dir", os.Getenv("HUSH_TEST_DIR"), "--key-file", "/nonexistent/key", "backup.hush"}, &out, &errb)
		dumpable, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		var lim unix.Rlimit
		if err2 := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err != nil || err2 != nil {
			fmt.Println("error:", err, err2)
			os.Exit(1)
		}
		fmt.Printf("code=%d dumpable=%d core=%d/%d\n", code, dumpable, lim.Cur, lim.Max)
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRestoreProtectsMemory$")
	cmd.Env = append(os.Environ(), "HUSH_TEST_RESTORE_PROTECT=1", "HUSH_TEST_DIR="+t.TempDir()+"/data")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); !strings.Contains(got, "code=1 dumpable=0 core=0/0") {
		t.Fatalf("after a refused restore: %q, want code=1 dumpable=0 core=0/0", got)
	}
}
