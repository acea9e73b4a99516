// Command hushd is the hush daemon: a secrets manager that serves Docker
// Swarm's secrets API so the docker CLI works against it unchanged.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/hush-secrets/hush/internal/daemon"
	"github.com/hush-secrets/hush/internal/enginehost"
)

func main() {
	os.Exit(run())
}

func run() int {
	if len(os.Args) > 1 && os.Args[1] == "restore" {
		return runRestore(os.Args[2:], os.Stdout, os.Stderr)
	}
	dataDir, socket := defaultPaths()
	fs := flag.NewFlagSet("hushd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: hushd [options]          run the daemon\n       hushd restore --help     restore a backup into a new data dir (offline)\n\nOptions:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&dataDir, "data-dir", dataDir, "directory for the store, keys and node state")
	fs.StringVar(&socket, "socket", socket, "unix socket to serve the Docker API on (mode 0660)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	advertise := fs.String("advertise-addr", "", "IP address other nodes reach this one at (default: the --listen-addr IP; 127.0.0.1 when that is 0.0.0.0 or not given)")
	listen := fs.String("listen-addr", "", "host:port of this manager's TLS join/CA service, for other managers to join; etcd's peer port is the next port (default: no TCP port)")
	engineFlag := fs.String("engine", enginehost.DefaultPath, "the host's Docker Engine: a unix socket path or unix:// URL; \"\" runs secrets only")
	secretsDir := fs.String("secrets-dir", "", "root of per-task secret tmpfs mounts (default /run/hush/<node ID>)")
	noInit := fs.Bool("no-init", false, "start without a cluster; `docker swarm init` creates one")
	allowCore := fs.Bool("allow-core-dumps", false, "leave the process dumpable and its core size limit as it is (key material can then end up in core dumps)")
	var ext externalFlags
	fs.StringVar(&ext.endpoints, "external-etcd", "", "comma-separated https:// client URLs of an etcd cluster you run, which then holds the store instead of an embedded member (needs --etcd-cacert, --etcd-cert, --etcd-key)")
	fs.StringVar(&ext.caFile, "etcd-cacert", "", "CA certificate (PEM) that verifies the --external-etcd servers")
	fs.StringVar(&ext.certFile, "etcd-cert", "", "client certificate (PEM) hushd presents to --external-etcd; re-read at each connection")
	fs.StringVar(&ext.keyFile, "etcd-key", "", "key (PEM) of --etcd-cert; re-read at each connection")
	fs.StringVar(&ext.prefix, "external-etcd-prefix", "", "key prefix (e.g. /team-a) under which this hush cluster keeps its keys in --external-etcd, so several can share one etcd (default: keys start at /hush/v1/)")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *version {
		fmt.Println("hushd", daemon.Version)
		return 0
	}
	extCfg, err := ext.config()
	if err != nil {
		fmt.Fprintf(os.Stderr, "hushd: %v\n", err)
		return 2
	}
	var eng *enginehost.Host
	if *engineFlag != "" {
		h, err := enginehost.Parse(*engineFlag)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hushd: bad --engine %q: %v\n", *engineFlag, err)
			return 2
		}
		eng = &h
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "hushd: bad --log-level %q\n", *logLevel)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if !*allowCore {
		// Before any key is loaded.
		if err := protectMemory(); err != nil {
			log.Error("hushd failed to start", "err", err)
			return 1
		}
	} else {
		log.Warn("core dumps allowed (--allow-core-dumps): a dump of hushd can hold key material")
	}
	etcdLevel := "warn"
	if lvl <= slog.LevelDebug {
		etcdLevel = "info"
	}

	// End-to-end crash tests only: see daemon.Config.Failpoints. A
	// production hushd (built without the tag hushfailpoints) has none, so
	// the variable set by accident can never make it hang.
	failpoints, ok := os.LookupEnv("HUSH_TEST_FAILPOINTS")
	if ok && !daemon.FailpointsBuilt {
		log.Warn("HUSH_TEST_FAILPOINTS ignored: this hushd was built without failpoints (build tag hushfailpoints)")
		failpoints = ""
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d, err := daemon.Start(ctx, daemon.Config{
		DataDir: dataDir, Socket: socket, AdvertiseAddr: *advertise, ListenAddr: *listen,
		EtcdLogLevel: etcdLevel, Logger: log, External: extCfg,
		Engine: eng, SecretsDir: *secretsDir, NoInit: *noInit,
		Failpoints: failpoints,
	})
	if err != nil {
		log.Error("hushd failed to start", "err", err)
		return 1
	}
	code := 0
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-d.Err():
		log.Error("hushd failed", "err", err)
		code = 1
	}
	d.Close()
	return code
}

// defaultPaths gives root the system locations and other users paths in
// their home, so `hushd` with no flags works for both.
func defaultPaths() (dataDir, socket string) {
	if os.Geteuid() == 0 {
		return "/var/lib/hush", "/run/hush/hushd.sock"
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "."
	}
	dataDir = filepath.Join(home, ".local", "share", "hush")
	return dataDir, filepath.Join(dataDir, "hushd.sock")
}
