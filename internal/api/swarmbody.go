package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/moby/moby/api/types/swarm"
)

// The bodies of POST /swarm/init and /swarm/update, decoded so that the
// CA signing key never becomes a Go string (which cannot be wiped): the
// whole body is read into one buffer, the key is unquoted from it into
// its own bytes, and both are wiped once the call is done.

// secretText is a JSON string decoded into bytes.
type secretText []byte

func (s *secretText) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	v, err := unquoteJSON(b)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

type caConfigBody struct {
	swarm.CAConfig
	SigningCAKey secretText
}

type specBody struct {
	swarm.Spec
	CAConfig caConfigBody
}

// spec is the decoded spec without its key.
func (b *specBody) spec() swarm.Spec {
	s := b.Spec
	s.CAConfig = b.CAConfig.CAConfig
	s.CAConfig.SigningCAKey = ""
	return s
}

type initBody struct {
	swarm.InitRequest
	// DefaultAddrPool is read as text for dockerd 20.10's error on a bad
	// pool (the API type would fail with a JSON decoding error).
	DefaultAddrPool []string
	Spec            specBody
}

// decodeSecretBody reads r's JSON body into v, with dockerd's texts for
// the common mistakes. The returned buffer holds the body: the caller
// wipes it.
func decodeSecretBody(r *http.Request, v any) ([]byte, error) {
	buf, err := io.ReadAll(r.Body)
	if err != nil {
		keyring.Wipe(buf)
		return nil, err
	}
	if len(bytes.TrimSpace(buf)) == 0 {
		keyring.Wipe(buf)
		return nil, errdefs.BadRequest("got EOF while reading request body")
	}
	if err := json.Unmarshal(buf, v); err != nil {
		keyring.Wipe(buf)
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Struct != "" && te.Type != nil {
			leaf := te.Field[strings.LastIndexByte(te.Field, '.')+1:]
			return nil, errdefs.BadRequest("json: cannot unmarshal %s into Go struct field %s.%s of type %s", te.Value, te.Struct, leaf, te.Type)
		}
		return nil, errdefs.BadRequest("%s", err.Error())
	}
	return buf, nil
}

// decodeInit reads an init request; the key is returned apart.
func decodeInit(r *http.Request) (swarm.InitRequest, []byte, error) {
	var b initBody
	buf, err := decodeSecretBody(r, &b)
	keyring.Wipe(buf)
	if err != nil {
		keyring.Wipe(b.Spec.CAConfig.SigningCAKey)
		return swarm.InitRequest{}, nil, err
	}
	req := b.InitRequest
	req.Spec = b.Spec.spec()
	pools, err := cluster.ParseAddrPools(b.DefaultAddrPool)
	if err != nil {
		keyring.Wipe(b.Spec.CAConfig.SigningCAKey)
		return swarm.InitRequest{}, nil, err
	}
	req.DefaultAddrPool = pools
	return req, b.Spec.CAConfig.SigningCAKey, nil
}

// decodeSpec reads an update's spec; the key is returned apart.
func decodeSpec(r *http.Request) (swarm.Spec, []byte, error) {
	var b specBody
	buf, err := decodeSecretBody(r, &b)
	keyring.Wipe(buf)
	if err != nil {
		keyring.Wipe(b.CAConfig.SigningCAKey)
		return swarm.Spec{}, nil, err
	}
	return b.spec(), b.CAConfig.SigningCAKey, nil
}

// unquoteJSON decodes a JSON string literal into new bytes, as
// encoding/json would into a string (invalid escapes refused, lone
// surrogates and invalid UTF-8 replaced by U+FFFD).
func unquoteJSON(b []byte) ([]byte, error) {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return nil, errors.New("json: signing CA key must be a string")
	}
	b = b[1 : len(b)-1]
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		c := b[i]
		switch {
		case c == '\\':
			if i+1 >= len(b) {
				return nil, errBadString
			}
			i++
			switch b[i] {
			case '"', '\\', '/':
				out = append(out, b[i])
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, ok := hex4(b[i+1:])
				if !ok {
					return nil, errBadString
				}
				i += 4
				if utf16.IsSurrogate(r) {
					r2, ok := rune(-1), false
					if i+6 < len(b) && b[i+1] == '\\' && b[i+2] == 'u' {
						r2, ok = hex4(b[i+3:])
					}
					if dec := utf16.DecodeRune(r, r2); ok && dec != utf8.RuneError {
						r = dec
						i += 6
					} else {
						r = utf8.RuneError
					}
				}
				out = utf8.AppendRune(out, r)
			default:
				return nil, errBadString
			}
			i++
		case c == '"' || c < 0x20:
			return nil, errBadString
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				out = utf8.AppendRune(out, utf8.RuneError)
			} else {
				out = append(out, b[i:i+size]...)
			}
			i += size
		}
	}
	return out, nil
}

var errBadString = errors.New("json: invalid string in signing CA key")

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}
