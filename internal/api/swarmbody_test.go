package api

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestUnquoteJSONMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{
		`""`, `"abc"`, `"-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n"`,
		`"\"\\\/\b\f\n\r\t"`, `"\u0041\u00e9\u20ac"`, `"\ud83d\ude00"`, `"\ud83d"`, `"\ud83dx"`, `"\ude00\ud83d"`,
		`"\ud83d\u0041"`, "\"caf\xc3\xa9\"", "\"bad \xff byte\"", `"\u0000"`,
	} {
		var want string
		if err := json.Unmarshal([]byte(s), &want); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		got, err := unquoteJSON([]byte(s))
		if err != nil || string(got) != want {
			t.Errorf("%s: got %q %v, want %q", s, got, err, want)
		}
	}
	for _, bad := range []string{``, `"`, `abc`, `"\x"`, `"\u12"`, "\"a\x01\"", `"a"b"`} {
		if _, err := unquoteJSON([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzUnquoteJSON(f *testing.F) {
	for _, s := range []string{`"abc"`, `"\ud83d\ude00"`, `"\n\u00e9"`, "\"\xff\"", `"\ud800\udc00"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want string
		jerr := json.Unmarshal(b, &want)
		got, err := unquoteJSON(b)
		if jerr != nil || len(b) == 0 || b[0] != '"' || b[len(b)-1] != '"' {
			// Only JSON strings reach unquoteJSON (the decoder checks
			// the body first); anything else must not panic.
			return
		}
		if err != nil || string(got) != want {
			t.Fatalf("%q: got %q %v, want %q", b, got, err, want)
		}
	})
}

// The key is taken out of the spec, and the spec keeps everything else.
func TestDecodeSpecTakesKeyApart(t *testing.T) {
	body := `{"Name":"default","Orchestration":{"TaskHistoryRetentionLimit":3},"CAConfig":{"NodeCertExpiry":172800000000000,"SigningCACert":"CERT","SigningCAKey":"-----BEGIN EC PRIVATE KEY-----\nSECRET\n-----END EC PRIVATE KEY-----\n","ForceRotate":2}}`
	r := httptest.NewRequest("POST", "/swarm/update?version=1", strings.NewReader(body))
	spec, key, err := decodeSpec(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(key) != "-----BEGIN EC PRIVATE KEY-----\nSECRET\n-----END EC PRIVATE KEY-----\n" {
		t.Fatalf("key %q", key)
	}
	if spec.CAConfig.SigningCAKey != "" {
		t.Fatal("the key stayed in the spec as a string")
	}
	if spec.CAConfig.SigningCACert != "CERT" || spec.CAConfig.ForceRotate != 2 || spec.CAConfig.NodeCertExpiry != 48*3600e9 ||
		*spec.Orchestration.TaskHistoryRetentionLimit != 3 || spec.Name != "default" {
		t.Fatalf("spec lost fields: %+v", spec)
	}
}

func TestDecodeInitPools(t *testing.T) {
	for body, want := range map[string]string{
		`{"ListenAddr":"0.0.0.0:2377","DefaultAddrPool":["10.20.0.0/16"],"SubnetSize":24}`: "",
		`{"ListenAddr":"0.0.0.0:2377","DefaultAddrPool":["10.20.0.0/33"]}`:                 "invalid base pool 10.20.0.0/33: invalid CIDR address: 10.20.0.0/33",
		`{"ListenAddr":"0.0.0.0:2377","DefaultAddrPool":"10.0.0.0/8"}`:                     "json: cannot unmarshal string into Go struct field initBody.DefaultAddrPool of type []string",
		``: "got EOF while reading request body",
	} {
		r := httptest.NewRequest("POST", "/swarm/init", strings.NewReader(body))
		req, key, err := decodeInit(r)
		if want == "" {
			if err != nil || len(req.DefaultAddrPool) != 1 || req.DefaultAddrPool[0].String() != "10.20.0.0/16" || key != nil {
				t.Errorf("%s: %+v %v", body, req, err)
			}
			continue
		}
		if err == nil || err.Error() != want {
			t.Errorf("%s: got %v, want %q", body, err, want)
		}
	}
}

func TestSecretTextNull(t *testing.T) {
	var b specBody
	if err := json.Unmarshal([]byte(`{"CAConfig":{"SigningCAKey":null}}`), &b); err != nil || b.CAConfig.SigningCAKey != nil {
		t.Fatalf("%v %q", err, b.CAConfig.SigningCAKey)
	}
	if err := json.Unmarshal([]byte(`{"CAConfig":{"SigningCAKey":5}}`), &b); err == nil {
		t.Fatal("a number taken as a key")
	}
}
