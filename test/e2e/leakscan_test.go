package e2e

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The cluster lab's leak scan (secretLeaks) finds a secret in each form
// it claims to, in a nested file or a file named directly, and nothing in
// files without it: a scan that found nothing would otherwise prove
// nothing.
func TestSecretLeaksFinds(t *testing.T) {
	val := []byte("lab-secret-" + randHex(t, 16))
	clean := t.TempDir()
	if err := os.MkdirAll(filepath.Join(clean, "a", "b"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(clean, "a", "b", "f"), []byte("nothing here"), 0o600); err != nil {
		t.Fatal(err)
	}
	leaks, files, err := secretLeaks([]string{clean}, [][]byte{val})
	if err != nil || len(leaks) != 0 || files != 1 {
		t.Fatalf("clean dir: leaks %v, files %d, err %v; want none, 1, nil", leaks, files, err)
	}
	b64 := base64.StdEncoding.EncodeToString(val)
	for name, content := range map[string]string{
		"raw":    "level=DEBUG msg=x data=" + string(val) + "\n",
		"base64": `{"Data":"` + b64 + `"}`,
		"prefix": "blob " + b64[:20] + "zz",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			deep := filepath.Join(dir, "x", "y", "z")
			if err := os.MkdirAll(deep, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(deep, "db"), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			log := filepath.Join(t.TempDir(), "hushd.log")
			if err := os.WriteFile(log, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			leaks, files, err := secretLeaks([]string{clean, dir, log}, [][]byte{[]byte("other"), val})
			if err != nil {
				t.Fatal(err)
			}
			if files != 3 || len(leaks) == 0 {
				t.Fatalf("files %d, leaks %v; want 3 files and the secret found", files, leaks)
			}
			for _, l := range leaks {
				if strings.Contains(l, string(val)) || strings.Contains(l, b64[:20]) {
					t.Fatalf("a leak report shows the value: %s", l)
				}
				if !strings.Contains(l, "secret #1") {
					t.Errorf("leak report names the wrong secret: %s", l)
				}
			}
			if !strings.Contains(strings.Join(leaks, "\n"), filepath.Join(deep, "db")) || !strings.Contains(strings.Join(leaks, "\n"), log) {
				t.Errorf("leaks %v: want both the nested file and the log named", leaks)
			}
		})
	}
}
