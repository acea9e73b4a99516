package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"
)

// The wire contract of /hush/v1/{secrets,configs}/{id}/… (internal/api/
// rotation.go; a test keeps the field names equal).
type rotateRequest struct {
	Data []byte
}

type rollbackRequest struct {
	To int
}

type rotateResponse struct {
	DataVersion int
	Changed     bool
}

// holder is a task or, Kind "container", a standalone container.
type holder struct {
	Kind, ContainerName                  string
	Task, TaskName, Service, ContainerID string
	State, DesiredState                  string
	// DeliveryError and DeliveryAttempts: rotations keep failing to reach
	// this container.
	DeliveryError    string
	DeliveryAttempts int
}

type versionEntry struct {
	Version     int
	CreatedAt   time.Time
	Fingerprint string
	Current     bool
	Destroyed   bool
	HeldBy      []holder
}

type serviceRollout struct {
	ID, Name, UpdateState, UpdateMessage string
}

type versionsResponse struct {
	ID          string
	Name        string
	DataVersion int
	Versions    []versionEntry
	Services    []serviceRollout
}

// objectKind is what differs between `hush secret` and `hush config`.
type objectKind struct {
	noun, plural string
	max          int // exclusive bound of a value's size
}

func (k objectKind) path(name, rest string) string {
	return "/hush/v1/" + k.plural + "/" + url.PathEscape(name) + rest
}

func secretCommand() *command {
	return objectCommand(objectKind{noun: "secret", plural: "secrets", max: 500 * 1024})
}

func objectCommand(k objectKind) *command {
	return &command{
		name:    k.noun,
		summary: "Rotate, list, roll back and destroy versions of a " + k.noun,
		help: fmt.Sprintf(`
Versions of a %[1]s: every rotation stores a new version, sealed under its
own data key; services using the %[1]s are rolled onto it (service label
io.hush.rotate). The last 10 versions are kept (label io.hush.versions.keep).`, k.noun),
		subs: []*command{rotateCommand(k), versionsCommand(k), rollbackCommand(k), destroyCommand(k)},
	}
}

// readValue reads the new value from a file or, for "-", standard input,
// bounded by the kind's size limit.
func readValue(c *cli, k objectKind, file string) ([]byte, error) {
	var r io.Reader
	if file == "-" {
		if c.env.stdin == nil {
			return nil, errors.New("no standard input to read the value from")
		}
		r = c.env.stdin
	} else {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, int64(k.max)))
	if err != nil {
		return nil, err
	}
	if len(b) == 0 || len(b) >= k.max {
		clear(b)
		return nil, usagef("%s data must be larger than 0 and less than %d bytes", k.noun, k.max)
	}
	return b, nil
}

func rotateCommand(k objectKind) *command {
	return &command{
		name:    "rotate",
		summary: "Store a new value of a " + k.noun + " as its next version",
		args:    "[--wait] NAME FILE|-",
		help: fmt.Sprintf(`
Store the contents of FILE (or standard input, for -) as the next version of
the %[1]s NAME, in one step: ID and name stay, and every service using it is
rolled onto the new version. An unchanged value makes no version. Returns
once the version is stored; with --wait, once every task and container holds it.`, k.noun),
		setup: func(fs *flag.FlagSet) runFunc {
			wait := fs.Bool("wait", false, "wait until every task and container using it holds the new version")
			return func(ctx context.Context, c *cli, args []string) error {
				if len(args) != 2 {
					return usagef("%s rotate takes NAME and FILE (or -), got %d arguments", k.noun, len(args))
				}
				data, err := readValue(c, k, args[1])
				if err != nil {
					return err
				}
				body, err := json.Marshal(rotateRequest{Data: data})
				clear(data)
				if err != nil {
					return err
				}
				defer clear(body)
				return rotateLike(ctx, c, k, args[0], "/rotate", body, *wait)
			}
		},
	}
}

func rotateLike(ctx context.Context, c *cli, k objectKind, name, rest string, body []byte, wait bool) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	var out rotateResponse
	if err := cl.call(ctx, http.MethodPost, k.path(name, rest), body, &out); err != nil {
		return err
	}
	if out.Changed {
		fmt.Fprintf(c.env.stdout, "%s %s: version %d is current\n", k.noun, name, out.DataVersion)
	} else {
		fmt.Fprintf(c.env.stdout, "%s %s: unchanged, version %d stays current\n", k.noun, name, out.DataVersion)
	}
	if !wait {
		return nil
	}
	return waitRollout(ctx, c, cl, k, name, out.DataVersion)
}

// waitRollout polls the versions until no live task holds an older
// version, every task meant to run on the new one runs, and no service
// using the object is still updating.
func waitRollout(ctx context.Context, c *cli, cl *client, k objectKind, name string, n int) error {
	for {
		var vr versionsResponse
		if err := cl.call(ctx, http.MethodGet, k.path(name, "/versions"), nil, &vr); err != nil {
			return err
		}
		if vr.DataVersion != n {
			return fmt.Errorf("%s %s changed again while waiting: version %d is current now", k.noun, name, vr.DataVersion)
		}
		if rolledOut(&vr) {
			fmt.Fprintf(c.env.stdout, "rollout of version %d done\n", n)
			return nil
		}
		if err := stuck(&vr); err != nil {
			return fmt.Errorf("the rollout of version %d stopped: %w", n, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted while waiting for the rollout: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// stuckDeliveries is how many failed deliveries in a row to a container
// (hushd retries with a growing delay, about 35 s for three) make --wait
// give up on it.
const stuckDeliveries = 3

// stuck says why the rollout will not go on by itself: a service paused
// by a failure or rolled back (the tasks went back to older versions), or
// a container the rotation keeps failing to reach.
func stuck(vr *versionsResponse) error {
	for _, s := range vr.Services {
		switch s.UpdateState {
		case "paused", "rollback_paused":
		case "rollback_started", "rollback_completed":
			// Only a rollback of this rotation; one left by an earlier
			// `docker service rollback` is superseded by the rotation.
			if !strings.HasPrefix(s.UpdateMessage, "rotation rolled back") {
				continue
			}
		default:
			continue
		}
		return fmt.Errorf("service %s is %s (see docker service inspect %s)", s.Name, s.UpdateState, s.Name)
	}
	for _, v := range vr.Versions {
		for _, h := range v.HeldBy {
			if !v.Current && h.Kind == "container" && h.DeliveryAttempts >= stuckDeliveries {
				return fmt.Errorf("container %s still holds version %d: %d deliveries failed, the last with: %s (hushd keeps retrying)", h.ContainerName, v.Version, h.DeliveryAttempts, h.DeliveryError)
			}
		}
	}
	return nil
}

func rolledOut(vr *versionsResponse) bool {
	for _, s := range vr.Services {
		if s.UpdateState == "updating" || s.UpdateState == "rollback_started" {
			return false
		}
	}
	for _, v := range vr.Versions {
		for _, h := range v.HeldBy {
			if !v.Current {
				return false
			}
			if h.DesiredState == "running" && h.State != "running" {
				return false
			}
		}
	}
	return true
}

func rollbackCommand(k objectKind) *command {
	return &command{
		name:    "rollback",
		summary: "Make an earlier value of a " + k.noun + " current again",
		args:    "[--to N] [--wait] NAME",
		help: `
Make the value of version N (default: the version before the current one)
current again, as a new version, and roll it out as a rotation is. This is
not 'docker service rollback', which returns a service to its previous spec.`,
		setup: func(fs *flag.FlagSet) runFunc {
			to := fs.Int("to", 0, "the version whose value becomes current (default: the previous one)")
			wait := fs.Bool("wait", false, "wait until every task and container holds the new version")
			return func(ctx context.Context, c *cli, args []string) error {
				if len(args) != 1 {
					return usagef("%s rollback takes NAME, got %d arguments", k.noun, len(args))
				}
				if *to < 0 {
					return usagef("--to must be a version number, not %d", *to)
				}
				body, err := json.Marshal(rollbackRequest{To: *to})
				if err != nil {
					return err
				}
				return rotateLike(ctx, c, k, args[0], "/rollback", body, *wait)
			}
		},
	}
}

func destroyCommand(k objectKind) *command {
	return &command{
		name:    "destroy",
		summary: "Erase a version of a " + k.noun + " for good",
		args:    "--version N NAME",
		help: fmt.Sprintf(`
Erase version N of the %[1]s NAME: its sealed value and data key leave the
store, so it can never be opened again. The current version and versions a
running task holds are refused.`, k.noun),
		setup: func(fs *flag.FlagSet) runFunc {
			n := fs.Int("version", 0, "the version to erase (required)")
			return func(ctx context.Context, c *cli, args []string) error {
				if len(args) != 1 {
					return usagef("%s destroy takes NAME, got %d arguments", k.noun, len(args))
				}
				if *n < 1 {
					return usagef("--version N is required: the version to erase")
				}
				cl, err := c.client()
				if err != nil {
					return err
				}
				resp, err := cl.do(ctx, http.MethodDelete, k.path(args[0], "/versions/"+strconv.Itoa(*n)), nil)
				if err != nil {
					return err
				}
				resp.Body.Close()
				fmt.Fprintf(c.env.stdout, "%s %s: version %d destroyed\n", k.noun, args[0], *n)
				return nil
			}
		},
	}
}

// versionRow is what --format templates see, one per version.
type versionRow struct {
	Version     string
	Created     string
	Fingerprint string
	HeldBy      string
	Current     bool
	Destroyed   bool
	Holders     []holder
}

// versionHeader names the columns for "table" formats, as the docker CLI
// does: a template run on it prints the header.
var versionHeader = versionRow{Version: "VERSION", Created: "CREATED", Fingerprint: "FINGERPRINT", HeldBy: "HELD BY"}

const defaultVersionsFormat = "table {{.Version}}\t{{.Created}}\t{{.Fingerprint}}\t{{.HeldBy}}"

func versionsCommand(k objectKind) *command {
	return &command{
		name:    "versions",
		summary: "List the versions of a " + k.noun + " and the tasks and containers holding each",
		args:    "[--format FORMAT] NAME",
		help: fmt.Sprintf(`
List the versions of the %[1]s NAME, oldest first: when each was made, its
fingerprint (an HMAC of the value under a key of hushd's own, so equal
values show equal fingerprints and nothing about the value leaks), and the
tasks (with their containers) and the standalone containers ('docker run'
and compose with io.hush.* labels, shown as "container NAME (ID)") that hold
it. The current version is marked *.

--format takes a Go template as the docker CLI's does: "table TEMPLATE"
prints a header, "json" one JSON object a line. Fields: .Version .Created
.Fingerprint .HeldBy .Current .Destroyed .Holders.`, k.noun),
		setup: func(fs *flag.FlagSet) runFunc {
			format := fs.String("format", "", "format the output with a Go template (or table TEMPLATE, or json)")
			return func(ctx context.Context, c *cli, args []string) error {
				if len(args) != 1 {
					return usagef("%s versions takes NAME, got %d arguments", k.noun, len(args))
				}
				cl, err := c.client()
				if err != nil {
					return err
				}
				var vr versionsResponse
				if err := cl.call(ctx, http.MethodGet, k.path(args[0], "/versions"), nil, &vr); err != nil {
					return err
				}
				return printVersions(c.env.stdout, *format, &vr)
			}
		},
	}
}

func rowOf(v *versionEntry) versionRow {
	r := versionRow{Version: strconv.Itoa(v.Version), Created: v.CreatedAt.Local().Format(time.RFC3339), Fingerprint: v.Fingerprint, Current: v.Current, Destroyed: v.Destroyed, Holders: v.HeldBy}
	if v.Current {
		r.Version += " *"
	}
	if v.Destroyed {
		r.Fingerprint = "(destroyed)"
	}
	names := make([]string, 0, len(v.HeldBy))
	for _, h := range v.HeldBy {
		n := h.TaskName
		if n == "" {
			n = h.Task
		}
		if h.Kind == "container" {
			n = "container " + h.ContainerName
		}
		if h.ContainerID != "" {
			n += " (" + h.ContainerID[:min(12, len(h.ContainerID))] + ")"
		}
		names = append(names, n)
	}
	r.HeldBy = strings.Join(names, ", ")
	if r.HeldBy == "" {
		r.HeldBy = "-"
	}
	return r
}

func printVersions(w io.Writer, format string, vr *versionsResponse) error {
	if format == "" {
		format = defaultVersionsFormat
	}
	if format == "json" {
		enc := json.NewEncoder(w)
		for i := range vr.Versions {
			if err := enc.Encode(rowOf(&vr.Versions[i])); err != nil {
				return err
			}
		}
		return nil
	}
	table := false
	if rest, ok := strings.CutPrefix(format, "table"); ok && (rest == "" || rest[0] == ' ') {
		table, format = true, strings.TrimPrefix(rest, " ")
		if format == "" {
			format = strings.TrimPrefix(defaultVersionsFormat, "table ")
		}
	}
	tmpl, err := template.New("versions").Parse(format + "\n")
	if err != nil {
		return usagef("invalid --format template: %v", err)
	}
	out := w
	var tw *tabwriter.Writer
	if table {
		tw = tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
		out = tw
		if err := tmpl.Execute(out, versionHeader); err != nil {
			return usagef("invalid --format template: %v", err)
		}
	}
	for i := range vr.Versions {
		if err := tmpl.Execute(out, rowOf(&vr.Versions[i])); err != nil {
			return fmt.Errorf("--format: %w", err)
		}
	}
	if tw != nil {
		return tw.Flush()
	}
	return nil
}
