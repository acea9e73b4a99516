package api

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

func frame(stream byte, payload string) []byte {
	var hdr [8]byte
	hdr[0] = stream
	binary.BigEndian.PutUint32(hdr[4:], uint32(len(payload)))
	return append(hdr[:], payload...)
}

type piece struct {
	stream byte
	text   string
	cont   bool
}

func collect(t *testing.T, read func(io.Reader, pieceFunc) error, in []byte) ([]piece, error) {
	t.Helper()
	var got []piece
	err := read(bytes.NewReader(in), func(s byte, p []byte, cont bool) error {
		if len(p) > maxPiece || len(p) == 0 {
			t.Fatalf("piece of %d bytes", len(p))
		}
		got = append(got, piece{s, string(p), cont})
		return nil
	})
	return got, err
}

func TestReadFrames(t *testing.T) {
	long := strings.Repeat("x", maxPiece+10) + "\n"
	tests := []struct {
		name    string
		in      []byte
		want    []piece
		wantErr error
	}{
		{"lines", bytes.Join([][]byte{frame(1, "one\ntwo\n"), frame(2, "err\n"), frame(1, "partial")}, nil),
			[]piece{{1, "one\n", false}, {1, "two\n", false}, {2, "err\n", false}, {1, "partial", false}}, nil},
		{"continued across frames", append(frame(1, "par"), frame(1, "tial\n")...),
			[]piece{{1, "par", false}, {1, "tial\n", true}}, nil},
		{"long line in pieces", frame(2, long),
			[]piece{{2, long[:maxPiece], false}, {2, long[maxPiece:], true}}, nil},
		{"unknown stream as stdout", frame(7, "x\n"), []piece{{1, "x\n", false}}, nil},
		{"truncated header", frame(1, "x")[:5], nil, io.ErrUnexpectedEOF},
		{"truncated payload", frame(1, "hello")[:10], nil, io.ErrUnexpectedEOF},
		{"empty", nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := collect(t, readFrames, tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v", got)
			}
			for i := range tt.want {
				if got[i] != tt.want[i] {
					t.Fatalf("piece %d: got %+v want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestReadRaw(t *testing.T) {
	long := strings.Repeat("y", maxPiece+3)
	// What a TTY container prints, frame-like bytes included: never read
	// as a header.
	in := "hello-tty\r\n\xff\xff\xff\xffgarbage\r\n" + long + "\nend"
	got, err := collect(t, readRaw, []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []piece{{1, "hello-tty\r\n", false}, {1, "\xff\xff\xff\xffgarbage\r\n", false},
		{1, long[:maxPiece], false}, {1, long[maxPiece:] + "\n", true}, {1, "end", false}}
	if len(got) != len(want) {
		t.Fatalf("got %d pieces: %+v", len(got), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("piece %d: got %+v want %+v", i, got[i], want[i])
		}
	}
}

// endless is a reader of zero bytes that never ends (up to n).
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, io.EOF
	}
	k := min(int64(len(p)), e.n)
	clear(p[:k])
	e.n -= k
	return int(k), nil
}

// TestReadFramesBoundedMemory: a header claiming 4 GiB, followed by 64 MiB
// of output, is relayed in pieces without allocating what it claims.
func TestReadFramesBoundedMemory(t *testing.T) {
	hdr := []byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}
	body := &endless{n: 64 << 20}
	var relayed int64
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	err := readFrames(io.MultiReader(bytes.NewReader(hdr), body), func(_ byte, p []byte, _ bool) error {
		relayed += int64(len(p))
		return nil
	})
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err %v", err)
	}
	if relayed != 64<<20 {
		t.Fatalf("relayed %d bytes", relayed)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("allocated %d bytes to relay a 4 GiB frame header", alloc)
	}
}

func TestLogWriter(t *testing.T) {
	tests := []struct {
		name   string
		mux    bool
		ts     bool
		prefix string
		pieces []piece
		want   []string // bodies
	}{
		{"context", true, false, "CTX ", []piece{{2, "hello\n", false}}, []string{"CTX hello\n"}},
		{"no details", true, false, "", []piece{{1, "hello\n", false}}, []string{"hello\n"}},
		{"timestamp first", true, true, "CTX ", []piece{{1, "2026-01-01T00:00:00Z hello\n", false}},
			[]string{"2026-01-01T00:00:00Z CTX hello\n"}},
		{"continuation keeps its line's timestamp", true, true, "CTX ",
			[]piece{{1, "2026-01-01T00:00:00Z par", false}, {1, "tial more\n", true}},
			[]string{"2026-01-01T00:00:00Z CTX par", "2026-01-01T00:00:00Z CTX tial more\n"}},
		{"raw", false, false, "", []piece{{1, "hello-tty\r\n", false}}, []string{"hello-tty\r\n"}},
		{"raw with context", false, false, "CTX ", []piece{{1, "hello-tty\r\n", false}}, []string{"CTX hello-tty\r\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			lw := &logWriter{w: &b, mux: tt.mux, ts: tt.ts, prefix: []byte(tt.prefix)}
			for _, p := range tt.pieces {
				if err := lw.write(p.stream, []byte(p.text), p.cont); err != nil {
					t.Fatal(err)
				}
			}
			out := b.Bytes()
			for i, want := range tt.want {
				if !tt.mux {
					if !bytes.HasPrefix(out, []byte(want)) {
						t.Fatalf("raw body %d: %q, want %q", i, out, want)
					}
					out = out[len(want):]
					continue
				}
				n := int(binary.BigEndian.Uint32(out[4:8]))
				if out[0] != tt.pieces[i].stream || string(out[8:8+n]) != want {
					t.Fatalf("frame %d: %q, want %q", i, out[:8+n], want)
				}
				out = out[8+n:]
			}
			if len(out) != 0 {
				t.Fatalf("trailing %q", out)
			}
		})
	}
}

// FuzzReadFrames: whatever bytes the engine stream holds, the reader does
// not panic and passes on only bounded pieces of what it read; and the
// same bytes framed as payloads come back whole, in order, per stream.
func FuzzReadFrames(f *testing.F) {
	f.Add([]byte("hello\n"), uint8(1))
	f.Add([]byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 'x'}, uint8(2))
	f.Add(bytes.Join([][]byte{frame(1, "one\ntwo\n"), frame(2, "err\n")}, nil), uint8(3))
	f.Add([]byte("\xff\xff\xff\xffgarbage\r\n"), uint8(7))
	f.Add([]byte(strings.Repeat("z", maxPiece+1)), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		total := 0
		_ = readFrames(bytes.NewReader(data), func(s byte, p []byte, _ bool) error {
			if len(p) == 0 || len(p) > maxPiece || s != 1 && s != 2 {
				t.Fatalf("piece stream %d, %d bytes", s, len(p))
			}
			total += len(p)
			return nil
		})
		if total > len(data) {
			t.Fatalf("relayed %d bytes of %d", total, len(data))
		}
		_ = readRaw(bytes.NewReader(data), func(s byte, p []byte, _ bool) error {
			if len(p) == 0 || len(p) > maxPiece || s != 1 {
				t.Fatalf("raw piece stream %d, %d bytes", s, len(p))
			}
			return nil
		})
		// Round trip: cut data into payloads, alternate the streams.
		var framed []byte
		want := map[byte][]byte{}
		step := int(split) + 1
		for i, n := 0, 0; i < len(data); i, n = i+step, n+1 {
			p := data[i:min(i+step, len(data))]
			s := byte(1 + n%2)
			framed = append(framed, frame(s, string(p))...)
			want[s] = append(want[s], p...)
		}
		got := map[byte][]byte{}
		if err := readFrames(bytes.NewReader(framed), func(s byte, p []byte, _ bool) error {
			got[s] = append(got[s], p...)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for s := range byte(3) {
			if !bytes.Equal(got[s], want[s]) {
				t.Fatalf("stream %d: got %q want %q", s, got[s], want[s])
			}
		}
	})
}
