package template

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	ttemplate "text/template"
	"text/template/parse"
	"unsafe"
)

// Driver is the only templating driver Swarm (and hush) renders.
const Driver = "golang"

// MaxSteps bounds the work of one rendering: every node executed inside a
// range body or a {{define}}d template costs one step, and functions cost
// one step plus one per KiB they produce (the top level, run once, is
// bounded by its size). Legitimate templates (a range
// over a service's labels) use a few thousand.
const MaxSteps = 200_000

// topName is the name Swarm gives the template, so positions in error
// messages read as Swarm's do ("template: expansion:1:4: ...").
const topName = "expansion"

// stepFunc is the function hush inserts to charge the step budget. A
// template cannot call it: Render refuses any template that names it.
const stepFunc = "hush_step"

// Sentinel causes, for errors.Is on a render error.
var (
	ErrSyntax        = errors.New("template syntax error")
	ErrExec          = errors.New("template execution error")
	ErrTooLarge      = errors.New("rendered output too large")
	ErrTooComplex    = errors.New("template needs too many steps")
	ErrRecursion     = errors.New("recursive template")
	ErrNotReferenced = errors.New("target not referenced by the task")
)

// Platform is the node's platform, as in Swarm's context.
type Platform struct {
	Architecture string
	OS           string
}

// Service is .Service.
type Service struct {
	ID     string
	Name   string
	Labels map[string]string
}

// Node is .Node.
type Node struct {
	ID       string
	Hostname string
	Platform Platform
}

// Task is .Task. Slot is the replica slot, or the node ID for a global
// service's task, as in Swarm.
type Task struct {
	ID   string
	Name string
	Slot string
}

// Context is what a template sees as ".". Its types have no methods, so a
// template can reach nothing but these fields.
type Context struct {
	Service Service
	Node    Node
	Task    Task
}

// Refs gives the raw (unrendered) data of the secrets and configs the task
// references, by the target its reference gives (File.Name as written in
// the service spec). ok is false when the task has no such reference. The
// returned slices are read in place and must stay unchanged until Render
// returns.
type Refs interface {
	Secret(target string) (data []byte, ok bool)
	Config(target string) (data []byte, ok bool)
}

// Request is one rendering.
type Request struct {
	// Text is the template (the object's data). It is read in place and
	// must stay unchanged until Render returns; the caller wipes it.
	Text    []byte
	Context Context
	// Env is the task's ContainerSpec.Env ("KEY=VALUE" entries), which
	// the env function reads; never the environment of hushd.
	Env  []string
	Refs Refs
	// Limit is the largest output accepted, in bytes.
	Limit int
	// Sensitive: the template is a secret, so errors must not quote it.
	Sensitive bool
	// MaxSteps is the work budget; 0 means the package's MaxSteps.
	MaxSteps int
}

// Error is a failed rendering. Its text follows text/template's for a
// non-sensitive template; for a sensitive one it is a position and a fixed
// reason only.
type Error struct {
	msg   string
	cause error
}

func (e *Error) Error() string { return e.msg }

// Unwrap returns the sentinel cause (or the context's error).
func (e *Error) Unwrap() error { return e.cause }

// Render executes r.Text with r.Context and returns the output, which the
// caller owns and should wipe after use.
func Render(ctx context.Context, r Request) ([]byte, error) {
	if r.MaxSteps <= 0 {
		r.MaxSteps = MaxSteps
	}
	st := &state{ctx: ctx, left: int64(r.MaxSteps), limit: max(r.Limit, 0), env: r.Env, refs: r.Refs}
	tmpl := ttemplate.New(topName).Option("missingkey=error").Funcs(st.funcs())
	if _, err := tmpl.Parse(view(r.Text)); err != nil {
		return nil, r.fail(err, ErrSyntax, r.Sensitive)
	}
	defer wipeTrees(tmpl)
	if err := checkTrees(tmpl); err != nil {
		return nil, r.fail(err, ErrSyntax, r.Sensitive)
	}
	for _, t := range tmpl.Templates() {
		if t.Tree == nil || t.Root == nil {
			continue
		}
		instrument(t.Tree, t.Root)
		// The top template runs once, at a cost its (bounded) size
		// bounds; {{define}}d ones may be called any number of times.
		if t.Name() != topName {
			prependStep(t.Tree, t.Root, t.Root.Pos, cost(t.Root))
		}
	}
	out := &buffer{max: st.limit}
	if err := tmpl.Execute(out, r.Context); err != nil {
		out.wipe()
		// Once a template has read a secret, values derived from it may
		// appear in text/template's messages (a computed target, an
		// index): Swarm too treats such a config as sensitive.
		return nil, r.fail(err, ErrExec, r.Sensitive || st.readSecret)
	}
	if out.b == nil {
		out.b = []byte{}
	}
	return out.b, nil
}

// view returns b as a string without copying it, so that wiping b later
// also wipes every string text/template slices from it (the parse tree's
// identifiers and quoted strings, function results). The strings must not
// outlive the rendering; nothing of text/template's is kept after Render.
func view(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

var rePos = regexp.MustCompile(`^template: .*?:(\d+)(?::(\d+))?: `)

// fail turns an error from parsing, checking or executing into an Error.
// Nothing of err is kept but its text (non-sensitive) or its position
// (sensitive): err may hold views of the template.
func (r *Request) fail(err error, generic error, sensitive bool) *Error {
	cause := generic
	for _, s := range []error{ErrTooLarge, ErrTooComplex, ErrRecursion, ErrNotReferenced, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, s) {
			cause = s
			break
		}
	}
	text := err.Error()
	pos := topName
	if m := rePos.FindStringSubmatch(text); m != nil {
		pos += ":" + m[1]
		if m[2] != "" {
			pos += ":" + m[2]
		}
	}
	reason := ""
	switch cause {
	case ErrTooLarge:
		reason = fmt.Sprintf("the rendered output would exceed %d bytes", r.Limit)
	case ErrTooComplex:
		reason = fmt.Sprintf("the template needs more than %d steps", r.MaxSteps)
	case context.Canceled, context.DeadlineExceeded:
		reason = "rendering interrupted: " + cause.Error()
	}
	switch {
	case reason != "":
		return &Error{msg: "template: " + pos + ": " + reason, cause: cause}
	case !sensitive:
		return &Error{msg: text, cause: cause}
	}
	switch cause {
	case ErrRecursion:
		reason = "a template calls itself (recursion is not supported)"
	case ErrNotReferenced:
		reason = "the template reads a secret or config target the task does not reference"
	case ErrSyntax:
		reason = "syntax error (details withheld: they would quote the secret)"
	default:
		reason = "execution failed (details withheld: they would quote the secret)"
	}
	return &Error{msg: "template: " + pos + ": " + reason, cause: cause}
}

// state is one rendering's budget and sources.
type state struct {
	ctx   context.Context
	left  int64
	limit int
	env   []string
	refs  Refs
	// readSecret: the template has read a secret's data.
	readSecret bool
}

func (s *state) charge(units int64) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	s.left -= units
	if s.left < 0 {
		return ErrTooComplex
	}
	return nil
}

// chargeBytes charges for a function result of n bytes.
func (s *state) chargeBytes(n int) error { return s.charge(1 + int64(n)/1024) }

// fits refuses a result that could not be written anyway, before it is
// built.
func (s *state) fits(name string, bound int) error {
	if bound > s.limit {
		return fmt.Errorf("%s: result could exceed %d bytes: %w", name, s.limit, ErrTooLarge)
	}
	return s.chargeBytes(bound)
}

func (s *state) funcs() ttemplate.FuncMap {
	return ttemplate.FuncMap{
		stepFunc: func(n int) (string, error) { return "", s.charge(int64(n)) },
		"env":    s.envFunc,
		"secret": s.secretFunc,
		"config": s.configFunc,
		"join":   s.join,
		// The builtins that build strings from any number of arguments
		// are replaced by bounded ones with the same results.
		"print":    s.print,
		"println":  s.println,
		"printf":   s.printf,
		"html":     s.escaper("html", ttemplate.HTMLEscaper),
		"js":       s.escaper("js", ttemplate.JSEscaper),
		"urlquery": s.escaper("urlquery", ttemplate.URLQueryEscaper),
	}
}

// envFunc reads the task's environment as Swarm does: the first KEY=VALUE
// entry for key; "" when there is none.
func (s *state) envFunc(key string) (string, error) {
	if err := s.charge(1 + int64(len(s.env))/64); err != nil {
		return "", err
	}
	for _, e := range s.env {
		if k, v, ok := strings.Cut(e, "="); ok && k == key {
			return v, nil
		}
	}
	return "", nil
}

func (s *state) secretFunc(target string) (string, error) {
	v, err := s.ref("secret", target, s.refsSecret)
	s.readSecret = s.readSecret || err == nil
	return v, err
}

func (s *state) configFunc(target string) (string, error) {
	return s.ref("config", target, s.refsConfig)
}

func (s *state) refsSecret(t string) ([]byte, bool) {
	if s.refs == nil {
		return nil, false
	}
	return s.refs.Secret(t)
}

func (s *state) refsConfig(t string) ([]byte, bool) {
	if s.refs == nil {
		return nil, false
	}
	return s.refs.Config(t)
}

func (s *state) ref(kind, target string, get func(string) ([]byte, bool)) (string, error) {
	if err := s.charge(1); err != nil {
		return "", err
	}
	b, ok := get(target)
	if !ok {
		return "", notReferenced{kind: kind, target: target}
	}
	if err := s.chargeBytes(len(b)); err != nil {
		return "", err
	}
	return view(b), nil
}

// notReferenced has Swarm's text (withheld for a secret template: the
// target is part of it).
type notReferenced struct{ kind, target string }

func (e notReferenced) Error() string { return e.kind + " target " + e.target + " not found" }

func (e notReferenced) Is(target error) bool { return target == ErrNotReferenced }

// join is Swarm's: the first argument is the separator.
func (s *state) join(args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("join needs a separator")
	}
	n := 0
	for _, a := range args[1:] {
		n += len(a) + len(args[0])
	}
	if err := s.fits("join", n); err != nil {
		return "", err
	}
	return strings.Join(args[1:], args[0]), nil
}

func (s *state) print(args ...any) (string, error) {
	if err := s.fits("print", argsBound(args, 1)); err != nil {
		return "", err
	}
	return fmt.Sprint(args...), nil
}

func (s *state) println(args ...any) (string, error) {
	if err := s.fits("println", argsBound(args, 1)+1); err != nil {
		return "", err
	}
	return fmt.Sprintln(args...), nil
}

func (s *state) printf(format string, args ...any) (string, error) {
	extra, verbs, factor := formatBound(format)
	if err := s.fits("printf", len(format)+extra+32*verbs+argsBound(args, factor)); err != nil {
		return "", err
	}
	return fmt.Sprintf(format, args...), nil
}

// escaper bounds one of text/template's escaping functions, whose output
// is at most six bytes per input byte.
func (s *state) escaper(name string, f func(...any) string) func(...any) (string, error) {
	return func(args ...any) (string, error) {
		if err := s.fits(name, 6*argsBound(args, 1)); err != nil {
			return "", err
		}
		return f(args...), nil
	}
}

// argsBound is an upper bound of the bytes fmt prints for args with %v
// (times factor for verbs that expand their operand), plus room for
// separators and fmt's error annotations.
func argsBound(args []any, factor int) int {
	n := 16
	for _, a := range args {
		n += 32 + factor*approxLen(a, 0)
	}
	return n
}

// approxLen bounds the size of a value printed by fmt. The values a
// template can hold are strings, the context's structs and label map,
// numbers, booleans and nil.
func approxLen(v any, depth int) int {
	switch x := v.(type) {
	case nil:
		return 16
	case string:
		return len(x)
	case map[string]string:
		n := 16
		for k, v := range x {
			n += len(k) + len(v) + 8
		}
		return n
	case Context:
		return 64 + approxLen(x.Service, depth+1) + approxLen(x.Node, depth+1) + approxLen(x.Task, depth+1)
	case Service:
		return 64 + len(x.ID) + len(x.Name) + approxLen(x.Labels, depth+1)
	case Node:
		return 96 + len(x.ID) + len(x.Hostname) + len(x.Platform.Architecture) + len(x.Platform.OS)
	case Platform:
		return 64 + len(x.Architecture) + len(x.OS)
	case Task:
		return 64 + len(x.ID) + len(x.Name) + len(x.Slot)
	}
	// Numbers and booleans: %f of the largest float64 has 316 characters.
	return 400
}

// formatBound scans a printf format for what can widen the output: every
// explicit width or precision (fmt refuses those over 1e6), each '*' (an
// argument-given width, counted at fmt's maximum), and verbs or flags that
// print more than the operand itself (%x, %q, %+v, %#v: up to four bytes
// per byte).
func formatBound(format string) (extra, verbs, factor int) {
	const fmtMaxWidth = 1_000_000
	factor = 1
	for i := 0; i < len(format); i++ {
		if format[i] != '%' {
			continue
		}
		verbs++
		// Up to the verb: flags, argument indexes, widths, precisions.
		j := i + 1
		for j < len(format) && strings.IndexByte("+-# 0123456789.*[]", format[j]) >= 0 {
			j++
		}
		num := -1
		for _, c := range []byte(format[i+1 : j]) {
			if c >= '0' && c <= '9' {
				num = min(max(num, 0)*10+int(c-'0'), fmtMaxWidth)
				continue
			}
			extra += max(num, 0)
			num = -1
			switch c {
			case '*':
				extra += fmtMaxWidth
			case '+', '#':
				factor = 4
			}
		}
		extra += max(num, 0)
		if j < len(format) {
			switch format[j] {
			case 's', 'v', 'd', 't', '%':
			default:
				factor = 4
			}
		}
		i = j
	}
	return extra, verbs, factor
}

// buffer is the output: bounded, and wiping every backing array it
// leaves behind as it grows.
type buffer struct {
	b   []byte
	max int
}

var errOutputLimit = fmt.Errorf("output limit: %w", ErrTooLarge)

func (w *buffer) Write(p []byte) (int, error) {
	if len(p) > w.max-len(w.b) {
		return 0, errOutputLimit
	}
	if len(p) > cap(w.b)-len(w.b) {
		n := min(max(2*cap(w.b), len(w.b)+len(p), 512), w.max)
		nb := make([]byte, len(w.b), n)
		copy(nb, w.b)
		clear(w.b)
		w.b = nb
	}
	w.b = append(w.b, p...)
	return len(p), nil
}

func (w *buffer) wipe() {
	clear(w.b)
	w.b = nil
}

// ---- the parse tree ----

// children lists a node's direct children.
func children(n parse.Node) []parse.Node {
	var out []parse.Node
	add := func(c parse.Node) {
		// A typed nil pointer in an interface is not a child.
		switch x := c.(type) {
		case *parse.ListNode:
			if x == nil {
				return
			}
		case *parse.PipeNode:
			if x == nil {
				return
			}
		}
		if c != nil {
			out = append(out, c)
		}
	}
	switch x := n.(type) {
	case *parse.ListNode:
		for _, c := range x.Nodes {
			add(c)
		}
	case *parse.ActionNode:
		add(x.Pipe)
	case *parse.IfNode:
		add(x.Pipe)
		add(x.List)
		add(x.ElseList)
	case *parse.WithNode:
		add(x.Pipe)
		add(x.List)
		add(x.ElseList)
	case *parse.RangeNode:
		add(x.Pipe)
		add(x.List)
		add(x.ElseList)
	case *parse.TemplateNode:
		add(x.Pipe)
	case *parse.PipeNode:
		for _, c := range x.Cmds {
			if c != nil {
				out = append(out, c)
			}
		}
	case *parse.CommandNode:
		for _, c := range x.Args {
			add(c)
		}
	case *parse.ChainNode:
		add(x.Node)
	}
	return out
}

// walk calls visit on n and every node under it, in order.
func walk(n parse.Node, visit func(parse.Node)) {
	visit(n)
	for _, c := range children(n) {
		walk(c, visit)
	}
}

// checkTrees refuses a template that names the step function or in which
// {{define}}d templates call each other in a cycle (whose cost could
// double with every level of text/template's 100000-deep call stack).
func checkTrees(tmpl *ttemplate.Template) error {
	calls := map[string][]string{}
	var bad error
	for _, t := range tmpl.Templates() {
		if t.Tree == nil || t.Root == nil {
			continue
		}
		tree := t.Tree
		walk(t.Root, func(n parse.Node) {
			switch x := n.(type) {
			case *parse.IdentifierNode:
				if x.Ident == stepFunc && bad == nil {
					loc, _ := tree.ErrorContext(x)
					bad = fmt.Errorf("template: %s: function %q not defined", loc, stepFunc)
				}
			case *parse.TemplateNode:
				calls[t.Name()] = append(calls[t.Name()], x.Name)
			}
		})
		if bad != nil {
			return bad
		}
	}
	const (
		unseen = iota
		active
		done
	)
	color := map[string]int{}
	var visit func(name string) error
	visit = func(name string) error {
		switch color[name] {
		case active:
			return fmt.Errorf("template: %s: template %q calls itself, directly or through others: %w", topName, name, ErrRecursion)
		case done:
			return nil
		}
		color[name] = active
		for _, c := range calls[name] {
			if err := visit(c); err != nil {
				return err
			}
		}
		color[name] = done
		return nil
	}
	names := make([]string, 0, len(calls))
	for name := range calls {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := visit(name); err != nil {
			return err
		}
	}
	return nil
}

// cost counts the nodes one execution of n evaluates, not counting range
// bodies and called templates, which charge for themselves.
func cost(n parse.Node) int {
	c := 1
	if r, ok := n.(*parse.RangeNode); ok {
		if r.Pipe != nil {
			c += cost(r.Pipe)
		}
		if r.ElseList != nil {
			c += cost(r.ElseList)
		}
		return c
	}
	for _, ch := range children(n) {
		c += cost(ch)
	}
	return c
}

// instrument makes every range body under n charge its cost per
// iteration.
func instrument(tree *parse.Tree, n parse.Node) {
	for _, c := range children(n) {
		instrument(tree, c)
	}
	if r, ok := n.(*parse.RangeNode); ok && r.List != nil {
		prependStep(tree, r.List, r.Pos, cost(r.List))
	}
}

// prependStep puts {{hush_step n}} (which prints nothing) first in list.
// Errors it raises point at pos.
func prependStep(tree *parse.Tree, list *parse.ListNode, pos parse.Pos, n int) {
	id := parse.NewIdentifier(stepFunc).SetTree(tree).SetPos(pos)
	num := &parse.NumberNode{NodeType: parse.NodeNumber, Pos: pos, IsInt: true, Int64: int64(n), Text: strconv.Itoa(n)}
	cmd := &parse.CommandNode{NodeType: parse.NodeCommand, Pos: pos, Args: []parse.Node{id, num}}
	pipe := &parse.PipeNode{NodeType: parse.NodePipe, Pos: pos, Cmds: []*parse.CommandNode{cmd}}
	act := &parse.ActionNode{NodeType: parse.NodeAction, Pos: pos, Pipe: pipe}
	list.Nodes = append([]parse.Node{act}, list.Nodes...)
}

// wipeTrees clears the template's literal text, which the parser copied
// out of the (secret) source.
func wipeTrees(tmpl *ttemplate.Template) {
	for _, t := range tmpl.Templates() {
		if t.Tree == nil || t.Root == nil {
			continue
		}
		walk(t.Root, func(n parse.Node) {
			if x, ok := n.(*parse.TextNode); ok {
				clear(x.Text)
			}
		})
	}
}
