// Command hush is the command-line client of hushd: the operations the
// docker CLI has no command for (backups, master-key rotation). It finds
// hushd as the docker CLI finds its daemon, and also runs as a docker CLI
// plugin (`docker hush …`) when installed as docker-hush in a cli-plugins
// directory.
//
// Exit status: 0 success; 1 hushd refused the request or the operation
// failed; 2 the command line is wrong.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// version is hush's version; it is hushd's (a test keeps them equal).
const version = "0.1.0-dev"

const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// env is everything run takes from the process, so tests give their own.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	home           string
	euid           int
}

func main() {
	home, _ := os.UserHomeDir()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, &env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, home: home, euid: os.Geteuid()})
	stop()
	os.Exit(code)
}

// usageError is a wrong command line: exit status 2. global marks one in
// the global options, which no command's help would explain.
type usageError struct {
	msg    string
	global bool
}

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{msg: fmt.Sprintf(format, args...)} }

// run is hush with argv (argv[0] is the program), returning the exit status.
func run(ctx context.Context, argv []string, e *env) int {
	args := argv[1:]
	if len(args) > 0 && args[0] == pluginMetadataCmd {
		if err := writeMetadata(e.stdout); err != nil {
			return fail(e, err)
		}
		return exitOK
	}
	c := &cli{env: e, prog: "hush"}
	if e.getenv(pluginEnv) != "" {
		// Run by the docker CLI: argv is docker's global options as the
		// user gave them, then the plugin's name, then ours.
		c.prog = "docker hush"
		rest, err := c.g.parse(args)
		if err != nil {
			return fail(e, err)
		}
		if len(rest) == 0 || rest[0] != pluginName {
			return fail(e, usagef("run as a docker CLI plugin (%s is set) but the arguments do not name the plugin %q", pluginEnv, pluginName))
		}
		args = rest[1:]
		var stop func()
		ctx, stop = watchPluginSocket(ctx, e.getenv(pluginSocketEnv))
		defer stop()
	}
	rest, err := c.g.parse(args)
	if err != nil {
		return fail(e, err)
	}
	switch {
	case c.g.version:
		fmt.Fprintf(e.stdout, "hush version %s\n", version)
		return exitOK
	case c.g.help:
		rest = append([]string{"--help"}, rest...)
	}
	return fail(e, rootCommand().execute(ctx, c, nil, rest))
}

// fail prints err as one line and returns its exit status.
func fail(e *env, err error) int {
	if err == nil {
		return exitOK
	}
	var ue *usageError
	code := exitError
	if errors.As(err, &ue) {
		code = exitUsage
	}
	if errors.Is(err, errHelpShown) {
		return exitOK
	}
	fmt.Fprintf(e.stderr, "hush: %s\n", oneLine(err.Error()))
	return code
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
