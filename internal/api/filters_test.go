package api

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// FuzzParseFilters: no `filters` value panics the parser or yields a 5xx;
// what it accepts names only allowed keys, and printed back in the current
// form it parses to the same set.
func FuzzParseFilters(f *testing.F) {
	for _, s := range []string{
		``, `null`, `{}`, `[]`, `{"name":{"a":true,"b":true}}`, `{"name":["a"]}`, `{"label":{"k=v":true}}`,
		`{"bogus":{"a":true}}`, `{"name":{"a":false}}`, `{"name":null}`, `{"name":[null]}`, `{"name":{"a":1}}`,
		`{"role":{"worker":true},"node.label":{"a=b":true}}`, "{\"name\":{\"\\u0000\":true}}", `{"name":"x"}`,
	} {
		f.Add(s)
	}
	allowed := []string{"name", "label", "role", "node.label"}
	f.Fuzz(func(t *testing.T, raw string) {
		args, err := parseFilters(raw, allowed...)
		if err != nil {
			if !errdefs.Is(err, errdefs.ErrInvalidArgument) || statusOf(err) != 400 {
				t.Fatalf("%q: error %v is not a 400", raw, err)
			}
			if _, ok := message(err); !ok {
				t.Fatalf("%q: error text not meant for clients", raw)
			}
			return
		}
		for k := range args {
			if !slices.Contains(allowed, k) {
				t.Fatalf("%q: accepted key %q", raw, k)
			}
		}
		_ = args.labels()
		enc, err := json.Marshal(args)
		if err != nil {
			t.Fatal(err)
		}
		back, err := parseFilters(string(enc), allowed...)
		if err != nil {
			t.Fatalf("%q: printed back as %s: %v", raw, enc, err)
		}
		if len(args) == 0 && len(back) == 0 {
			return
		}
		if !reflect.DeepEqual(normFilters(args), normFilters(back)) {
			t.Fatalf("%q: %v round-trips as %v", raw, args, back)
		}
	})
}

// normFilters treats a key with no values like a key with an empty set.
func normFilters(f filterArgs) filterArgs {
	out := filterArgs{}
	for k, vs := range f {
		m := map[string]bool{}
		for v, on := range vs {
			m[v] = on
		}
		out[k] = m
	}
	return out
}
