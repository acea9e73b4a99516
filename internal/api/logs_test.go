package api

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func frame(stream byte, payload string) []byte {
	var hdr [8]byte
	hdr[0] = stream
	binary.BigEndian.PutUint32(hdr[4:], uint32(len(payload)))
	return append(hdr[:], payload...)
}

func TestRelayFramesSplitsLines(t *testing.T) {
	in := append(frame(1, "one\ntwo\n"), frame(2, "err\n")...)
	in = append(in, frame(1, "partial")...)
	type line struct {
		stream byte
		text   string
	}
	var got []line
	err := relayFrames(bytes.NewReader(in), func(s byte, l []byte) error {
		got = append(got, line{s, string(l)})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []line{{1, "one\n"}, {1, "two\n"}, {2, "err\n"}, {1, "partial"}}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("line %d: got %v want %v", i, got[i], want[i])
		}
	}
	if err := relayFrames(bytes.NewReader(frame(1, "x")[:5]), func(byte, []byte) error { return nil }); err == nil {
		t.Fatal("a truncated header must be an error")
	}
}

func TestWriteFrameContext(t *testing.T) {
	tests := []struct {
		ts   bool
		line string
		want string
	}{
		{false, "hello\n", "CTX hello\n"},
		{true, "2026-01-01T00:00:00Z hello\n", "2026-01-01T00:00:00Z CTX hello\n"},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		if err := writeFrame(&b, 2, tt.ts, []byte("CTX "), []byte(tt.line)); err != nil {
			t.Fatal(err)
		}
		out := b.Bytes()
		if out[0] != 2 || int(binary.BigEndian.Uint32(out[4:8])) != len(out)-8 || string(out[8:]) != tt.want {
			t.Fatalf("frame %q", out)
		}
	}
}
