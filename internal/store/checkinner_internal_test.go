package store

import (
	"errors"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
)

func TestCheckInner(t *testing.T) {
	held, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	retired, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(retired)
	if err != nil {
		t.Fatal(err)
	}
	kr.Rotate(held)
	if err := kr.Forget(retired.ID); err != nil {
		t.Fatal(err)
	}
	const unknown = "0123456789abcdef"
	for _, tc := range []struct {
		name string
		val  string
		ok   bool
	}{
		{"no sealed value", `{"name":"x"}`, true},
		{"held key", `{"sealed":{"kid":"` + held.ID + `"}}`, true},
		{"retired key", `{"sealed":{"kid":"` + retired.ID + `"}}`, false},
		{"held then retired", `{"a":{"kid":"` + held.ID + `"},"b":{"kid":"` + retired.ID + `"}}`, false},
		// Never held (another keyring's): not this check's business.
		{"unknown key", `{"sealed":{"kid":"` + unknown + `"}}`, true},
		{"escaped in a user string", `{"label":"\"kid\":\"` + retired.ID + `\""}`, true},
		{"unterminated", `{"kid":"0123`, true},
		{"not JSON", "svc-id", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkInner(kr, []byte(tc.val))
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrRetiredKey)) {
				t.Fatalf("checkInner(%s) = %v, want ok %v", tc.val, err, tc.ok)
			}
		})
	}
}
