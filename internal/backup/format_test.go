package backup

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
)

// Tests use a tiny Argon2id cost and chunk size so that every tamper case
// runs in microseconds; the limits below admit exactly that.
var (
	testParams = Params{Time: 1, MemoryKiB: 64, Threads: 1}
	testLimits = Limits{Min: Params{Time: 1, MemoryKiB: 8, Threads: 1}, MaxTime: 2, MaxMemoryKiB: 256, MaxThreads: 4}
	testChunk  = minChunkSize
	testSecret = []byte("correct horse battery staple\n")
)

func testSealer(t testing.TB, secret []byte) *Sealer {
	t.Helper()
	s, err := NewSealer(secret, Config{Params: testParams, ChunkSize: testChunk})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func seal(t testing.TB, s *Sealer, plain []byte, piece int) []byte {
	t.Helper()
	var out bytes.Buffer
	w := s.NewWriter(&out)
	for p := plain; len(p) > 0; {
		n := min(piece, len(p))
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// readAll opens and reads a whole stream as a restore would.
func readAll(file, secret []byte, lim Limits) ([]byte, error) {
	r, _, err := Open(bytes.NewReader(file), secret, lim)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

func TestRoundTrip(t *testing.T) {
	s := testSealer(t, testSecret)
	for _, n := range []int{0, 1, testChunk - 1, testChunk, testChunk + 1, 3 * testChunk, 3*testChunk + 7} {
		for _, piece := range []int{1, 7, testChunk, 10 * testChunk} {
			t.Run(fmt.Sprintf("size%d_piece%d", n, piece), func(t *testing.T) {
				if piece == 1 && n > testChunk+1 {
					t.Skip("covered by larger pieces")
				}
				plain := randBytes(t, n)
				file := seal(t, s, plain, piece)
				chunks := n/testChunk + 1
				if want := headerSize + n + chunks*tagSize; len(file) != want {
					t.Fatalf("file is %d bytes, want %d (%d chunks)", len(file), want, chunks)
				}
				got, err := readAll(file, testSecret, testLimits)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, plain) {
					t.Fatal("plaintext differs after the round trip")
				}
				if bytes.Contains(file, plain[:min(n, 32)]) && n >= 16 {
					t.Fatal("plaintext appears in the file")
				}
			})
		}
	}
}

// chunkBounds returns the start offsets of every chunk of file.
func chunkBounds(fileLen int) []int {
	var b []int
	for off := headerSize; off < fileLen; off += testChunk + tagSize {
		b = append(b, off)
	}
	return b
}

func wantDamaged(t *testing.T, what string, file []byte) {
	t.Helper()
	got, err := readAll(file, testSecret, testLimits)
	if err == nil {
		t.Fatalf("%s: accepted (%d bytes of plaintext)", what, len(got))
	}
	if !errors.Is(err, ErrDamaged) && !errors.Is(err, ErrWrongKey) && !errors.Is(err, ErrWeakParams) {
		t.Fatalf("%s: error %v is not one of the backup errors", what, err)
	}
}

func TestTamperHeader(t *testing.T) {
	s := testSealer(t, testSecret)
	file := seal(t, s, randBytes(t, 2*testChunk+100), 4096)
	for i := 0; i < headerSize; i++ {
		for _, bit := range []byte{0x01, 0x80} {
			f := bytes.Clone(file)
			f[i] ^= bit
			wantDamaged(t, fmt.Sprintf("header byte %d ^ %#x", i, bit), f)
		}
	}
	// The fields a wrong guess would look like a wrong key for.
	f := bytes.Clone(file)
	f[len(magic)+12] ^= 1 // salt
	if _, err := readAll(f, testSecret, testLimits); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("changed salt: %v, want ErrWrongKey", err)
	}
	f = bytes.Clone(file)
	f[0] = 'X'
	if _, err := readAll(f, testSecret, testLimits); !errors.Is(err, ErrDamaged) {
		t.Fatalf("changed magic: %v, want ErrDamaged", err)
	}
}

func TestTamperChunks(t *testing.T) {
	s := testSealer(t, testSecret)
	file := seal(t, s, randBytes(t, 3*testChunk+100), 4096)
	bounds := chunkBounds(len(file))
	if len(bounds) != 4 {
		t.Fatalf("%d chunks, want 4", len(bounds))
	}
	for ci, start := range bounds {
		end := len(file)
		if ci+1 < len(bounds) {
			end = bounds[ci+1]
		}
		for _, off := range []int{start, (start + end) / 2, end - tagSize, end - 1} {
			f := bytes.Clone(file)
			f[off] ^= 0x20
			wantDamaged(t, fmt.Sprintf("chunk %d byte %d", ci, off-start), f)
		}
	}
}

func TestTruncate(t *testing.T) {
	s := testSealer(t, testSecret)
	plain := randBytes(t, 3*testChunk)
	// 3 full chunks and an empty final chunk: the final one is only a tag.
	file := seal(t, s, plain, 4096)
	var cuts []int
	for _, b := range chunkBounds(len(file)) {
		cuts = append(cuts, b-1, b, b+1, b+tagSize-1, b+tagSize, b+(testChunk+tagSize)/2)
	}
	cuts = append(cuts, 0, 1, headerSize-1, len(file)-1)
	for _, c := range cuts {
		if c < 0 || c >= len(file) {
			continue
		}
		wantDamaged(t, fmt.Sprintf("cut at %d of %d", c, len(file)), file[:c])
	}
	// The reader gives out chunks as they authenticate, but never io.EOF:
	// a truncated stream always ends in an error.
	r, _, err := Open(bytes.NewReader(file[:bounds3(file)]), testSecret, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("cut before the final chunk: %v", err)
	}
	if !bytes.HasPrefix(plain, got) {
		t.Fatal("the reader returned bytes that are not the stream's plaintext")
	}
}

// bounds3 is the offset of the (empty) final chunk of a 3-chunk stream.
func bounds3(file []byte) int { return len(file) - tagSize }

func TestReorderDropAppend(t *testing.T) {
	s := testSealer(t, testSecret)
	file := seal(t, s, randBytes(t, 3*testChunk+10), 4096)
	b := chunkBounds(len(file))
	hdr := file[:headerSize]
	chunk := func(i int) []byte {
		end := len(file)
		if i+1 < len(b) {
			end = b[i+1]
		}
		return file[b[i]:end]
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(append([][]byte{hdr}, parts...), nil) }
	other := seal(t, testSealer(t, testSecret), randBytes(t, 3*testChunk+10), 4096)
	cases := map[string][]byte{
		"swap 0 and 1":              cat(chunk(1), chunk(0), chunk(2), chunk(3)),
		"drop 1":                    cat(chunk(0), chunk(2), chunk(3)),
		"duplicate 1":               cat(chunk(0), chunk(1), chunk(1), chunk(2), chunk(3)),
		"final moved earlier":       cat(chunk(0), chunk(3)),
		"garbage after final":       append(bytes.Clone(file), 0),
		"final chunk twice":         cat(chunk(0), chunk(1), chunk(2), chunk(3), chunk(3)),
		"chunk from another backup": cat(chunk(0), other[b[1]:b[2]], chunk(2), chunk(3)),
		"header of another backup":  append(bytes.Clone(other[:headerSize]), file[headerSize:]...),
	}
	for name, f := range cases {
		wantDamaged(t, name, f)
	}
}

func TestWrongKey(t *testing.T) {
	s := testSealer(t, testSecret)
	file := seal(t, s, randBytes(t, 100), 100)
	for _, k := range [][]byte{[]byte("correct horse battery staple"), []byte("x"), bytes.Repeat([]byte{0}, 32)} {
		if _, err := readAll(file, k, testLimits); !errors.Is(err, ErrWrongKey) {
			t.Fatalf("key %q: %v, want ErrWrongKey", k, err)
		}
	}
	if _, err := readAll(file, nil, testLimits); err == nil {
		t.Fatal("empty key accepted")
	}
	if _, err := NewSealer(nil, Config{}); err == nil {
		t.Fatal("NewSealer accepted an empty key")
	}
}

func TestLimits(t *testing.T) {
	cases := []struct {
		name string
		p    Params
	}{
		{"below 64 MiB", Params{Time: 3, MemoryKiB: 32 << 10, Threads: 4}},
		{"over 1 GiB", Params{Time: 1, MemoryKiB: 2 << 20, Threads: 1}},
		{"too many passes", Params{Time: 100, MemoryKiB: 64 << 10, Threads: 1}},
		{"too many lanes", Params{Time: 1, MemoryKiB: 64 << 10, Threads: 200}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// A header is built without deriving, so huge parameters cost
			// nothing here: the reader must refuse them before deriving.
			h := Header{Params: c.p, ChunkSize: DefaultChunkSize}
			h.marshal()
			_, _, err := Open(bytes.NewReader(h.raw[:]), testSecret, DefaultLimits)
			if !errors.Is(err, ErrWeakParams) {
				t.Fatalf("%+v: %v, want ErrWeakParams", c.p, err)
			}
		})
	}
	if err := DefaultLimits.check(DefaultParams); err != nil {
		t.Fatalf("the default parameters fail the default limits: %v", err)
	}
}

// TestDefaultsRoundTrip runs the real 64 MiB derivation once each way.
func TestDefaultsRoundTrip(t *testing.T) {
	s, err := NewSealer(testSecret, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if h := s.Header(); h.Params != DefaultParams || h.ChunkSize != DefaultChunkSize || h.Params.MemoryKiB < 64<<10 {
		t.Fatalf("default header %+v", h)
	}
	plain := randBytes(t, DefaultChunkSize+5)
	var out bytes.Buffer
	w := s.NewWriter(&out)
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte{1}); err == nil {
		t.Fatal("write after Close accepted")
	}
	got, err := readAll(out.Bytes(), testSecret, DefaultLimits)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("default round trip: %v", err)
	}
}

// FuzzOpen feeds arbitrary files to the reader. Whatever it accepts must be
// the canonical encoding of what it returned: re-sealing the plaintext under
// the same header must give back the input byte for byte, so no changed file
// is ever accepted as some other plaintext.
func FuzzOpen(f *testing.F) {
	s := testSealer(f, testSecret)
	f.Add(seal(f, s, nil, 1))
	f.Add(seal(f, s, []byte("hello"), 5))
	f.Add(seal(f, s, bytes.Repeat([]byte("x"), 2*testChunk+3), 512))
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, file []byte) {
		r, h, err := Open(bytes.NewReader(file), testSecret, testLimits)
		if err != nil {
			return
		}
		plain, err := io.ReadAll(r)
		if err != nil {
			return
		}
		s2, err := newSealer(testSecret, Config{Params: h.Params, ChunkSize: h.ChunkSize}, h.Salt)
		if err != nil {
			t.Fatal(err)
		}
		if again := seal(t, s2, plain, len(plain)+1); !bytes.Equal(again, file) {
			t.Fatalf("accepted a file that is not the encoding of its plaintext (%d bytes in, %d re-sealed)", len(file), len(again))
		}
	})
}
