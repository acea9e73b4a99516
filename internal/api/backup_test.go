package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// fakeBackups records the key it was given and writes, then fails, as told.
type fakeBackups struct {
	key     []byte
	write   string
	failErr error
}

func (f *fakeBackups) Backup(_ context.Context, secret []byte, w io.Writer) error {
	f.key = bytes.Clone(secret)
	if f.write != "" {
		if _, err := io.WriteString(w, f.write); err != nil {
			return err
		}
	}
	return f.failErr
}

func backupServer(f *fakeBackups) *Server { return New(Config{Backup: f}) }

func postBackup(s *Server, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/hush/v1/backup", strings.NewReader(body))
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec
}

// opaqueTrailer stands for the opaque text of an uncategorised error.
const opaqueTrailer = "<opaque>"

func TestBackupEndpoint(t *testing.T) {
	key := base64.StdEncoding.EncodeToString([]byte("pass\n"))
	big := base64.StdEncoding.EncodeToString(make([]byte, MaxBackupKeyBytes+1))
	cases := []struct {
		name     string
		body     string
		f        fakeBackups
		status   int
		want     string // in the body
		trailer  string
		wantKey  string
		noBackup bool
	}{
		{name: "ok", body: `{"Key":"` + key + `"}`, f: fakeBackups{write: "ENCRYPTED"}, status: 200, want: "ENCRYPTED", wantKey: "pass\n"},
		{name: "unknown field named", body: `{"Key":"` + key + `","Compress":true}`, status: 400, want: `unknown field \"Compress\"`, noBackup: true},
		{name: "no key", body: `{}`, status: 400, want: "Key is required", noBackup: true},
		{name: "empty body", body: ``, status: 400, want: "EOF", noBackup: true},
		{name: "not base64", body: `{"Key":"***"}`, status: 400, want: "invalid backup request", noBackup: true},
		{name: "key too large", body: `{"Key":"` + big + `"}`, status: 400, noBackup: true},
		{name: "trailing data", body: `{"Key":"` + key + `"}{}`, status: 400, want: "data after", noBackup: true},
		{name: "refused before writing", body: `{"Key":"` + key + `"}`, f: fakeBackups{failErr: errdefs.Unavailable("another backup is running")},
			status: 503, want: "another backup is running", wantKey: "pass\n"},
		// An uncategorised cause stays in the log: the trailer is opaque.
		{name: "failed while streaming", body: `{"Key":"` + key + `"}`, f: fakeBackups{write: "PART", failErr: errors.New("store: snapshot\nbroke")},
			status: 200, want: "PART", trailer: opaqueTrailer, wantKey: "pass\n"},
		{name: "categorised failure while streaming", body: `{"Key":"` + key + `"}`, f: fakeBackups{write: "PART", failErr: errdefs.Unavailable("the store\nwent away")},
			status: 200, want: "PART", trailer: "the store went away", wantKey: "pass\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := c.f
			rec := postBackup(backupServer(&f), c.body)
			if rec.Code != c.status || !strings.Contains(rec.Body.String(), c.want) {
				t.Fatalf("status %d body %q; want %d with %q", rec.Code, rec.Body.String(), c.status, c.want)
			}
			got := rec.Result().Trailer.Get(BackupErrorTrailer)
			if c.trailer == opaqueTrailer {
				if !regexp.MustCompile(`^internal error \(ID [0-9a-f]{16}\): see hushd's log$`).MatchString(got) {
					t.Fatalf("trailer %q, want the opaque text with an error ID", got)
				}
			} else if got != c.trailer {
				t.Fatalf("trailer %q, want %q", got, c.trailer)
			}
			if c.noBackup && f.key != nil {
				t.Fatal("a refused request reached the backup")
			}
			if !c.noBackup && string(f.key) != c.wantKey {
				t.Fatalf("key %q, want %q", f.key, c.wantKey)
			}
			if c.status == 200 && rec.Header().Get("Content-Type") != "application/octet-stream" {
				t.Fatalf("content type %q", rec.Header().Get("Content-Type"))
			}
		})
	}
	// Without a backup source the route does not exist.
	if rec := postBackup(New(Config{}), `{}`); rec.Code != http.StatusNotFound {
		t.Fatalf("no backup source: status %d", rec.Code)
	}
}

// FuzzBackupRequest: any body gets a 200 from a working source or a 400,
// never a panic or another status.
func FuzzBackupRequest(f *testing.F) {
	f.Add(`{"Key":"cGFzcw=="}`)
	f.Add(`{"Key":null}`)
	f.Add(`{"key":"cGFzcw==","x":1}`)
	f.Add(`[`)
	f.Fuzz(func(t *testing.T, body string) {
		rec := postBackup(backupServer(&fakeBackups{write: "x"}), body)
		if rec.Code != 200 && rec.Code != 400 {
			t.Fatalf("status %d for %q", rec.Code, body)
		}
	})
}
