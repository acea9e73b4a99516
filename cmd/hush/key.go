package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
)

// The wire contracts of POST /hush/v1/key/rotate and GET /hush/v1/key.
const (
	keyRotatePath = "/hush/v1/key/rotate"
	keyShowPath   = "/hush/v1/key"
)

type keyShowResponse struct {
	KeyID    string
	Autolock bool
}

type keyRotateResponse struct {
	KeyID     string
	Rewrapped int
}

func keyCommand() *command {
	return &command{
		name:    "key",
		summary: "Manage the cluster's master key",
		help: `
Manage the master key: the key that wraps every data key of the store.`,
		subs: []*command{keyShowCommand(), keyRotateCommand()},
	}
}

func keyRotateCommand() *command {
	return &command{
		name:    "rotate",
		summary: "Rotate the master key: a new key, every data key re-wrapped",
		args:    "[--quiet]",
		help: `
Rotate the master key, online: hushd makes a new master key, re-wraps every
data key under it and destroys the old key file; the API keeps serving
meanwhile, and an interrupted rotation resumes when hushd starts. Under
autolock the new key is kept locked under the current unlock key.

Backups taken before the rotation still hold the old master key and open
with their own key file: they restore the store as it was then.`,
		short: map[string]string{"quiet": "q"},
		setup: func(fs *flag.FlagSet) runFunc {
			var quiet bool
			fs.BoolVar(&quiet, "quiet", false, "print only the new key's ID")
			fs.BoolVar(&quiet, "q", false, "print only the new key's ID")
			return func(ctx context.Context, c *cli, args []string) error {
				if len(args) != 0 {
					return usagef("key rotate takes no arguments, got %q", args[0])
				}
				cl, err := c.client()
				if err != nil {
					return err
				}
				var out keyRotateResponse
				if err := cl.call(ctx, http.MethodPost, keyRotatePath, nil, &out); err != nil {
					return err
				}
				if out.KeyID == "" {
					return fmt.Errorf("POST %s: hushd's answer has no KeyID", keyRotatePath)
				}
				if quiet {
					fmt.Fprintln(c.env.stdout, out.KeyID)
					return nil
				}
				fmt.Fprintf(c.env.stdout, "Master key rotated: the new key is %s; %d data keys re-wrapped under it.\n", out.KeyID, out.Rewrapped)
				return nil
			}
		},
	}
}

func keyShowCommand() *command {
	return &command{
		name:    "show",
		summary: "Show the current master key's ID and whether autolock wraps it",
		args:    "[--quiet]",
		help: `
Show which master key wraps the store's data keys now (its ID, never the key)
and whether autolock keeps it wrapped by the unlock key.`,
		short: map[string]string{"quiet": "q"},
		setup: func(fs *flag.FlagSet) runFunc {
			var quiet bool
			fs.BoolVar(&quiet, "quiet", false, "print only the key's ID")
			fs.BoolVar(&quiet, "q", false, "print only the key's ID")
			return func(ctx context.Context, c *cli, args []string) error {
				if len(args) != 0 {
					return usagef("key show takes no arguments, got %q", args[0])
				}
				cl, err := c.client()
				if err != nil {
					return err
				}
				var out keyShowResponse
				if err := cl.call(ctx, http.MethodGet, keyShowPath, nil, &out); err != nil {
					return err
				}
				if out.KeyID == "" {
					return fmt.Errorf("GET %s: hushd's answer has no KeyID", keyShowPath)
				}
				if quiet {
					fmt.Fprintln(c.env.stdout, out.KeyID)
					return nil
				}
				fmt.Fprintf(c.env.stdout, "Master key %s (autolock %s)\n", out.KeyID, map[bool]string{true: "on", false: "off"}[out.Autolock])
				return nil
			}
		},
	}
}
