package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hush-secrets/hush/internal/backup"
	"github.com/hush-secrets/hush/internal/daemon"
)

const restoreUsage = `Usage: hushd restore [--data-dir DIR] --key-file KEYFILE FILE

Restore a backup taken with "hush backup" into a new data directory, offline.

DIR must be absent or empty, and no hushd may be running on it. The whole of
FILE is decrypted and authenticated with the key derived from KEYFILE's
contents before anything is written to DIR; a wrong key file, or a backup
that was changed or truncated, is refused and DIR is left as it was. Then
start hushd on DIR: it comes back with the same cluster, node identity,
secrets, configs and services as at the time of the backup. A backup of an
autolocked node comes back locked: unlock it with the unlock key that was
current when the backup was taken.

Options:
`

// runRestore is `hushd restore`. Exit codes: 0 restored, 1 refused or
// failed, 2 usage.
func runRestore(args []string, stdout, stderr io.Writer) int {
	dataDir, _ := defaultPaths()
	fs := flag.NewFlagSet("hushd restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&dataDir, "data-dir", dataDir, "the data directory to create (absent or empty)")
	keyFile := fs.String("key-file", "", "the file whose contents the backup was taken with (required)")
	logLevel := fs.String("log-level", "error", "etcd's log level during the restore: debug, info, warn, error")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), restoreUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return 0
		}
		return 2
	}
	switch {
	case fs.NArg() != 1:
		fmt.Fprintln(stderr, "hushd restore: give exactly one backup file (see hushd restore --help)")
		return 2
	case *keyFile == "":
		fmt.Fprintln(stderr, "hushd restore: --key-file is required")
		return 2
	case dataDir == "":
		fmt.Fprintln(stderr, "hushd restore: --data-dir is empty")
		return 2
	}
	switch *logLevel {
	case "debug", "info", "warn", "error":
	default:
		fmt.Fprintf(stderr, "hushd restore: bad --log-level %q\n", *logLevel)
		return 2
	}
	// The restore holds the backup key, the master key and the snapshot's
	// sealed store in memory: kept out of core dumps as the daemon's are.
	if err := protectMemory(); err != nil {
		fmt.Fprintf(stderr, "hushd restore: %v\n", err)
		return 1
	}
	key, err := backup.ReadKeyFile(*keyFile)
	if err != nil {
		fmt.Fprintf(stderr, "hushd restore: %v\n", err)
		return 1
	}
	defer clear(key)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := daemon.Restore(ctx, daemon.RestoreConfig{DataDir: dataDir, Backup: fs.Arg(0), Key: key, EtcdLogLevel: *logLevel})
	if err != nil {
		fmt.Fprintf(stderr, "hushd restore: %s\n", strings.Join(strings.Fields(err.Error()), " "))
		return 1
	}
	fmt.Fprintf(stdout, "Restored cluster %s (node %s, backup of %s) into %s.\n",
		res.ClusterID, res.NodeID, res.Created.Format("2006-01-02 15:04:05 MST"), dataDir)
	if res.Autolock {
		fmt.Fprintln(stdout, "The node was autolocked: it will start locked. Unlock it with the unlock key that was current when the backup was taken.")
	}
	fmt.Fprintf(stdout, "Start it with: hushd --data-dir %s\n", dataDir)
	return 0
}
