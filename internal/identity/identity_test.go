package identity

import (
	"bytes"
	"testing"
)

func TestNewIDShape(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 2000; i++ {
		id, err := NewID()
		if err != nil {
			t.Fatal(err)
		}
		if !Valid(id) {
			t.Fatalf("id %q is not 25 lowercase base-36 chars", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
}

func TestNewIDFromExtremes(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
	}{
		{"zeros", make([]byte, entropyBytes)},
		{"ones", bytes.Repeat([]byte{0xff}, entropyBytes)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := NewIDFrom(bytes.NewReader(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if !Valid(id) {
				t.Fatalf("id %q invalid", id)
			}
		})
	}
}

func TestNewIDShortReader(t *testing.T) {
	if _, err := NewIDFrom(bytes.NewReader([]byte{1, 2})); err == nil {
		t.Fatal("short entropy must fail")
	}
}

func TestValid(t *testing.T) {
	tests := map[string]bool{
		"abcdefghijklmnopqrstuvwxy":  true,
		"0123456789abcdefghijklmno":  true,
		"ABCDEFGHIJKLMNOPQRSTUVWXY":  false,
		"abc":                        false,
		"abcdefghijklmnopqrstuvwxyz": false,
		"abcdefghijklmnopqrstuvwx-":  false,
	}
	for in, want := range tests {
		if got := Valid(in); got != want {
			t.Errorf("Valid(%q) = %v, want %v", in, got, want)
		}
	}
}
