package main

import (
	"strconv"
	"strings"
)

// globals are the options before the command. They are the docker CLI's
// global options (a plugin is handed them as the user typed them), each
// honoured or refused by name.
type globals struct {
	host, context, config string
	hostSet, contextSet   bool
	configSet             bool
	debug                 bool
	logLevel              string
	version, help         bool
}

type globalFlag struct {
	long  string
	short byte // 0: none
	value string
	usage string
	set   func(g *globals, v string) error
}

func refuseTLS(name string) func(*globals, string) error {
	return func(*globals, string) error {
		return usagef("--%s is not supported: hushd serves its API on a unix socket only, without TLS", name)
	}
}

var globalFlags = []globalFlag{
	{long: "context", short: 'c', value: "string", usage: `Name of the docker context to use (overrides DOCKER_HOST and "docker context use")`,
		set: func(g *globals, v string) error { g.context, g.contextSet = v, true; return nil }},
	{long: "config", value: "string", usage: `Location of the docker client config files (default "~/.docker")`,
		set: func(g *globals, v string) error { g.config, g.configSet = v, true; return nil }},
	{long: "debug", short: 'D', usage: "Print each request to hushd on stderr",
		set: func(g *globals, v string) error { g.debug = true; return nil }},
	{long: "host", short: 'H', value: "string", usage: "hushd's socket to connect to: unix:///path/to/hushd.sock",
		set: func(g *globals, v string) error {
			if g.hostSet && v != g.host {
				return usagef("specify only one -H")
			}
			g.host, g.hostSet = v, true
			return nil
		}},
	{long: "log-level", short: 'l', value: "string", usage: `Set the logging level ("debug"|"info"|"warn"|"error"|"fatal"); debug is --debug, the others print errors only (default "info")`,
		set: func(g *globals, v string) error {
			switch v {
			case "debug":
				g.debug = true
			case "info", "warn", "error", "fatal":
			default:
				return usagef("invalid --log-level %q: want debug, info, warn, error or fatal", v)
			}
			g.logLevel = v
			return nil
		}},
	{long: "tls", usage: "Refused: hushd has no TLS", set: refuseTLS("tls")},
	{long: "tlscacert", value: "string", usage: "Refused: hushd has no TLS", set: refuseTLS("tlscacert")},
	{long: "tlscert", value: "string", usage: "Refused: hushd has no TLS", set: refuseTLS("tlscert")},
	{long: "tlskey", value: "string", usage: "Refused: hushd has no TLS", set: refuseTLS("tlskey")},
	{long: "tlsverify", usage: "Refused: hushd has no TLS", set: refuseTLS("tlsverify")},
	{long: "version", short: 'v', usage: "Print version information and quit",
		set: func(g *globals, v string) error { g.version = true; return nil }},
	{long: "help", short: 'h', usage: "Print usage",
		set: func(g *globals, v string) error { g.help = true; return nil }},
}

func lookupLong(name string) *globalFlag {
	for i := range globalFlags {
		if globalFlags[i].long == name {
			return &globalFlags[i]
		}
	}
	return nil
}

func lookupShort(c byte) *globalFlag {
	for i := range globalFlags {
		if globalFlags[i].short == c {
			return &globalFlags[i]
		}
	}
	return nil
}

// parse consumes global options from the front of args, in the forms the
// docker CLI accepts (--host v, --host=v, -H v, -H=v, -Hv, -Dl debug), and
// returns what follows them.
func (g *globals) parse(args []string) ([]string, error) {
	for len(args) > 0 {
		a := args[0]
		if a == "--" {
			return args[1:], nil
		}
		if len(a) < 2 || a[0] != '-' {
			return args, nil
		}
		args = args[1:]
		if strings.HasPrefix(a, "--") {
			name, val, hasVal := strings.Cut(a[2:], "=")
			f := lookupLong(name)
			if f == nil {
				return nil, usagef("unknown flag: --%s", name)
			}
			if f.value == "" {
				if hasVal {
					if b, err := strconv.ParseBool(val); err != nil {
						return nil, usagef("invalid value %q for --%s", val, name)
					} else if !b {
						continue
					}
				}
				if err := f.set(g, "true"); err != nil {
					return nil, err
				}
				continue
			}
			if !hasVal {
				if len(args) == 0 {
					return nil, usagef("flag needs an argument: --%s", name)
				}
				val, args = args[0], args[1:]
			}
			if err := f.set(g, val); err != nil {
				return nil, err
			}
			continue
		}
		s := a[1:]
		for i := 0; i < len(s); i++ {
			f := lookupShort(s[i])
			if f == nil {
				return nil, usagef("unknown shorthand flag: %q in %s", s[i], a)
			}
			if f.value == "" {
				if err := f.set(g, "true"); err != nil {
					return nil, err
				}
				continue
			}
			val := strings.TrimPrefix(s[i+1:], "=")
			if i+1 == len(s) {
				if len(args) == 0 {
					return nil, usagef("flag needs an argument: -%c", s[i])
				}
				val, args = args[0], args[1:]
			}
			if err := f.set(g, val); err != nil {
				return nil, err
			}
			break
		}
	}
	return args, nil
}
