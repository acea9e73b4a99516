package template

import (
	"bytes"
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// refs is a task's references: target -> raw data.
type refs struct{ secrets, configs map[string][]byte }

func (r refs) Secret(t string) ([]byte, bool) { b, ok := r.secrets[t]; return b, ok }
func (r refs) Config(t string) ([]byte, bool) { b, ok := r.configs[t]; return b, ok }

func testContext() Context {
	return Context{
		Service: Service{ID: "svc0id", Name: "web", Labels: map[string]string{"tier": "front", "com.example.k": "v"}},
		Node:    Node{ID: "node0id", Hostname: "host1", Platform: Platform{Architecture: "amd64", OS: "linux"}},
		Task:    Task{ID: "task0id", Name: "web.3.task0id", Slot: "3"},
	}
}

func testRefs() refs {
	return refs{
		secrets: map[string][]byte{"db_pass": []byte("s3cret"), "/abs/key": []byte("k"), "tmpl": []byte("{{.Task.ID}}")},
		configs: map[string][]byte{"/etc/app.conf": []byte("port=80"), "app": []byte("rel")},
	}
}

func request(text string) Request {
	return Request{
		Text: []byte(text), Context: testContext(), Refs: testRefs(), Limit: 1 << 16,
		Env: []string{"FOO=bar", "EQ=a=b", "NOVALUE", "FOO=second", "EMPTY="},
		// Small, so budget tests are quick under the race detector;
		// TestRenderDefaultBudget covers the default.
		MaxSteps: 5000,
	}
}

func TestRender(t *testing.T) {
	tests := []struct {
		name, text, want string
	}{
		{"service id", "{{.Service.ID}}", "svc0id"},
		{"service name", "{{.Service.Name}}", "web"},
		{"service label by index", `{{index .Service.Labels "com.example.k"}}`, "v"},
		{"service label by field", "{{.Service.Labels.tier}}", "front"},
		{"missing label by index is empty", `{{index .Service.Labels "nope"}}`, ""},
		{"labels map", "{{.Service.Labels}}", "map[com.example.k:v tier:front]"},
		{"range over labels", `{{range $k, $v := .Service.Labels}}{{$k}}={{$v}};{{end}}`, "com.example.k=v;tier=front;"},
		{"task id", "{{.Task.ID}}", "task0id"},
		{"task name", "{{.Task.Name}}", "web.3.task0id"},
		{"task slot", "{{.Task.Slot}}", "3"},
		{"node id", "{{.Node.ID}}", "node0id"},
		{"node hostname", "{{.Node.Hostname}}", "host1"},
		{"node os", "{{.Node.Platform.OS}}", "linux"},
		{"node arch", "{{.Node.Platform.Architecture}}", "amd64"},
		{"service struct prints as Swarm's", "{{.Service}}", "{svc0id web map[com.example.k:v tier:front]}"},
		{"env", `{{env "FOO"}}`, "bar"},
		{"env keeps the value after the first =", `{{env "EQ"}}`, "a=b"},
		{"env missing is empty", `{{env "NOPE"}}`, ""},
		{"env entry without = is not a variable", `{{env "NOVALUE"}}`, ""},
		{"env empty value", `[{{env "EMPTY"}}]`, "[]"},
		{"secret by relative target", `{{secret "db_pass"}}`, "s3cret"},
		{"secret by absolute target", `{{secret "/abs/key"}}`, "k"},
		{"secret data is not rendered again", `{{secret "tmpl"}}`, "{{.Task.ID}}"},
		{"config by target", `{{config "/etc/app.conf"}}`, "port=80"},
		{"config by relative target", `{{config "app"}}`, "rel"},
		{"join", `{{join "," "a" "b" "c"}}`, "a,b,c"},
		{"join separator only", `{{join ","}}`, ""},
		{"printf", `{{printf "%s-%03d" .Service.Name 7}}`, "web-007"},
		{"printf hex", `{{printf "%x" "ab"}}`, "6162"},
		{"print", `{{print "a" 1 2 "b"}}`, "a1 2b"},
		{"println", `{{println "a"}}`, "a\n"},
		{"html", `{{html "<a>"}}`, "&lt;a&gt;"},
		{"js", `{{js "'"}}`, `\'`},
		{"urlquery", `{{urlquery "a b"}}`, "a+b"},
		{"builtins still work", `{{len (secret "db_pass")}} {{slice "abcdef" 1 3}} {{if eq .Task.Slot "3"}}yes{{end}}`, "6 bc yes"},
		{"define and template", `{{define "x"}}<{{.}}>{{end}}{{template "x" .Task.Slot}}{{template "x" "y"}}`, "<3><y>"},
		{"range over int", `{{range $i := 3}}{{$i}}{{end}}`, "012"},
		{"plain text", "user=admin\npassword=hunter2\n", "user=admin\npassword=hunter2\n"},
		{"comment only", "{{/* nothing */}}", ""},
		{"trim markers", "a  {{- .Task.Slot -}}  b", "a3b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Render(context.Background(), request(tt.text))
			if err != nil {
				t.Fatalf("Render(%q): %v", tt.text, err)
			}
			if string(got) != tt.want {
				t.Fatalf("Render(%q) = %q, want %q", tt.text, got, tt.want)
			}
		})
	}
}

func TestRenderGlobalSlotIsNodeID(t *testing.T) {
	r := request("{{.Task.Slot}}")
	r.Context.Task.Slot = r.Context.Node.ID
	got, err := Render(context.Background(), r)
	if err != nil || string(got) != "node0id" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		name, text string
		cause      error
		// public is the message for a non-sensitive template (a config);
		// withheld for a secret.
		public, withheld string
	}{
		{"missing secret target", `x={{secret "nosuch"}}`, ErrNotReferenced,
			`template: expansion:1:4: executing "expansion" at <secret "nosuch">: error calling secret: secret target nosuch not found`,
			"template: expansion:1:4: the template reads a secret or config target the task does not reference"},
		{"missing config target", `{{config "/nosuch"}}`, ErrNotReferenced,
			`template: expansion:1:2: executing "expansion" at <config "/nosuch">: error calling config: config target /nosuch not found`,
			"template: expansion:1:2: the template reads a secret or config target the task does not reference"},
		{"a config target is not a secret target", `{{secret "app"}}`, ErrNotReferenced,
			`template: expansion:1:2: executing "expansion" at <secret "app">: error calling secret: secret target app not found`,
			"template: expansion:1:2: the template reads a secret or config target the task does not reference"},
		{"missing label by field", "x={{.Service.Labels.nokey}}", ErrExec,
			`template: expansion:1:12: executing "expansion" at <.Service.Labels.nokey>: map has no entry for key "nokey"`,
			"template: expansion:1:12: execution failed (details withheld: they would quote the secret)"},
		{"unknown field", "x={{.Nope}}", ErrExec,
			`template: expansion:1:4: executing "expansion" at <.Nope>: can't evaluate field Nope in type template.Context`,
			"template: expansion:1:4: execution failed (details withheld: they would quote the secret)"},
		{"unclosed action", "x={{", ErrSyntax, "template: expansion:1: unclosed action",
			"template: expansion:1: syntax error (details withheld: they would quote the secret)"},
		{"unknown function", "line1\n{{hunter2}}", ErrSyntax, `template: expansion:2: function "hunter2" not defined`,
			"template: expansion:2: syntax error (details withheld: they would quote the secret)"},
		{"the step function is not callable", "{{hush_step -1000000}}", ErrSyntax, `template: expansion:1:2: function "hush_step" not defined`,
			"template: expansion:1:2: syntax error (details withheld: they would quote the secret)"},
		{"join without separator", "{{join}}", ErrExec,
			`template: expansion:1:2: executing "expansion" at <join>: error calling join: join needs a separator`,
			"template: expansion:1:2: execution failed (details withheld: they would quote the secret)"},
		{"self recursion", `{{define "a"}}{{template "a"}}{{end}}{{template "a"}}`, ErrRecursion,
			`template: expansion: template "a" calls itself, directly or through others: recursive template`,
			"template: expansion: a template calls itself (recursion is not supported)"},
		{"mutual recursion", `{{define "a"}}{{template "b"}}{{end}}{{define "b"}}{{if true}}{{template "a"}}{{end}}{{end}}`, ErrRecursion,
			`template: expansion: template "a" calls itself, directly or through others: recursive template`,
			"template: expansion: a template calls itself (recursion is not supported)"},
		{"top template calls itself", `x{{template "expansion"}}`, ErrRecursion,
			`template: expansion: template "expansion" calls itself, directly or through others: recursive template`,
			"template: expansion: a template calls itself (recursion is not supported)"},
		{"endless range", "{{range 1000000000}}{{end}}", ErrTooComplex,
			"template: expansion:1:8: the template needs more than 5000 steps",
			"template: expansion:1:8: the template needs more than 5000 steps"},
		{"nested ranges over labels", strings.Repeat("{{range $.Service.Labels}}", 20) + strings.Repeat("{{end}}", 20), ErrTooComplex,
			"", ""},
		{"exponential template calls", expTemplates(30), ErrTooComplex, "", ""},
		{"printf with a huge width", `{{printf "%999999d" 1}}`, ErrTooLarge,
			"template: expansion:1:2: the rendered output would exceed 65536 bytes",
			"template: expansion:1:2: the rendered output would exceed 65536 bytes"},
		{"output over the limit", `{{range 70}}{{printf "%1000d" 1}}{{end}}`, ErrTooLarge,
			"template: expansion: the rendered output would exceed 65536 bytes",
			"template: expansion: the rendered output would exceed 65536 bytes"},
		{"join over the limit", `{{$s := printf "%60000s" "x"}}{{join "" $s $s}}`, ErrTooLarge, "", ""},
		{"print over the limit", `{{$s := printf "%60000s" "x"}}{{print $s $s}}`, ErrTooLarge, "", ""},
		{"html over the limit", `{{$s := printf "%20000s" "x"}}{{html $s}}`, ErrTooLarge, "", ""},
	}
	for _, tt := range tests {
		for _, sensitive := range []bool{false, true} {
			name := tt.name
			if sensitive {
				name += " (secret)"
			}
			t.Run(name, func(t *testing.T) {
				r := request(tt.text)
				r.Sensitive = sensitive
				got, err := Render(context.Background(), r)
				if err == nil {
					t.Fatalf("Render(%q) = %q, want an error", tt.text, got)
				}
				if got != nil {
					t.Fatalf("output %q with error %v", got, err)
				}
				var re *Error
				if !errors.As(err, &re) || !errors.Is(err, tt.cause) {
					t.Fatalf("error %v (%T), want cause %v", err, err, tt.cause)
				}
				want := tt.public
				if sensitive {
					want = tt.withheld
				}
				if want != "" && err.Error() != want {
					t.Fatalf("error\n got %q\nwant %q", err.Error(), want)
				}
			})
		}
	}
}

// expTemplates defines n templates each calling the previous one twice:
// acyclic, but 2^n calls.
func expTemplates(n int) string {
	var b strings.Builder
	b.WriteString(`{{define "t0"}}x{{end}}`)
	for i := 1; i <= n; i++ {
		b.WriteString(`{{define "t` + itoa(i) + `"}}{{template "t` + itoa(i-1) + `"}}{{template "t` + itoa(i-1) + `"}}{{end}}`)
	}
	b.WriteString(`{{template "t` + itoa(n) + `"}}`)
	return b.String()
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestRenderSensitiveErrorsNeverQuoteTheTemplate(t *testing.T) {
	const mark = "HUNTER2MARK"
	for _, text := range []string{
		`{{.` + mark + `}}`, `{{secret "` + mark + `"}}`, `{{config "` + mark + `"}}`, `{{.Service.Labels.` + mark + `}}`,
		`{{define "` + mark + `"}}{{template "` + mark + `"}}{{end}}`, `{{` + mark, `{{index 3 "` + mark + `"}}`,
		`{{template "` + mark + `"}}`, `{{` + mark + ` 1}}`,
		`{{range "` + mark + `"}}{{end}}`,
	} {
		// The public message (a config's) is text/template's, which quotes
		// the template: so each case is one where withholding matters.
		_, err := Render(context.Background(), request(text))
		if err == nil || !strings.Contains(err.Error(), mark) {
			t.Fatalf("Render(%q): the public error does not quote the template, so the case proves nothing: %v", text, err)
		}
		r := request(text)
		r.Sensitive = true
		_, err = Render(context.Background(), r)
		if err == nil || strings.Contains(err.Error(), mark) || !sensitiveMsg.MatchString(err.Error()) {
			t.Fatalf("Render(%q) of a secret: error %v", text, err)
		}
	}
}

func TestRenderDefaultBudget(t *testing.T) {
	r := request("{{range 1000000000}}{{end}}")
	r.MaxSteps = 0
	_, err := Render(context.Background(), r)
	if !errors.Is(err, ErrTooComplex) || err.Error() != "template: expansion:1:8: the template needs more than 200000 steps" {
		t.Fatalf("got %v", err)
	}
	// Within the budget: a range of 1000 over a small body.
	r = request("{{range 1000}}{{.}}{{end}}")
	r.MaxSteps = 0
	if out, err := Render(context.Background(), r); err != nil || len(out) != 2890 {
		t.Fatalf("%d bytes, %v", len(out), err)
	}
}

// TestRenderConfigThatReadASecretIsSensitive: a config's errors are
// public, unless the template has read a secret before failing, since the
// message may then hold values computed from it.
func TestRenderConfigThatReadASecretIsSensitive(t *testing.T) {
	tests := []struct {
		text, want string
	}{
		{`{{config (secret "db_pass")}}`, "template: expansion:1:2: the template reads a secret or config target the task does not reference"},
		{`{{index "ab" (index (secret "db_pass") 0)}}`, "template: expansion:1:2: execution failed (details withheld: they would quote the secret)"},
		{`{{config "nosuch"}}{{secret "db_pass"}}`, `template: expansion:1:2: executing "expansion" at <config "nosuch">: error calling config: config target nosuch not found`},
	}
	for _, tt := range tests {
		_, err := Render(context.Background(), request(tt.text))
		if err == nil || err.Error() != tt.want || strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "115") {
			t.Errorf("Render(%q):\n got %v\nwant %s", tt.text, err, tt.want)
		}
	}
}

func TestRenderOutputLimitIsExact(t *testing.T) {
	text := "{{range 10}}0123456789{{end}}"
	for _, tt := range []struct {
		limit int
		ok    bool
	}{{100, true}, {99, false}, {0, false}} {
		r := request(text)
		r.Limit = tt.limit
		got, err := Render(context.Background(), r)
		if tt.ok != (err == nil) {
			t.Fatalf("limit %d: %q, %v", tt.limit, got, err)
		}
		if tt.ok && len(got) != 100 {
			t.Fatalf("limit %d: %d bytes", tt.limit, len(got))
		}
		if !tt.ok && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("limit %d: %v", tt.limit, err)
		}
	}
	r := request("")
	r.Limit = 0
	if got, err := Render(context.Background(), r); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("empty template with limit 0: %q, %v", got, err)
	}
}

func TestRenderStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Render(ctx, request("{{range 10}}x{{end}}"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestRenderDoesNotModifyItsInputs(t *testing.T) {
	r := request(`{{secret "db_pass"}} {{config "app"}} text`)
	before := bytes.Clone(r.Text)
	sec := bytes.Clone(r.Refs.(refs).secrets["db_pass"])
	if _, err := Render(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Text, before) || !bytes.Equal(r.Refs.(refs).secrets["db_pass"], sec) {
		t.Fatalf("inputs changed: %q %q", r.Text, r.Refs.(refs).secrets["db_pass"])
	}
}

func TestBufferWipesWhatItLeaves(t *testing.T) {
	w := &buffer{max: 4096}
	if _, err := w.Write(bytes.Repeat([]byte("s"), 500)); err != nil {
		t.Fatal(err)
	}
	old := w.b[:cap(w.b)]
	if _, err := w.Write(bytes.Repeat([]byte("t"), 100)); err != nil {
		t.Fatal(err)
	}
	if &old[0] == &w.b[0] {
		t.Fatal("the buffer did not grow; the test needs a reallocation")
	}
	if bytes.ContainsAny(old, "st") {
		t.Fatalf("old backing array not wiped: %q", old[:16])
	}
	if _, err := w.Write(make([]byte, 4096)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("write over max: %v", err)
	}
	cur := w.b
	w.wipe()
	if w.b != nil || bytes.ContainsAny(cur, "st") {
		t.Fatal("wipe left data")
	}
}

func TestFormatBound(t *testing.T) {
	tests := []struct {
		format               string
		extra, verbs, factor int
	}{
		{"plain", 0, 0, 1},
		{"%s-%d", 0, 2, 1},
		{"%10s", 10, 1, 1},
		{"%-8.3f", 11, 1, 4},
		{"%*d", 1_000_000, 1, 1},
		{"%[2]*[1]d", 1_000_003, 1, 1},
		{"%x", 0, 1, 4},
		{"%+v", 0, 1, 4},
		{"%#v", 0, 1, 4},
		{"%99999999999s", 1_000_000, 1, 1},
		{"%%", 0, 1, 1},
		{"trailing %", 0, 1, 1},
		{"%5", 5, 1, 1},
	}
	for _, tt := range tests {
		e, v, f := formatBound(tt.format)
		if e != tt.extra || v != tt.verbs || f != tt.factor {
			t.Errorf("formatBound(%q) = %d, %d, %d; want %d, %d, %d", tt.format, e, v, f, tt.extra, tt.verbs, tt.factor)
		}
	}
}

// sensitiveMsg is every form a secret template's error can take: fixed
// text and numbers only.
var sensitiveMsg = regexp.MustCompile(`^template: expansion(:\d+(:\d+)?)?: (` + strings.Join([]string{
	`the rendered output would exceed \d+ bytes`,
	`the template needs more than \d+ steps`,
	`a template calls itself \(recursion is not supported\)`,
	`the template reads a secret or config target the task does not reference`,
	`syntax error \(details withheld: they would quote the secret\)`,
	`execution failed \(details withheld: they would quote the secret\)`,
}, "|") + `)$`)

// FuzzRender: any template, secret or not, renders within the limit or
// fails with an Error; never panics; renders the same twice; and a secret
// template's error is one of the fixed forms.
func FuzzRender(f *testing.F) {
	for _, s := range []string{
		"", "plain", "{{.Service.Name}}", `{{index .Service.Labels "tier"}}`, `{{env "FOO"}}`, `{{secret "db_pass"}}`,
		`{{config "app"}}`, `{{range $k, $v := .Service.Labels}}{{$k}}{{end}}`, `{{define "a"}}{{template "a"}}{{end}}`,
		"{{range 100000000}}{{end}}", `{{printf "%999999d" 1}}`, "{{", "{{.Nope}}", `{{join "," "a"}}`,
		`{{with .Task}}{{.Slot}}{{else}}none{{end}}`, `{{block "b" .}}{{.Task.ID}}{{end}}`, "{{hush_step 1}}",
		`{{$x := secret "db_pass"}}{{range 3}}{{$x}}{{end}}`, `{{print . }}{{printf "%#v" .}}`, "{{break}}",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, text string, sensitive bool) {
		r := request(text)
		r.Limit = 4096
		r.Sensitive = sensitive
		out, err := Render(context.Background(), r)
		if err != nil {
			var re *Error
			if !errors.As(err, &re) || out != nil {
				t.Fatalf("error %v (%T), output %q", err, err, out)
			}
			if sensitive && !sensitiveMsg.MatchString(err.Error()) {
				t.Fatalf("secret template error is not a fixed form: %q", err.Error())
			}
			return
		}
		if len(out) > r.Limit {
			t.Fatalf("%d bytes over the %d limit", len(out), r.Limit)
		}
		again, err := Render(context.Background(), r)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("second rendering differs: %q / %q, %v", out, again, err)
		}
	})
}
