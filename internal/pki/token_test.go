package pki

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// swarmRootPEM is the root CA of the Docker Swarm on this machine (`docker
// swarm ca`), and swarmDigest the CA part of its join tokens, as read from
// `docker swarm join-token -q worker`: Swarm's digest is SHA-256 of the
// PEM bytes, which hush must match.
const (
	swarmRootPEM = `-----BEGIN CERTIFICATE-----
MIIBajCCARCgAwIBAgIUc+YlttKalJ1ctGeUMeR3RQUlGzYwCgYIKoZIzj0EAwIw
EzERMA8GA1UEAxMIc3dhcm0tY2EwHhcNMjYxMjA2MjEyNzAwWhcNNDYxMjAxMjEy
NzAwWjATMREwDwYDVQQDEwhzd2FybS1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABNBrvkggajtMTjqn8IftbxcfNnLRm6WPc4qaeWTY4j+BN3qWDNqa6DJIAq4w
356d6tTnHRSPsnN6aNwQrvulfbOjQjBAMA4GA1UdDwEB/wQEAwIBBjAPBgNVHRMB
Af8EBTADAQH/MB0GA1UdDgQWBBSA/AuV7giCV9xS0OTABZ1av426LTAKBggqhkjO
PQQDAgNIADBFAiAMRA2oozUEbfdaaz02H/hg4f5rJEQwQKGizGoQU8YesQIhAMNM
Oqnj8Lwy8zRGE/hErnpltTCUWHWa7P32DBoiH+b7
-----END CERTIFICATE-----
`
	swarmDigest = "3m4y8joqjo5gw7dq52kyfirbbxwdxmnquzaei4ye9hil4c83cz"
	// A secret of the right shape (the real one is not recorded).
	someSecret = "0123456789abcdefghijklmno"
)

var tokenRE = regexp.MustCompile(`^SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}$`)

func TestSwarmTokenVerifiesSwarmCA(t *testing.T) {
	tok, err := ParseToken("SWMTKN-1-" + swarmDigest + "-" + someSecret)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := VerifyCA(tok, []byte(swarmRootPEM), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatalf("Swarm's own token does not verify Swarm's CA: %v", err)
	}
	if len(roots) != 1 || roots[0].Subject.CommonName != RootCN {
		t.Fatalf("roots %v", roots)
	}
	// And hush's encoding of that CA's digest is Swarm's text.
	tokHush, err := NewToken([]byte(swarmRootPEM))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(tokHush, "-")[2]; got != swarmDigest {
		t.Fatalf("hush encodes the digest as %s, Swarm as %s", got, swarmDigest)
	}
}

func TestNewTokenRoundTrip(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	seen := map[string]bool{}
	for range 20 {
		s, err := NewToken(ca.pem)
		if err != nil {
			t.Fatal(err)
		}
		if !tokenRE.MatchString(s) || seen[s] {
			t.Fatalf("token %q: bad shape or repeated", s)
		}
		seen[s] = true
		tok, err := ParseToken(s)
		if err != nil {
			t.Fatal(err)
		}
		// Independently: base36 of SHA-256 of the PEM, zero-padded to 50.
		sum := sha256.Sum256(ca.pem)
		want := new(big.Int).SetBytes(sum[:]).Text(36)
		want = strings.Repeat("0", 50-len(want)) + want
		if strings.Split(s, "-")[2] != want || tok.CADigest != sum {
			t.Fatalf("digest of %q is not the PEM's", s)
		}
		if _, err := VerifyCA(tok, ca.pem, now); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewToken([]byte("not pem")); err == nil {
		t.Fatal("a token for no CA")
	}
}

func TestParseTokenRefusals(t *testing.T) {
	good := "SWMTKN-1-" + swarmDigest + "-" + someSecret
	if _, err := ParseToken(good); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, tok string }{
		{"empty", ""},
		{"other version", strings.Replace(good, "SWMTKN-1-", "SWMTKN-2-", 1)},
		{"other prefix", strings.Replace(good, "SWMTKN", "SWMKEY", 1)},
		{"lower-case prefix", strings.Replace(good, "SWMTKN", "swmtkn", 1)},
		{"FIPS suffix", good + "-f"},
		{"digest one short", "SWMTKN-1-" + swarmDigest[1:] + "-" + someSecret + "0"},
		{"secret one short", good[:len(good)-1]},
		{"secret one long", good + "0"},
		{"upper-case digest", "SWMTKN-1-" + strings.ToUpper(swarmDigest) + "-" + someSecret},
		{"upper-case secret", "SWMTKN-1-" + swarmDigest + "-" + strings.ToUpper(someSecret)},
		{"digest above 2^256", "SWMTKN-1-" + strings.Repeat("z", 50) + "-" + someSecret},
		{"dash in secret", "SWMTKN-1-" + swarmDigest + "-" + someSecret[:12] + "-" + someSecret[13:]},
		{"space", " " + good[1:]},
		{"trailing newline", good[:len(good)-1] + "\n"},
		{"unlock key", "SWMKEY-1-" + strings.Repeat("A", 43)},
		{"huge", strings.Repeat("SWMTKN-1-", 1<<14)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseToken(tc.tok)
			if err == nil || err.Error() != "invalid join token" || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want 400 invalid join token", err)
			}
		})
	}
}

func TestVerifyCARefusals(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	other := newTestCA(t, now)
	tokFor := func(b []byte) Token { return Token{CADigest: sha256.Sum256(b)} }
	blk, _ := pem.Decode(ca.pem)
	legacy := Token{CADigest: sha256.Sum256(blk.Bytes)} // hush's tokens before it matched Swarm
	reencoded := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"x": "y"}, Bytes: blk.Bytes})
	expiredPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: selfSignedCA(t, ca.key, now.Add(-48*time.Hour), now.Add(-time.Hour)).Raw})
	pin := sha256.Sum256(ca.pem)
	pinHex := hex.EncodeToString(pin[:])
	appended := append(append([]byte{}, ca.pem...), other.pem...)

	for _, tc := range []struct {
		name   string
		tok    Token
		bundle []byte
		want   string // "" accepts
	}{
		{"pinned bundle", tokFor(ca.pem), ca.pem, ""},
		{"another CA (man in the middle)", tokFor(ca.pem), other.pem, "remote CA does not match fingerprint. Expected: " + pinHex},
		{"pinned CA plus an unpinned one", tokFor(ca.pem), appended, "remote CA does not match fingerprint"},
		{"a byte flipped", tokFor(ca.pem), bytes.Replace(ca.pem, []byte("MII"), []byte("MIJ"), 1), "remote CA does not match fingerprint"},
		{"legacy DER digest, same single cert", legacy, ca.pem, ""},
		{"legacy DER digest, re-encoded with headers", legacy, reencoded, ""},
		{"legacy DER digest with an extra cert", legacy, appended, "remote CA does not match fingerprint"},
		{"legacy DER digest of another CA", legacy, other.pem, "remote CA does not match fingerprint"},
		{"pinned but expired", tokFor(expiredPEM), expiredPEM, "error while validating Root CA Certificate"},
		{"pinned but no certificate", tokFor([]byte("hello")), []byte("hello"), MsgNoRootCerts},
		{"oversized", tokFor(bytes.Repeat(ca.pem, 200)), bytes.Repeat(ca.pem, 200), "remote CA does not match fingerprint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			roots, err := VerifyCA(tc.tok, tc.bundle, now)
			if tc.want == "" {
				if err != nil || len(roots) != 1 || !roots[0].Equal(ca.Root()) {
					t.Fatalf("refused the pinned CA: %v", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if roots != nil {
				t.Fatal("roots returned with an error")
			}
		})
	}
}
