package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// badTarget is what a bad request may refer to on one daemon.
type badTarget struct {
	suffix  string
	id      string // a secret created before the bad requests
	version uint64 // its Version.Index
}

// badAnswer is a daemon's answer to one bad request.
type badAnswer struct {
	Status      int
	ContentType string
	Message     string // the "message" of the JSON body ("" if none)
	Body        string // normalised raw body
}

type badRequest struct {
	name        string
	method      string
	path        func(bt badTarget) string
	contentType string
	body        func(bt badTarget) []byte
	// compare decides whether hushd's answer is acceptable given Swarm's. nil
	// means strict: same status and same message. A non-nil compare
	// documents a deliberate difference.
	compare func(swarm, hush badAnswer) string
}

func fixedPath(p string) func(badTarget) string { return func(badTarget) string { return p } }
func fixedBody(b string) func(badTarget) []byte { return func(badTarget) []byte { return []byte(b) } }

const jsonCT = "application/json"

func badRequests() []badRequest {
	create := fixedPath("/v1.41/secrets/create")
	return []badRequest{
		{name: "malformed_json", method: "POST", path: create, contentType: jsonCT, body: fixedBody(`{bad`)},
		{name: "wrong_type_name", method: "POST", path: create, contentType: jsonCT, body: fixedBody(`{"Name":5,"Data":"eA=="}`)},
		{name: "wrong_type_labels", method: "POST", path: create, contentType: jsonCT,
			body: func(bt badTarget) []byte {
				return []byte(`{"Name":"br_lab_` + bt.suffix + `","Labels":"a","Data":"eA=="}`)
			}},
		{name: "wrong_type_data", method: "POST", path: create, contentType: jsonCT,
			body: func(bt badTarget) []byte { return []byte(`{"Name":"br_data_` + bt.suffix + `","Data":5}`) }},
		{name: "bad_base64", method: "POST", path: create, contentType: jsonCT,
			body: func(bt badTarget) []byte { return []byte(`{"Name":"br_b64_` + bt.suffix + `","Data":"!!!notbase64"}`) }},
		{name: "json_array", method: "POST", path: create, contentType: jsonCT, body: fixedBody(`[]`)},
		{name: "empty_body", method: "POST", path: create, contentType: jsonCT, body: fixedBody(``)},
		{name: "missing_name", method: "POST", path: create, contentType: jsonCT, body: fixedBody(`{"Data":"eA=="}`)},
		{name: "missing_data", method: "POST", path: create, contentType: jsonCT,
			body: func(bt badTarget) []byte { return []byte(`{"Name":"br_nodata_` + bt.suffix + `"}`) }},
		{
			// hush caps request bodies (deliberate): 413 or 400 are both fine,
			// with a message about the size. Swarm reads the whole body (up to
			// gRPC's 4 MiB, beyond which it answers 500 ResourceExhausted) and
			// then refuses the data size with 400.
			name: "oversized_body_2MiB", method: "POST", path: create, contentType: jsonCT,
			body: func(bt badTarget) []byte {
				return []byte(`{"Name":"br_big_` + bt.suffix + `","Data":"` + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("a"), 2<<20)) + `"}`)
			},
			compare: func(swarm, hush badAnswer) string {
				if hush.Status != 400 && hush.Status != 413 {
					return fmt.Sprintf("want status 400 or 413, got %d", hush.Status)
				}
				m := strings.ToLower(hush.Message)
				if !strings.Contains(m, "512000") && !strings.Contains(m, "too large") && !strings.Contains(m, "limit") {
					return fmt.Sprintf("want a message about the size, got %q", hush.Message)
				}
				return ""
			},
		},
		{name: "unknown_route_swarm", method: "GET", path: fixedPath("/v1.41/swarm/bogus")},
		{name: "unknown_route_secret_subpath", method: "GET", path: fixedPath("/v1.41/secrets/x/y")},
		{name: "wrong_method_secrets", method: "POST", path: fixedPath("/v1.41/secrets")},
		{name: "wrong_method_secret", method: "PUT", path: func(bt badTarget) string { return "/v1.41/secrets/" + bt.id }},
		{
			// Swarm answers 500 for unparsable filters (a client error reported
			// as a server error). hush deliberately answers 400.
			name: "filters_bad_json", method: "GET", path: fixedPath("/v1.41/secrets?filters=" + url.QueryEscape(`{bad`)),
			compare: want4xx,
		},
		{
			// Same deliberate difference: Swarm 500, hush 400.
			name: "filters_wrong_shape", method: "GET", path: fixedPath("/v1.41/secrets?filters=" + url.QueryEscape(`{"name":"x"}`)),
			compare: want4xx,
		},
		{name: "filters_unknown_key", method: "GET", path: fixedPath("/v1.41/secrets?filters=" + url.QueryEscape(`{"foo":["x"]}`))},
		{name: "inspect_missing", method: "GET", path: func(bt badTarget) string { return "/v1.41/secrets/nosuch_" + bt.suffix }},
		{name: "delete_missing", method: "DELETE", path: func(bt badTarget) string { return "/v1.41/secrets/nosuch_" + bt.suffix }},
		{
			// hush may support a newer maximum API version than Swarm 20.10
			// (1.41): only the start of the message must match.
			name: "api_version_too_new", method: "GET", path: fixedPath("/v1.99/secrets"),
			compare: func(swarm, hush badAnswer) string {
				const p = "client version 1.99 is too new. Maximum supported API version is "
				if hush.Status != 400 || !strings.HasPrefix(hush.Message, p) {
					return fmt.Sprintf("want 400 %q..., got %d %q", p, hush.Status, hush.Message)
				}
				return ""
			},
		},
		{name: "update_bad_version", method: "POST", contentType: jsonCT,
			path: func(bt badTarget) string { return "/v1.41/secrets/" + bt.id + "/update?version=abc" },
			body: func(bt badTarget) []byte { return []byte(`{"Name":"br_keep_` + bt.suffix + `","Labels":{"x":"y"}}`) }},
		{name: "update_name_change", method: "POST", contentType: jsonCT,
			path: func(bt badTarget) string {
				return fmt.Sprintf("/v1.41/secrets/%s/update?version=%d", bt.id, bt.version)
			},
			body: func(bt badTarget) []byte { return []byte(`{"Name":"br_renamed_` + bt.suffix + `","Labels":{"x":"y"}}`) }},
		// An update with changed Data is no bad request on hushd: it makes a
		// new version (a deliberate difference from Swarm's 400 "only
		// updates to Labels are allowed"; see TestRotationDockerUpdate).
		{
			// Swarm: 500 "rpc error: code = Unknown desc = update out of
			// sequence". hush answers 409 (a stale version is the client's
			// conflict, docs/COMPATIBILITY.md); the text must stay.
			name: "update_out_of_sequence", method: "POST", contentType: jsonCT,
			path: func(bt badTarget) string {
				return fmt.Sprintf("/v1.41/secrets/%s/update?version=%d", bt.id, bt.version+1000)
			},
			body: func(bt badTarget) []byte { return []byte(`{"Name":"br_keep_` + bt.suffix + `","Labels":{"x":"y"}}`) },
			compare: func(swarm, hush badAnswer) string {
				if hush.Status != 409 {
					return fmt.Sprintf("want status 409 (Swarm: %d), got %d", swarm.Status, hush.Status)
				}
				if hush.Message != swarm.Message {
					return fmt.Sprintf("want Swarm's text %q, got %q", swarm.Message, hush.Message)
				}
				return ""
			},
		},
	}
}

func want4xx(swarm, hush badAnswer) string {
	if hush.Status < 400 || hush.Status > 499 {
		return fmt.Sprintf("want a 4xx status (Swarm: %d %q), got %d", swarm.Status, swarm.Message, hush.Status)
	}
	return ""
}

func (bt badTarget) norm(s string) string {
	if bt.id != "" {
		s = strings.ReplaceAll(s, bt.id, "<ID>")
	}
	if bt.suffix != "" {
		s = strings.ReplaceAll(s, bt.suffix, "<RUN>")
	}
	return s
}

func sendBad(t *testing.T, sock string, bt badTarget, c badRequest) badAnswer {
	t.Helper()
	var body []byte
	if c.body != nil {
		body = c.body(bt)
	}
	res := doRawEager(t, sock, c.method, c.path(bt), c.contentType, body)
	a := badAnswer{Status: res.Status, ContentType: res.ContentType, Body: bt.norm(strings.TrimSpace(string(res.Body)))}
	var m struct{ Message *string }
	if json.Unmarshal(res.Body, &m) == nil && m.Message != nil {
		a.Message = bt.norm(*m.Message)
	}
	return a
}

// ---- badrequests.golden ----

func renderBadGolden(cases []badRequest, answers map[string]badAnswer) string {
	var sb strings.Builder
	sb.WriteString("# Docker Swarm (Engine 20.10) answers to bad requests, recorded by TestBadRequests -update.\n")
	for _, c := range cases {
		a := answers[c.name]
		p := reVersionParam.ReplaceAllString(c.path(badTarget{suffix: "<RUN>", id: "<ID>", version: 0}), "version=<N>")
		fmt.Fprintf(&sb, "\n## %s\n%s %s\nstatus: %d\ncontent-type: %s\nbody: %s\n", c.name, c.method, p, a.Status, a.ContentType, a.Body)
	}
	return sb.String()
}

var reVersionParam = regexp.MustCompile(`version=\d+`)

var reGoldenBlock = regexp.MustCompile(`(?m)^## (\S+)\n[^\n]*\nstatus: (\d+)\ncontent-type: ([^\n]*)\nbody: ([^\n]*)$`)

func parseBadGolden(s string) map[string]badAnswer {
	out := map[string]badAnswer{}
	for _, m := range reGoldenBlock.FindAllStringSubmatch(s, -1) {
		st, _ := strconv.Atoi(m[2])
		a := badAnswer{Status: st, ContentType: m[3], Body: m[4]}
		var j struct{ Message *string }
		if json.Unmarshal([]byte(m[4]), &j) == nil && j.Message != nil {
			a.Message = *j.Message
		}
		out[m[1]] = a
	}
	return out
}

// setupBadTarget creates the secret that must stay intact and returns the
// target, its inspect body and a function counting this run's secrets.
func setupBadTarget(t *testing.T, sock string, cli *dockerCLI, shared bool) (badTarget, []byte, func() int) {
	bt := badTarget{suffix: runSuffix(t)}
	bt.id = strings.TrimSpace(cli.MustDockerStdin("keep-me", "secret", "create", "--label", "k=v", "br_keep_"+bt.suffix, "-"))
	res := doRaw(t, sock, "GET", "/v1.41/secrets/"+bt.id, "", nil)
	if res.Status != 200 {
		t.Fatalf("GET /secrets/%s: %d %s", bt.id, res.Status, res.Body)
	}
	var s secretJSON
	if err := json.Unmarshal(res.Body, &s); err != nil {
		t.Fatalf("GET /secrets/%s: %v: %s", bt.id, err, res.Body)
	}
	bt.version = s.Version.Index
	count := func() int {
		n := 0
		for _, name := range strings.Fields(cli.MustDocker("secret", "ls", "--format", "{{.Name}}")) {
			if !shared || strings.Contains(name, bt.suffix) {
				n++
			}
		}
		return n
	}
	return bt, res.Body, count
}

func checkIntact(t *testing.T, sock string, bt badTarget, before []byte, count func() int, countBefore int) {
	t.Helper()
	res := doRaw(t, sock, "GET", "/v1.41/secrets/"+bt.id, "", nil)
	if res.Status != 200 || !bytes.Equal(res.Body, before) {
		t.Errorf("after the bad requests, GET /secrets/%s changed:\nbefore: %s\nafter:  %d %s", bt.id, before, res.Status, res.Body)
	}
	if n := count(); n != countBefore {
		t.Errorf("after the bad requests, secret ls lists %d secrets, before %d", n, countBefore)
	}
}

// TestBadRequests sends malformed requests over the raw API. hushd must answer
// each with a 4xx and a JSON {"message": ...} body, like Swarm (whose answers
// are recorded in testdata/swarm/badrequests.golden), and nothing may change.
func TestBadRequests(t *testing.T) {
	requireDockerCLI(t)
	cases := badRequests()
	var live map[string]badAnswer

	t.Run("swarm", func(t *testing.T) {
		requireSwarm(t)
		cli := swarmCLI(t)
		bt, before, count := setupBadTarget(t, swarmSocket(), cli, true)
		cleanupSwarmRun(t, bt.suffix, func() []string { return []string{bt.id} })
		countBefore := count()
		answers := map[string]badAnswer{}
		for _, c := range cases {
			answers[c.name] = sendBad(t, swarmSocket(), bt, c)
		}
		checkIntact(t, swarmSocket(), bt, before, count, countBefore)
		live = answers
		got := renderBadGolden(cases, answers)
		checkSwarmGolden(t, "badrequests", got)
	})

	t.Run("hushd", func(t *testing.T) {
		h := startHushd(t)
		g, ok := readGolden(t, "badrequests")
		if !ok {
			t.Fatalf("no golden file %s: run with -update against Swarm", goldenPath("badrequests"))
		}
		golden := parseBadGolden(g)
		bt, before, count := setupBadTarget(t, h.Socket, h.dockerCLI, false)
		countBefore := count()
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				got := sendBad(t, h.Socket, bt, c)
				if got.Status < 400 || got.Status > 499 {
					t.Errorf("%s %s: want a 4xx status, got %d (body %s)", c.method, c.path(bt), got.Status, got.Body)
				}
				if !strings.HasPrefix(got.ContentType, "application/json") || got.Message == "" {
					t.Errorf("%s %s: want a JSON body {\"message\": ...}, got Content-Type %q, body %s", c.method, c.path(bt), got.ContentType, got.Body)
				}
				type ref struct {
					what string
					a    badAnswer
					ok   bool
				}
				refs := []ref{{"golden " + goldenPath("badrequests"), golden[c.name], golden[c.name].Status != 0}}
				if a, ok := live[c.name]; ok {
					refs = append(refs, ref{"live Swarm", a, true})
				}
				for _, ref := range refs {
					if !ref.ok {
						t.Errorf("no answer for %s in %s: run with -update", c.name, ref.what)
						continue
					}
					var problem string
					if c.compare != nil {
						problem = c.compare(ref.a, got)
					} else if got.Status != ref.a.Status || got.Message != ref.a.Message {
						problem = fmt.Sprintf("want %d %q, got %d %q", ref.a.Status, ref.a.Message, got.Status, got.Message)
					}
					if problem != "" {
						t.Errorf("%s %s vs %s: %s", c.method, c.path(bt), ref.what, problem)
					}
				}
			})
		}
		checkIntact(t, h.Socket, bt, before, count, countBefore)
	})
}
