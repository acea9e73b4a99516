package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// A runbook step is one docker CLI invocation. Arguments may contain:
//
//	{run}         the per-run suffix (normalised to <RUN>)
//	{id:KEY}      the full ID of the secret created by the step with create=KEY
//	{idupper:KEY} that ID in upper case
//	{prefix:KEY}  a 12-character prefix of that ID
//	{file:NAME}   the path of a file written from runbookFiles[NAME]
//	{name64}      a valid name of exactly 64 characters (containing {run})
type runbookStep struct {
	name  string // golden file: testdata/swarm/runbook_<name>.golden
	args  []string
	stdin string // "" = empty stdin
	// stdinDesc replaces the stdin contents in the golden header (large data).
	stdinDesc string
	// create records the ID printed by a successful `secret create` under this key.
	create string
	// list: the output lists secrets; on the shared Swarm only the lines of
	// this run are kept (plus the table header).
	list bool
	// sortLabels sorts the comma-separated labels after the first space of
	// each line ({{.Labels}} ranges over a Go map: random order).
	sortLabels bool
}

func name64(suffix string) string {
	// "max_" + x... + "_" + suffix == 64 characters
	return "max_" + strings.Repeat("x", 64-len("max_")-1-len(suffix)) + "_" + suffix
}

var runbookFiles = map[string]string{
	"cert":  "-----BEGIN CERTIFICATE-----\nMIIBaTCCARCgAwIBAgIUJM6+H7tQ+saTnmEhexBgGb7Rqf0w\n-----END CERTIFICATE-----\n",
	"empty": "",
	"big2m": strings.Repeat("a", 2<<20),
}

func runbookSteps() []runbookStep {
	big := strings.Repeat("s", 511999)
	tooBig := strings.Repeat("s", 512000)
	steps := []runbookStep{
		// ---- create ----
		{name: "create_stdin", args: []string{"secret", "create", "db_password_{run}", "-"}, stdin: "mysecretpassword", create: "db"},
		{name: "create_file", args: []string{"secret", "create", "tls_cert_{run}", "{file:cert}"}, create: "cert"},
		{name: "create_labels", args: []string{"secret", "create", "--label", "env=prod", "--label", "team=core", "api_key_{run}", "-"}, stdin: "k3y-123", create: "api"},
		{name: "create_label_novalue", args: []string{"secret", "create", "--label", "flag", "--label", "env=dev", "api_flag_{run}", "-"}, stdin: "on", create: "flag"},
		{name: "create_name64", args: []string{"secret", "create", "{name64}", "-"}, stdin: "sixty-four", create: "n64"},
		{name: "create_size_511999", args: []string{"secret", "create", "big_{run}", "-"}, stdin: big, stdinDesc: "(511999 bytes)", create: "big"},
		{name: "create_size_512000", args: []string{"secret", "create", "toobig_{run}", "-"}, stdin: tooBig, stdinDesc: "(512000 bytes)", create: "toobig"},
		// The CLI sends at most 1000 KiB of data (a 1365371-byte body), so it
		// never reaches hushd's 2 MiB body cap: same text as Swarm expected.
		{name: "create_size_2MiB_file", args: []string{"secret", "create", "huge_{run}", "{file:big2m}"}, create: "huge"},
		{name: "create_empty_stdin", args: []string{"secret", "create", "empty_{run}", "-"}, stdinDesc: "/dev/null", create: "empty"},
		{name: "create_empty_file", args: []string{"secret", "create", "emptyf_{run}", "{file:empty}"}, create: "emptyf"},
		{name: "create_duplicate", args: []string{"secret", "create", "db_password_{run}", "-"}, stdin: "other", create: "dup"},
		{name: "create_duplicate_case", args: []string{"secret", "create", "DB_PASSWORD_{run}", "-"}, stdin: "other", create: "dupcase"},
	}
	invalid := []struct{ name, secret string }{
		{"dash_start", "-bad"},
		{"dash_end", "bad-"},
		{"dot_end", "bad."},
		{"underscore_start", "_bad"},
		{"space", "a b"},
		{"slash", "a/b"},
		{"too_long_65", strings.Repeat("a", 65)},
		{"non_ascii", "é"},
	}
	for _, c := range invalid {
		steps = append(steps, runbookStep{
			name:   "create_invalid_" + c.name,
			args:   []string{"secret", "create", "--", c.secret, "-"},
			stdin:  "x",
			create: "invalid_" + c.name,
		})
	}
	steps = append(steps, []runbookStep{
		// ---- ls ----
		{name: "ls_table", args: []string{"secret", "ls"}, list: true},
		{name: "ls_quiet", args: []string{"secret", "ls", "-q"}, list: true},
		{name: "ls_filter_name", args: []string{"secret", "ls", "--filter", "name=db_password_{run}"}, list: true},
		{name: "ls_filter_name_prefix", args: []string{"secret", "ls", "--filter", "name=api_"}, list: true},
		{name: "ls_filter_name_case", args: []string{"secret", "ls", "--filter", "name=DB_PASSWORD_{run}"}, list: true},
		{name: "ls_filter_label_key", args: []string{"secret", "ls", "--filter", "label=env"}, list: true},
		{name: "ls_filter_label_kv", args: []string{"secret", "ls", "--filter", "label=env=prod"}, list: true},
		{name: "ls_filter_label_novalue", args: []string{"secret", "ls", "--filter", "label=flag"}, list: true},
		{name: "ls_filter_label_key_case", args: []string{"secret", "ls", "--filter", "label=ENV"}, list: true},
		{name: "ls_filter_label_value_case", args: []string{"secret", "ls", "--filter", "label=env=PROD"}, list: true},
		{name: "ls_filter_label_nomatch", args: []string{"secret", "ls", "--filter", "label=env=nope"}, list: true},
		{name: "ls_filter_two_labels", args: []string{"secret", "ls", "--filter", "label=env", "--filter", "label=team"}, list: true},
		{name: "ls_filter_id", args: []string{"secret", "ls", "--filter", "id={prefix:db}"}, list: true},
		{name: "ls_filter_id_upper", args: []string{"secret", "ls", "--filter", "id={idupper:db}"}, list: true},
		{name: "ls_filter_id_quiet", args: []string{"secret", "ls", "-q", "--filter", "id={prefix:api}"}, list: true},
		{name: "ls_format_labels", args: []string{"secret", "ls", "--format", "{{.Name}} {{.Labels}}"}, list: true, sortLabels: true},
		{name: "ls_filter_unknown", args: []string{"secret", "ls", "--filter", "bogus=1"}, list: true},
		// ---- inspect ----
		{name: "inspect_name", args: []string{"secret", "inspect", "db_password_{run}"}},
		{name: "inspect_labels", args: []string{"secret", "inspect", "api_key_{run}"}},
		{name: "inspect_label_novalue", args: []string{"secret", "inspect", "api_flag_{run}"}},
		{name: "inspect_pretty", args: []string{"secret", "inspect", "--pretty", "db_password_{run}"}},
		{name: "inspect_pretty_labels", args: []string{"secret", "inspect", "--pretty", "api_key_{run}"}},
		{name: "inspect_format", args: []string{"secret", "inspect", "--format", "{{.Spec.Name}}", "db_password_{run}"}},
		{name: "inspect_format_labels", args: []string{"secret", "inspect", "--format", "{{.Spec.Name}} {{.Spec.Labels}}", "api_key_{run}", "api_flag_{run}"}},
		{name: "inspect_full_id", args: []string{"secret", "inspect", "{id:db}"}},
		{name: "inspect_id_prefix", args: []string{"secret", "inspect", "{prefix:db}"}},
		// Names are case-insensitive in Swarm; IDs are not.
		{name: "inspect_id_upper", args: []string{"secret", "inspect", "{idupper:db}"}},
		{name: "inspect_name_case", args: []string{"secret", "inspect", "--format", "{{.Spec.Name}}", "DB_PASSWORD_{run}"}},
		{name: "inspect_several", args: []string{"secret", "inspect", "--format", "{{.Spec.Name}}", "db_password_{run}", "{id:cert}", "{name64}", "big_{run}"}},
		{name: "inspect_several_one_missing", args: []string{"secret", "inspect", "db_password_{run}", "nosuch_{run}", "tls_cert_{run}"}},
		{name: "inspect_missing", args: []string{"secret", "inspect", "nosuch_{run}"}},
		// ---- rm ----
		{name: "rm_one", args: []string{"secret", "rm", "tls_cert_{run}"}},
		{name: "rm_several", args: []string{"secret", "rm", "api_key_{run}", "api_flag_{run}"}},
		{name: "rm_by_id", args: []string{"secret", "rm", "{id:db}"}},
		{name: "create_for_rm_case", args: []string{"secret", "create", "case_rm_{run}", "-"}, stdin: "c", create: "caserm"},
		{name: "rm_name_case", args: []string{"secret", "rm", "CASE_RM_{run}"}},
		{name: "rm_missing", args: []string{"secret", "rm", "nosuch_{run}"}},
		{name: "rm_partial", args: []string{"secret", "rm", "{name64}", "nosuch_{run}", "big_{run}"}},
		{name: "inspect_after_rm", args: []string{"secret", "inspect", "db_password_{run}"}},
		{name: "ls_final", args: []string{"secret", "ls"}, list: true},
	}...)
	return steps
}

// runbookRun is the state of one runbook run against one daemon.
type runbookRun struct {
	t      *testing.T
	cli    *dockerCLI
	shared bool // the daemon is shared with others (live Swarm): scope list outputs
	suffix string
	dir    string
	ids    map[string]string
	n      *normaliser
	// created: every ID a create step returned (for cleanup on Swarm).
	created []string
}

func newRunbookRun(t *testing.T, cli *dockerCLI, shared bool) *runbookRun {
	r := &runbookRun{t: t, cli: cli, shared: shared, suffix: runSuffix(t), dir: t.TempDir(), ids: map[string]string{}}
	r.n = &normaliser{suffix: r.suffix, literals: map[string]string{}}
	for name, content := range runbookFiles {
		p := filepath.Join(r.dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		r.n.literals[p] = "<FILE:" + name + ">"
	}
	return r
}

var rePlaceholder = regexp.MustCompile(`\{(run|name64|id:[a-z0-9_]+|idupper:[a-z0-9_]+|prefix:[a-z0-9_]+|file:[a-z0-9_]+)\}`)

func (r *runbookRun) expand(arg string) string {
	return rePlaceholder.ReplaceAllStringFunc(arg, func(m string) string {
		key := m[1 : len(m)-1]
		switch {
		case key == "run":
			return r.suffix
		case key == "name64":
			return name64(r.suffix)
		case strings.HasPrefix(key, "id:"):
			id, ok := r.ids[key[3:]]
			if !ok {
				r.t.Fatalf("runbook: no ID recorded for %q (its create step failed?)", key[3:])
			}
			return id
		case strings.HasPrefix(key, "idupper:"):
			id, ok := r.ids[key[8:]]
			if !ok {
				r.t.Fatalf("runbook: no ID recorded for %q (its create step failed?)", key[8:])
			}
			return strings.ToUpper(id)
		case strings.HasPrefix(key, "prefix:"):
			id, ok := r.ids[key[7:]]
			if !ok || len(id) < 12 {
				r.t.Fatalf("runbook: no ID recorded for %q (its create step failed?)", key[7:])
			}
			r.n.prefixes = append(r.n.prefixes, id[:12])
			return id[:12]
		case strings.HasPrefix(key, "file:"):
			return filepath.Join(r.dir, key[5:])
		}
		return m
	})
}

func shellQuote(s string) string {
	if s != "" && regexp.MustCompile(`^[A-Za-z0-9_./:=<>{}-]+$`).MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// runStep runs one step and returns its normalised transcript.
func (r *runbookRun) runStep(s runbookStep) string {
	r.t.Helper()
	args := make([]string, len(s.args))
	for i, a := range s.args {
		args[i] = r.expand(a)
	}
	stdout, stderr, code := r.cli.DockerStdin(s.stdin, args...)
	if s.create != "" && code == 0 {
		id := strings.TrimSpace(stdout)
		r.ids[s.create] = id
		r.created = append(r.created, id)
		r.n.addID(id)
	}
	if r.shared && s.list {
		stdout = r.scope(stdout)
	}
	if s.sortLabels {
		stdout = sortLabelLists(stdout)
	}

	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	var hdr strings.Builder
	switch {
	case s.stdinDesc != "":
		fmt.Fprintf(&hdr, "$ docker %s < %s\n", strings.Join(quoted, " "), s.stdinDesc)
	case s.stdin != "":
		fmt.Fprintf(&hdr, "$ printf %s | docker %s\n", shellQuote(s.stdin), strings.Join(quoted, " "))
	default:
		fmt.Fprintf(&hdr, "$ docker %s\n", strings.Join(quoted, " "))
	}
	fmt.Fprintf(&hdr, "exit status: %d\n-- stdout --\n%s-- stderr --\n%s", code, stdout, stderr)
	return r.n.norm(hdr.String())
}

// scope keeps the table header and the lines that belong to this run.
func (r *runbookRun) scope(out string) string {
	var keep []string
	for i, line := range strings.SplitAfter(out, "\n") {
		if line == "" {
			continue
		}
		if i == 0 && strings.HasPrefix(line, "ID ") {
			keep = append(keep, line)
			continue
		}
		mine := strings.Contains(line, r.suffix)
		for _, id := range r.created {
			mine = mine || (id != "" && strings.Contains(line, id))
		}
		if mine {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "")
}

func sortLabelLists(out string) string {
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		name, labels, ok := strings.Cut(l, " ")
		if !ok || labels == "" {
			continue
		}
		parts := strings.Split(labels, ",")
		sort.Strings(parts)
		lines[i] = name + " " + strings.Join(parts, ",")
	}
	return strings.Join(lines, "\n")
}

// cleanupSwarmRun removes, over the API, every secret this run created on
// the shared Swarm (by recorded ID and by run suffix).
func cleanupSwarmRun(t testing.TB, suffix string, ids func() []string) {
	t.Cleanup(func() {
		sock := swarmSocket()
		for _, id := range ids() {
			if id != "" {
				doRaw(t, sock, "DELETE", swarmAPI+"/secrets/"+id, "", nil)
			}
		}
		res := doRaw(t, sock, "GET", swarmAPI+"/secrets", "", nil)
		var all []secretJSON
		if err := json.Unmarshal(res.Body, &all); err != nil {
			t.Errorf("cleanup: GET /secrets: %v: %s", err, res.Body)
			return
		}
		for _, s := range all {
			if strings.Contains(s.Spec.Name, suffix) {
				doRaw(t, sock, "DELETE", swarmAPI+"/secrets/"+s.ID, "", nil)
			}
		}
	})
}

// TestSecretRunbook drives the docker CLI through the secrets runbook against
// live Swarm (recording testdata/swarm/runbook_*.golden with -update) and
// against hushd, and compares normalised transcripts. No deliberate
// differences between hush and Swarm are expected for secrets.
func TestSecretRunbook(t *testing.T) {
	requireDockerCLI(t)
	steps := runbookSteps()
	live := map[string]string{}

	t.Run("swarm", func(t *testing.T) {
		requireSwarm(t)
		r := newRunbookRun(t, swarmCLI(t), true)
		cleanupSwarmRun(t, r.suffix, func() []string { return r.created })
		for _, s := range steps {
			t.Run(s.name, func(t *testing.T) {
				got := r.runStep(s)
				live[s.name] = got
				checkSwarmGolden(t, "runbook_"+s.name, got)
			})
		}
		t.Run("ambiguous_prefix", func(t *testing.T) { checkAmbiguousPrefix(t, r) })
	})

	t.Run("hushd", func(t *testing.T) {
		h := startHushd(t)
		r := newRunbookRun(t, h.dockerCLI, false)
		for _, s := range steps {
			t.Run(s.name, func(t *testing.T) {
				got := r.runStep(s)
				checkHushdGolden(t, "runbook_"+s.name, got, live[s.name])
			})
		}
		t.Run("ambiguous_prefix", func(t *testing.T) { checkAmbiguousPrefix(t, r) })
	})
}

// checkAmbiguousPrefix creates secrets until two IDs share their first
// character, then checks that inspect and rm by that character are refused
// with `secret X is ambiguous (N matches found)`.
func checkAmbiguousPrefix(t *testing.T, r *runbookRun) {
	var c string
	for i := 0; i < 40 && c == ""; i++ {
		id := strings.TrimSpace(r.cli.MustDockerStdin("x", "secret", "create", fmt.Sprintf("amb%d_%s", i, r.suffix), "-"))
		r.created = append(r.created, id)
		out := r.cli.MustDocker("secret", "ls", "-q")
		counts := map[string]int{}
		for _, l := range strings.Fields(out) {
			counts[l[:1]]++
		}
		if counts[id[:1]] > 1 {
			c = id[:1]
		}
	}
	if c == "" {
		t.Fatal("no two IDs share a first character after 40 creates (IDs not random base-36?)")
	}
	n := 0
	for _, l := range strings.Fields(r.cli.MustDocker("secret", "ls", "-q")) {
		if strings.HasPrefix(l, c) {
			n++
		}
	}
	for _, verb := range []string{"inspect", "rm"} {
		stdout, stderr, code := r.cli.Docker("secret", verb, c)
		wantErr := fmt.Sprintf("Error response from daemon: secret %s is ambiguous (%d matches found)\n", c, n)
		if code != 1 || stderr != wantErr {
			t.Errorf("docker secret %s %s: want exit 1, stderr %q; got exit %d, stderr %q, stdout %q", verb, c, wantErr, code, stderr, stdout)
		}
	}
	// Nothing was removed by the ambiguous rm.
	if got := len(strings.Fields(r.cli.MustDocker("secret", "ls", "-q", "--filter", "id="+c))); got != n {
		t.Errorf("after an ambiguous rm, %d secrets with prefix %q remain, want %d", got, c, n)
	}
	for i := 0; ; i++ {
		name := fmt.Sprintf("amb%d_%s", i, r.suffix)
		if _, _, code := r.cli.Docker("secret", "rm", name); code != 0 {
			break
		}
	}
}
