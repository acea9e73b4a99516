package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
)

// The docker CLI plugin protocol (docker/cli's cli-plugins): the CLI finds
// docker-<name> in its cli-plugins directories, asks it for its metadata
// with the docker-cli-plugin-metadata argument, and runs it as
// "docker-<name> [docker's global options] <name> [args]" with
// DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND set. It also passes the address of
// a socket in DOCKER_CLI_PLUGIN_SOCKET and closes its end when the user
// interrupts it, so the plugin can stop cleanly.
const (
	pluginMetadataCmd = "docker-cli-plugin-metadata"
	pluginName        = "hush"
	pluginEnv         = "DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND"
	pluginSocketEnv   = "DOCKER_CLI_PLUGIN_SOCKET"
)

type pluginMetadata struct {
	SchemaVersion    string
	Vendor           string
	Version          string
	ShortDescription string
}

func writeMetadata(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(pluginMetadata{
		SchemaVersion:    "0.1.0",
		Vendor:           "hush",
		Version:          version,
		ShortDescription: "Manage hushd: encrypted backups and master keys",
	})
}

// watchPluginSocket connects to the docker CLI's socket and cancels the
// returned context when the CLI closes it. Without a socket (an older CLI,
// or not run as a plugin) ctx is returned as it is.
func watchPluginSocket(ctx context.Context, addr string) (context.Context, func()) {
	if addr == "" {
		return ctx, func() {}
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		var b [1]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				if errors.Is(err, io.EOF) {
					cancel()
				}
				return
			}
		}
	}()
	return ctx, func() {
		cancel()
		conn.Close()
	}
}
