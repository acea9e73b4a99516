package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestRotationEndpoints drives /hush/v1/secrets/{id}/… through the server:
// rotate, versions, rollback, destroy, and their refusals.
func TestRotationEndpoints(t *testing.T) {
	s := newTestServer(t)
	code, body := do(t, s, "POST", "/v1.47/secrets/create", `{"Name":"pw","Data":"b25l"}`)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	versionsOf := func() VersionsResponse {
		t.Helper()
		code, body := do(t, s, "GET", "/hush/v1/secrets/pw/versions", "")
		var vr VersionsResponse
		if code != 200 || json.Unmarshal([]byte(body), &vr) != nil {
			t.Fatalf("versions: %d %s", code, body)
		}
		return vr
	}
	rev := versionsOf().Version.Index
	tests := []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"unknown field", "POST", "/hush/v1/secrets/pw/rotate", `{"Data":"dHdv","Labels":{}}`, 400, `Labels\": rotate does not take it`},
		{"no body", "POST", "/hush/v1/secrets/pw/rotate", ``, 400, "EOF"},
		{"empty data", "POST", "/hush/v1/secrets/pw/rotate", `{}`, 400, "larger than 0"},
		{"bad version", "POST", "/hush/v1/secrets/pw/rotate?version=x", `{"Data":"dHdv"}`, 400, "invalid version"},
		{"stale version", "POST", "/hush/v1/secrets/pw/rotate?version=1", `{"Data":"dHdv"}`, 409, "update out of sequence"},
		{"rotate", "POST", "/hush/v1/secrets/pw/rotate?version=" + itoaU(rev), `{"Data":"dHdv"}`, 200, `"DataVersion":2,"Changed":true`},
		{"unchanged", "POST", "/hush/v1/secrets/pw/rotate", `{"Data":"dHdv"}`, 200, `"DataVersion":2,"Changed":false`},
		{"rollback", "POST", "/hush/v1/secrets/pw/rollback", `{}`, 200, `"DataVersion":3,"Changed":true`},
		{"rollback negative", "POST", "/hush/v1/secrets/pw/rollback", `{"To":-1}`, 400, "To must be"},
		{"destroy current", "DELETE", "/hush/v1/secrets/pw/versions/3", ``, 400, "FailedPrecondition desc = version 3 is the current version"},
		{"destroy bad", "DELETE", "/hush/v1/secrets/pw/versions/zero", ``, 400, "invalid version"},
		{"destroy", "DELETE", "/hush/v1/secrets/pw/versions/2", ``, 204, ""},
		{"unknown secret", "GET", "/hush/v1/secrets/nope/versions", ``, 404, "not found"},
	}
	for _, tt := range tests {
		code, body := do(t, s, tt.method, tt.path, tt.body)
		if code != tt.code || !strings.Contains(body, tt.want) {
			t.Errorf("%s: %d %s, want %d %q", tt.name, code, body, tt.code, tt.want)
		}
	}
	vr := versionsOf()
	if vr.DataVersion != 3 || len(vr.Versions) != 3 || !vr.Versions[1].Destroyed || !vr.Versions[2].Current || vr.Versions[0].Fingerprint != vr.Versions[2].Fingerprint {
		t.Errorf("versions after the calls: %+v", vr)
	}
	if strings.Contains(mustJSON(t, vr), "b25l") {
		t.Error("versions response carries data")
	}
}

func itoaU(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// FuzzRotateRequest: any body to rotate or rollback gets a 200, a 400 or a
// 409, never a 500, and no answer echoes the data sent.
func FuzzRotateRequest(f *testing.F) {
	for _, seed := range []string{`{"Data":"dHdv"}`, `{}`, `{"To":1}`, `{"Data":1}`, `{"Data":"dHdv"}{}`, `[`, ``, `{"To":-3}`} {
		f.Add(seed, true)
		f.Add(seed, false)
	}
	s := newTestServer(f)
	if code, body := do(f, s, "POST", "/v1.47/secrets/create", `{"Name":"pw","Data":"b25l"}`); code != http.StatusCreated {
		f.Fatalf("create: %d %s", code, body)
	}
	f.Fuzz(func(t *testing.T, body string, rotate bool) {
		path := "/hush/v1/secrets/pw/rollback"
		if rotate {
			path = "/hush/v1/secrets/pw/rotate"
		}
		code, resp := do(t, s, "POST", path, body)
		switch code {
		case 200, 400, 404, 409:
		default:
			t.Fatalf("%s %q: %d %s", path, body, code, resp)
		}
		if strings.Contains(resp, "b25l") || strings.Contains(resp, `"one"`) {
			t.Fatalf("answer echoes data: %s", resp)
		}
	})
}
