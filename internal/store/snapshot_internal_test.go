package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// endWith is a reader that ends with err instead of io.EOF.
type endWith struct {
	r   io.Reader
	err error
}

func (e endWith) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if errors.Is(err, io.EOF) {
		return n, e.err
	}
	return n, err
}

// TestSnapshotReaderHash: only a stream whose last 32 bytes are the hash of
// the rest reads to io.EOF, whatever the read sizes, and however the
// transport ends it.
func TestSnapshotReaderHash(t *testing.T) {
	db := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	sum := sha256.Sum256(db)
	good := append(bytes.Clone(db), sum[:]...)
	cases := []struct {
		name   string
		stream []byte
		end    error
		ctx    func() context.Context
		ok     bool
	}{
		{"complete, EOF", good, io.EOF, context.Background, true},
		{"complete, in-process canceled", good, context.Canceled, context.Background, true},
		{"cut by one byte", good[:len(good)-1], io.EOF, context.Background, false},
		{"cut inside the data", good[:1000], context.Canceled, context.Background, false},
		{"empty", nil, io.EOF, context.Background, false},
		{"changed byte", append([]byte{'X'}, good[1:]...), io.EOF, context.Background, false},
		{"caller canceled", good, context.Canceled, func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, false},
	}
	for _, c := range cases {
		for _, wrap := range []func(io.Reader) io.Reader{iotest.OneByteReader, iotest.HalfReader, func(r io.Reader) io.Reader { return r }} {
			sr := &snapshotReader{ctx: c.ctx(), r: endWith{wrap(bytes.NewReader(c.stream)), c.end}, c: io.NopCloser(nil), h: sha256.New()}
			got, err := io.ReadAll(sr)
			if c.ok && (err != nil || !bytes.Equal(got, good)) {
				t.Errorf("%s: %v (%d bytes)", c.name, err, len(got))
			}
			if !c.ok && err == nil {
				t.Errorf("%s: read to EOF", c.name)
			}
		}
	}
}
