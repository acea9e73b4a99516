package backup

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/hush-secrets/hush/internal/errdefs"
	"golang.org/x/crypto/argon2"
)

// Errors a reader reports. Each is in errdefs.ErrInvalidArgument: the file
// given is what is wrong, not the system.
var (
	// ErrWrongKey means the key file does not open this backup.
	ErrWrongKey error = &errdefs.Error{Category: errdefs.ErrInvalidArgument, Msg: "the key file does not open this backup (wrong key file)"}
	// ErrDamaged means the file was changed, truncated or reordered, or is
	// not a hush backup at all.
	ErrDamaged error = &errdefs.Error{Category: errdefs.ErrInvalidArgument, Msg: "backup file is damaged"}
	// ErrWeakParams means the header asks for less work than the reader's
	// limits demand (or for more memory or time than they allow).
	ErrWeakParams error = &errdefs.Error{Category: errdefs.ErrInvalidArgument, Msg: "backup file's key derivation parameters are outside the allowed range"}
)

const (
	magic   = "HUSHBKUP"
	version = 1
	kdfID   = 1 // Argon2id
	// DefaultChunkSize is the plaintext size of every chunk but the last.
	DefaultChunkSize = 64 << 10
	minChunkSize     = 1 << 10
	maxChunkSize     = 1 << 20
	saltSize         = 16
	checkSize        = 16
	keySize          = 32
	tagSize          = 16
	headerSize       = len(magic) + 1 + 1 + 4 + 4 + 1 + 1 + saltSize + 4 + checkSize
)

// Params are the Argon2id parameters: passes, memory in KiB, and lanes.
type Params struct {
	Time      uint32
	MemoryKiB uint32
	Threads   uint8
}

// DefaultParams are RFC 9106's second recommendation (64 MiB, 3 passes,
// 4 lanes): memory-hard enough that a passphrase file is as usable as a
// random key, and quick (well under a second) on a small machine.
var DefaultParams = Params{Time: 3, MemoryKiB: 64 << 10, Threads: 4}

// Limits bound what a header may ask for. A reader checks them before it
// derives anything, so a hostile file can neither weaken the KDF below Min
// nor make the reader allocate more than MaxMemoryKiB.
type Limits struct {
	Min          Params
	MaxTime      uint32
	MaxMemoryKiB uint32
	MaxThreads   uint8
}

// DefaultLimits accept what hush writes and what a stronger future default
// might use, and refuse anything weaker than 64 MiB.
var DefaultLimits = Limits{
	Min:          Params{Time: 1, MemoryKiB: 64 << 10, Threads: 1},
	MaxTime:      16,
	MaxMemoryKiB: 1 << 20, // 1 GiB
	MaxThreads:   16,
}

func (l Limits) check(p Params) error {
	if p.Time < l.Min.Time || p.Time > l.MaxTime ||
		p.MemoryKiB < l.Min.MemoryKiB || p.MemoryKiB > l.MaxMemoryKiB ||
		p.Threads < max(l.Min.Threads, 1) || p.Threads > l.MaxThreads {
		return fmt.Errorf("%w: time %d, memory %d KiB, threads %d", ErrWeakParams, p.Time, p.MemoryKiB, p.Threads)
	}
	return nil
}

// Header is the unencrypted start of a backup file.
type Header struct {
	Params    Params
	Salt      [saltSize]byte
	ChunkSize int
	check     [checkSize]byte
	raw       [headerSize]byte
}

func (h *Header) marshal() {
	b := h.raw[:0]
	b = append(b, magic...)
	b = append(b, version, kdfID)
	b = binary.BigEndian.AppendUint32(b, h.Params.Time)
	b = binary.BigEndian.AppendUint32(b, h.Params.MemoryKiB)
	b = append(b, h.Params.Threads, saltSize)
	b = append(b, h.Salt[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(h.ChunkSize))
	_ = append(b, h.check[:]...)
}

// parseHeader checks the fixed fields only; the caller checks the
// parameters against its limits.
func parseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) != headerSize || string(b[:len(magic)]) != magic {
		return h, fmt.Errorf("%w: not a hush backup (bad magic)", ErrDamaged)
	}
	p := b[len(magic):]
	if p[0] != version {
		return h, fmt.Errorf("%w: format version %d is not one this hush reads (it reads %d)", ErrDamaged, p[0], version)
	}
	if p[1] != kdfID {
		return h, fmt.Errorf("%w: unknown key derivation %d", ErrDamaged, p[1])
	}
	h.Params.Time = binary.BigEndian.Uint32(p[2:])
	h.Params.MemoryKiB = binary.BigEndian.Uint32(p[6:])
	h.Params.Threads = p[10]
	if p[11] != saltSize {
		return h, fmt.Errorf("%w: salt length %d", ErrDamaged, p[11])
	}
	p = p[12:]
	copy(h.Salt[:], p)
	p = p[saltSize:]
	cs := binary.BigEndian.Uint32(p)
	if cs < minChunkSize || cs > maxChunkSize {
		return h, fmt.Errorf("%w: chunk size %d", ErrDamaged, cs)
	}
	h.ChunkSize = int(cs)
	copy(h.check[:], p[4:])
	copy(h.raw[:], b)
	return h, nil
}

// key is a derived backup key bound to one header.
type key struct {
	aead cipher.AEAD
	hh   [sha256.Size]byte
}

// derive runs Argon2id over secret. The first 32 bytes of its output are
// the AES key; the next 16 are the key check, which reveals nothing about
// the first 32.
func derive(secret []byte, h *Header) (enc []byte, check [checkSize]byte) {
	out := argon2.IDKey(secret, h.Salt[:], h.Params.Time, h.Params.MemoryKiB, h.Params.Threads, keySize+checkSize)
	copy(check[:], out[keySize:])
	enc = out[:keySize]
	wipe(out[keySize:])
	return enc, check
}

func newKey(enc []byte, h *Header) (*key, error) {
	defer wipe(enc)
	blk, err := aes.NewCipher(enc)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	return &key{aead: aead, hh: sha256.Sum256(h.raw[:])}, nil
}

func (k *key) nonce(i uint64, final bool) []byte {
	var n [12]byte
	if final {
		n[3] = 1
	}
	binary.BigEndian.PutUint64(n[4:], i)
	return n[:]
}

func (k *key) aad(dst []byte, i uint64, final bool) []byte {
	dst = append(dst[:0], k.hh[:]...)
	dst = binary.BigEndian.AppendUint64(dst, i)
	if final {
		return append(dst, 1)
	}
	return append(dst, 0)
}

// Sealer is a derived key and header ready to write one backup file.
// Deriving is the slow, memory-hard step; a Sealer lets a caller do it
// before it commits to writing anything.
type Sealer struct {
	h Header
	k *key
}

// Config chooses the KDF parameters and chunk size of a new backup; zero
// fields take the defaults.
type Config struct {
	Params    Params
	ChunkSize int
}

// NewSealer draws a fresh salt and derives the key of a new backup from
// secret (the contents of a key file). The caller wipes secret.
func NewSealer(secret []byte, c Config) (*Sealer, error) {
	var salt [saltSize]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return nil, fmt.Errorf("backup: reading random bytes: %w", err)
	}
	return newSealer(secret, c, salt)
}

func newSealer(secret []byte, c Config, salt [saltSize]byte) (*Sealer, error) {
	if len(secret) == 0 {
		return nil, errdefs.BadRequest("the backup key is empty")
	}
	if c.Params == (Params{}) {
		c.Params = DefaultParams
	}
	if c.ChunkSize == 0 {
		c.ChunkSize = DefaultChunkSize
	}
	if c.ChunkSize < minChunkSize || c.ChunkSize > maxChunkSize || c.Params.Threads == 0 || c.Params.Time == 0 {
		return nil, errors.New("backup: invalid chunk size or KDF parameters")
	}
	h := Header{Params: c.Params, Salt: salt, ChunkSize: c.ChunkSize}
	enc, check := derive(secret, &h)
	h.check = check
	h.marshal()
	k, err := newKey(enc, &h)
	if err != nil {
		return nil, err
	}
	return &Sealer{h: h, k: k}, nil
}

// Header is the header the Sealer writes.
func (s *Sealer) Header() Header { return s.h }

// Writer encrypts a backup stream. Close writes the final chunk; a stream
// that is not closed is, to every reader, truncated.
type Writer struct {
	w      io.Writer
	k      *key
	size   int
	buf    []byte
	out    []byte
	ad     []byte
	idx    uint64
	err    error
	header bool
	raw    [headerSize]byte
}

// NewWriter returns a Writer that writes the header and chunks to w. Each
// Sealer must write one stream only (its nonces restart at zero).
func (s *Sealer) NewWriter(w io.Writer) *Writer {
	return &Writer{
		w: w, k: s.k, size: s.h.ChunkSize,
		buf: make([]byte, 0, s.h.ChunkSize),
		out: make([]byte, 0, s.h.ChunkSize+tagSize),
		raw: s.h.raw,
	}
}

func (w *Writer) start() error {
	if !w.header {
		w.header = true
		if _, err := w.w.Write(w.raw[:]); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writer) seal(final bool) error {
	if err := w.start(); err != nil {
		return err
	}
	w.ad = w.k.aad(w.ad, w.idx, final)
	w.out = w.k.aead.Seal(w.out[:0], w.k.nonce(w.idx, final), w.buf, w.ad)
	wipe(w.buf)
	w.buf = w.buf[:0]
	w.idx++
	_, err := w.w.Write(w.out)
	return err
}

// Write buffers p and seals every full chunk.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		c := min(len(p), w.size-len(w.buf))
		w.buf = append(w.buf, p[:c]...)
		p, n = p[c:], n+c
		if len(w.buf) == w.size {
			if w.err = w.seal(false); w.err != nil {
				return n, w.err
			}
		}
	}
	return n, nil
}

// Close seals what is buffered (possibly nothing) as the final chunk. It
// does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	w.err = w.seal(true)
	if w.err == nil {
		w.err = errors.New("backup: write after Close")
		return nil
	}
	return w.err
}

// Reader decrypts and authenticates a backup stream. Read returns only
// authenticated plaintext, and io.EOF only after the final chunk
// authenticated and nothing follows it.
type Reader struct {
	r     *bufio.Reader
	k     *key
	size  int
	ct    []byte
	plain []byte
	off   int
	ad    []byte
	idx   uint64
	done  bool
	err   error
}

// Open reads and checks the header, derives the key from secret (refusing
// parameters outside lim before deriving), and returns a Reader of the
// plaintext. A wrong key is reported here, as ErrWrongKey.
func Open(r io.Reader, secret []byte, lim Limits) (*Reader, Header, error) {
	var raw [headerSize]byte
	if _, err := io.ReadFull(r, raw[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, Header{}, fmt.Errorf("%w: shorter than a backup header", ErrDamaged)
		}
		return nil, Header{}, err
	}
	h, err := parseHeader(raw[:])
	if err != nil {
		return nil, Header{}, err
	}
	if err := lim.check(h.Params); err != nil {
		return nil, Header{}, err
	}
	if len(secret) == 0 {
		return nil, Header{}, errdefs.BadRequest("the backup key is empty")
	}
	enc, check := derive(secret, &h)
	if subtle.ConstantTimeCompare(check[:], h.check[:]) != 1 {
		wipe(enc)
		return nil, Header{}, ErrWrongKey
	}
	k, err := newKey(enc, &h)
	if err != nil {
		return nil, Header{}, err
	}
	return &Reader{
		r: bufio.NewReaderSize(r, 64<<10), k: k, size: h.ChunkSize,
		ct: make([]byte, h.ChunkSize+tagSize),
	}, h, nil
}

func (r *Reader) open(ct []byte, final bool) ([]byte, error) {
	r.ad = r.k.aad(r.ad, r.idx, final)
	return r.k.aead.Open(r.plain[:0], r.k.nonce(r.idx, final), ct, r.ad)
}

// next reads, authenticates and decrypts the next chunk.
func (r *Reader) next() error {
	n, err := io.ReadFull(r.r, r.ct)
	switch {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: it ends after chunk %d without its final chunk (truncated)", ErrDamaged, r.idx)
	case errors.Is(err, io.ErrUnexpectedEOF):
		// A short chunk can only be the final one.
		if n < tagSize {
			return fmt.Errorf("%w: chunk %d is cut short (truncated)", ErrDamaged, r.idx)
		}
		pt, oerr := r.open(r.ct[:n], true)
		if oerr != nil {
			return fmt.Errorf("%w: chunk %d does not authenticate (changed or truncated)", ErrDamaged, r.idx)
		}
		r.plain, r.done = pt, true
		return nil
	case err != nil:
		return err
	}
	_, perr := r.r.Peek(1)
	last := errors.Is(perr, io.EOF)
	if perr != nil && !last {
		return perr
	}
	pt, oerr := r.open(r.ct, last)
	if oerr == nil {
		r.plain, r.done = pt, last
		r.idx++
		return nil
	}
	// Say which way it is broken: a full chunk that is valid as the other
	// kind means chunks were dropped after it (or data appended after the
	// end), not that its bytes changed.
	if _, alt := r.open(r.ct, !last); alt == nil {
		if last {
			return fmt.Errorf("%w: it ends after chunk %d without its final chunk (truncated)", ErrDamaged, r.idx)
		}
		return fmt.Errorf("%w: data follows the final chunk %d", ErrDamaged, r.idx)
	}
	return fmt.Errorf("%w: chunk %d does not authenticate (changed, reordered or truncated)", ErrDamaged, r.idx)
}

// Read returns authenticated plaintext.
func (r *Reader) Read(p []byte) (int, error) {
	for r.off >= len(r.plain) {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			if _, err := r.r.Peek(1); !errors.Is(err, io.EOF) {
				if err == nil {
					r.err = fmt.Errorf("%w: data follows the final chunk", ErrDamaged)
				} else {
					r.err = err
				}
				return 0, r.err
			}
			r.err = io.EOF
			return 0, io.EOF
		}
		wipe(r.plain)
		r.plain, r.off = r.plain[:0], 0
		if err := r.next(); err != nil {
			r.err = err
			return 0, err
		}
	}
	n := copy(p, r.plain[r.off:])
	r.off += n
	return n, nil
}

// Wipe clears the last decrypted chunk held by the reader.
func (r *Reader) Wipe() { wipe(r.plain[:cap(r.plain)]) }

func wipe(b []byte) {
	clear(b)
}
