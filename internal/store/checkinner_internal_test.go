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
	kr, err := keyring.New(held)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		val  string
		ok   bool
	}{
		{"no sealed value", `{"name":"x"}`, true},
		{"held key", `{"sealed":{"kid":"` + held.ID + `"}}`, true},
		{"retired key", `{"sealed":{"kid":"0123456789abcdef"}}`, false},
		{"held then retired", `{"a":{"kid":"` + held.ID + `"},"b":{"kid":"0123456789abcdef"}}`, false},
		{"escaped in a user string", `{"label":"\"kid\":\"0123456789abcdef\""}`, true},
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
