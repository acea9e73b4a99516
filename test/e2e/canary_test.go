package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// canaryForms returns the byte patterns that must never appear at rest or in
// logs for a secret whose data is canary: the raw bytes, their hex, and their
// base64 (standard and URL alphabets) at each of the three possible
// alignments inside a larger base64 stream (only the characters that depend
// on canary bytes alone are kept).
func canaryForms(canary []byte) map[string][]byte {
	forms := map[string][]byte{
		"raw": canary,
		"hex": []byte(hex.EncodeToString(canary)),
	}
	for _, enc := range []struct {
		name string
		e    *base64.Encoding
	}{{"base64", base64.StdEncoding}, {"base64url", base64.URLEncoding}} {
		for k := 0; k < 3; k++ {
			s := enc.e.EncodeToString(append(make([]byte, k), canary...))
			start := 0
			if k > 0 {
				start = 4 // first group mixes k lead bytes with the canary
			}
			// drop the last group: it may mix in trailing bytes or padding
			end := len(s) - 4
			forms[enc.name+"@"+string(rune('0'+k))] = []byte(s[start:end])
		}
	}
	return forms
}

func scanForCanary(t *testing.T, what, path string, data []byte, forms map[string][]byte) {
	t.Helper()
	for form, pat := range forms {
		if i := bytes.Index(data, pat); i >= 0 {
			t.Errorf("%s %s contains the secret data (%s form) at byte offset %d", what, path, form, i)
		}
	}
}

// TestSecretAtRestCanary: the secret data is nowhere on disk (every file of
// the data dir, including the etcd WAL and snapshots) nor in the debug log.
func TestSecretAtRestCanary(t *testing.T) {
	h := startHushd(t) // --log-level debug
	canary := "hushcanary" + randHex(t, 16)
	forms := canaryForms([]byte(canary))

	cf := filepath.Join(t.TempDir(), "canary")
	if err := os.WriteFile(cf, []byte(canary), 0o600); err != nil {
		t.Fatal(err)
	}
	h.MustDockerStdin(canary, "secret", "create", "--label", "kind=canary", "canary_stdin", "-")
	h.MustDocker("secret", "create", "canary_file", cf)
	// Error paths must not log the data either.
	if _, _, code := h.DockerStdin(canary, "secret", "create", "canary_stdin", "-"); code == 0 {
		t.Error("duplicate create of canary_stdin succeeded")
	}
	if _, _, code := h.DockerStdin(canary, "secret", "create", "--", "-bad-", "-"); code == 0 {
		t.Error("create with invalid name -bad- succeeded")
	}
	// Read paths.
	h.MustDocker("secret", "inspect", "canary_stdin", "canary_file")
	h.MustDocker("secret", "ls")

	h.Stop()

	n, total := 0, 0
	err := filepath.WalkDir(h.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		total += len(b)
		scanForCanary(t, "data file", path, b, forms)
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", h.DataDir, err)
	}
	if n == 0 {
		t.Fatalf("no files under the data dir %s: is --data-dir honoured?", h.DataDir)
	}
	t.Logf("scanned %d files, %d bytes under %s", n, total, h.DataDir)

	logb, err := os.ReadFile(h.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	// The scan proves something only if the log records the calls.
	if !strings.Contains(string(logb), "canary_stdin") {
		t.Errorf("the debug log (%d bytes) does not mention the secret canary_stdin: the log scan proves nothing", len(logb))
	}
	scanForCanary(t, "log", h.LogPath, logb, forms)
}

// TestCanaryFormsSelfCheck proves the scanner finds the canary inside base64
// streams at any offset (no daemon needed).
func TestCanaryFormsSelfCheck(t *testing.T) {
	canary := []byte("hushcanary" + randHex(t, 16))
	forms := canaryForms(canary)
	for off := 0; off < 6; off++ {
		blob := append(append(bytes.Repeat([]byte{'Z'}, off), canary...), "tail"...)
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			s := []byte(`{"Data":"` + enc.EncodeToString(blob) + `"}`)
			found := false
			for _, pat := range forms {
				found = found || bytes.Contains(s, pat)
			}
			if !found {
				t.Errorf("offset %d: base64 form not detected in %s", off, s)
			}
		}
	}
}
