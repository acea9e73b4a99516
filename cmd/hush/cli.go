package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// cli is what every command gets: the process environment, the global
// options, and a way to reach hushd.
type cli struct {
	env  *env
	prog string // "hush", or "docker hush" as a plugin
	g    globals
}

// client resolves hushd's address from the global options and the
// environment, as the docker CLI would.
func (c *cli) client() (*client, error) {
	ep, err := resolveHost(c.g, c.env)
	if err != nil {
		return nil, err
	}
	var debug io.Writer
	if c.g.debug {
		debug = c.env.stderr
	}
	return newClient(ep, debug), nil
}

type runFunc func(ctx context.Context, c *cli, args []string) error

// command is one command or group. Adding a command is adding a file with
// its constructor and listing it in its group's subs.
type command struct {
	name    string
	summary string // one line, for the group's list
	args    string // what follows the command in its usage line
	help    string // the long description
	// setup defines the command's flags on fs and returns the code to run
	// with the positional arguments. Nil for groups.
	setup func(fs *flag.FlagSet) runFunc
	// short maps a flag to its one-letter alias (both are defined in
	// setup; help shows them together).
	short map[string]string
	subs  []*command
}

// errHelpShown ends a run that printed help on request (exit status 0).
var errHelpShown = errors.New("help shown")

func (cmd *command) sub(name string) *command {
	for _, s := range cmd.subs {
		if s.name == name {
			return s
		}
	}
	return nil
}

// execute runs cmd with args; path is the chain of command names above it.
func (cmd *command) execute(ctx context.Context, c *cli, path []string, args []string) error {
	if cmd.setup == nil {
		return cmd.executeGroup(ctx, c, path, args)
	}
	fs := flag.NewFlagSet(strings.Join(append(path, cmd.name), " "), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	runner := cmd.setup(fs)
	var pos []string
	// Options may come before, between or after the arguments, as in the
	// docker CLI; "--" ends them.
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			cmd.printHelp(c, path, fs, c.env.stdout)
			return errHelpShown
		}
		if err != nil {
			return usagef("%s (see '%s --help')", err, cmd.fullName(c, path))
		}
		consumed := len(args) - fs.NArg()
		rest := fs.Args()
		if consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
	if err := runner(ctx, c, pos); err != nil {
		var ue *usageError
		if errors.As(err, &ue) && !ue.global {
			return usagef("%s (see '%s --help')", ue.msg, cmd.fullName(c, path))
		}
		return err
	}
	return nil
}

func (cmd *command) executeGroup(ctx context.Context, c *cli, path []string, args []string) error {
	if len(args) == 0 {
		return usagef("%s needs a command (see '%s --help')", cmd.fullName(c, path), cmd.fullName(c, path))
	}
	switch a := args[0]; {
	case a == "-h" || a == "--help":
		cmd.printHelp(c, path, nil, c.env.stdout)
		return errHelpShown
	case a == "help" && len(path) == 0:
		// hush help [COMMAND...] is COMMAND... --help.
		return cmd.execute(ctx, c, path, append(args[1:], "--help"))
	case strings.HasPrefix(a, "-"):
		return usagef("unknown flag %s for %s (global options go before the command; see '%s --help')", a, cmd.fullName(c, path), cmd.fullName(c, path))
	}
	s := cmd.sub(args[0])
	if s == nil {
		return usagef("unknown command %q for %s (see '%s --help')", args[0], cmd.fullName(c, path), cmd.fullName(c, path))
	}
	return s.execute(ctx, c, append(path, cmd.name), args[1:])
}

func (cmd *command) fullName(c *cli, path []string) string {
	parts := []string{c.prog}
	if len(path) > 0 {
		parts = append(parts, path[1:]...)
		parts = append(parts, cmd.name)
	}
	return strings.Join(parts, " ")
}

// printHelp writes the complete help of cmd: usage, description, commands
// or options, and where the global options are described.
func (cmd *command) printHelp(c *cli, path []string, fs *flag.FlagSet, w io.Writer) {
	name := cmd.fullName(c, path)
	switch {
	case len(path) == 0:
		fmt.Fprintf(w, "Usage:  %s [OPTIONS] COMMAND\n", c.prog)
	case cmd.setup == nil:
		fmt.Fprintf(w, "Usage:  %s COMMAND\n", name)
	default:
		fmt.Fprintf(w, "Usage:  %s %s\n", name, cmd.args)
	}
	fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.help))
	if len(cmd.subs) > 0 {
		fmt.Fprintf(w, "\nCommands:\n")
		for _, s := range cmd.subs {
			fmt.Fprintf(w, "  %-10s %s\n", s.name, s.summary)
		}
		if len(path) == 0 {
			fmt.Fprintf(w, "  %-10s %s\n", "help", "Show the help of a command")
		}
	}
	if len(path) == 0 {
		fmt.Fprintf(w, "\nGlobal Options:\n")
		for _, f := range globalFlags {
			flagLine(w, f.short, f.long, f.value, f.usage)
		}
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(rootNotes))
		fmt.Fprintf(w, "\nRun '%s COMMAND --help' for more information on a command.\n", c.prog)
		return
	}
	if fs != nil {
		fmt.Fprintf(w, "\nOptions:\n")
		aliases := map[string]bool{}
		for _, s := range cmd.short {
			aliases[s] = true
		}
		fs.VisitAll(func(f *flag.Flag) {
			if aliases[f.Name] {
				return
			}
			var short byte
			if s := cmd.short[f.Name]; s != "" {
				short = s[0]
			}
			kind, usage := flag.UnquoteUsage(f)
			if f.DefValue != "" && f.DefValue != "false" {
				usage += fmt.Sprintf(" (default %q)", f.DefValue)
			}
			flagLine(w, short, f.Name, kind, usage)
		})
		flagLine(w, 'h', "help", "", "Print usage")
	} else {
		fmt.Fprintf(w, "\nRun '%s COMMAND --help' for more information on a command.\n", name)
	}
	fmt.Fprintf(w, "\nGlobal options (-H, --context, ...) go before the command: see '%s --help'.\n", c.prog)
}

func flagLine(w io.Writer, short byte, long, value, usage string) {
	s := "    "
	if short != 0 {
		s = fmt.Sprintf("-%c, ", short)
	}
	s += "--" + long
	if value != "" {
		s += " " + value
	}
	fmt.Fprintf(w, "  %-26s %s\n", s, usage)
}

const rootNotes = `
Finding hushd (as the docker CLI finds its daemon):
  1. --context NAME, or --host (-H); giving both is an error
  2. DOCKER_HOST
  3. DOCKER_CONTEXT, then the current context of the docker config
     ("docker context use"; $DOCKER_CONFIG or ~/.docker, or --config)
  4. hushd's default socket: /run/hush/hushd.sock as root,
     ~/.local/share/hush/hushd.sock otherwise
  The context "default" means DOCKER_HOST, else hushd's default socket. Only
  unix:// hosts are accepted: hushd serves no TCP socket.

As a docker CLI plugin: install this binary as docker-hush in
~/.docker/cli-plugins/ (or /usr/local/lib/docker/cli-plugins/), then run
"docker hush COMMAND"; docker's global options (docker -H ... hush ...)
are honoured the same way.

Exit status:
  0  success
  1  hushd refused the request, or the operation failed
  2  the command line is wrong (unknown command or option, missing or
     extra argument, an option value hush refuses)`

func rootCommand() *command {
	return &command{
		name: "hush",
		help: `hush is the command-line client of hushd, the secrets manager that serves
Docker Swarm's API: it runs what the docker CLI has no command for.`,
		subs: []*command{backupCommand(), keyCommand()},
	}
}
