// Package enginetest helps tests run containers on the real local Docker
// Engine without a registry: it builds a tiny image from the host's static
// busybox and imports it into the engine.
//
// Policy: when the engine (or /bin/busybox) is missing, tests are skipped
// with a clear message, except when the environment has CI=true, where they
// fail instead: CI must run them.
package enginetest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/testutil"

	"github.com/moby/moby/client"
)

const (
	// Socket is the engine socket the tests use.
	Socket = "/var/run/docker.sock"
	// BusyboxRef is the image BusyboxImage builds.
	BusyboxRef = "hush-test/busybox:latest"
	// BusyboxPath is the static busybox copied into the image (Debian's
	// busybox-static package).
	BusyboxPath = "/bin/busybox"

	// buildLabel holds a hash of what went into the image, so an image left
	// by an earlier run is reused only if it is the same.
	buildLabel = "org.hush.test.busybox.sha256"
	// buildVersion changes when the image layout below changes.
	buildVersion = "1"
)

// requiredApplets must exist in the busybox binary; optionalApplets are
// linked when it has them.
var (
	requiredApplets = []string{"sh", "cat", "ls", "stat", "grep", "sleep", "echo", "mount", "id"}
	optionalApplets = []string{
		"env", "hostname", "kill", "ps", "true", "false", "test", "[", "wc",
		"head", "tail", "touch", "printf", "mkdir", "rm", "cp", "mv", "sed",
		"tr", "date", "seq", "timeout", "umount", "readlink", "nslookup", "nc",
		"wget", "ping", "pidof", "awk", "xargs", "sha256sum", "base64",
	}
)

// Unavailable skips the test with the given reason, or fails it when
// CI=true.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	testutil.SkipOrFail(t, format, args...)
}

var (
	pingOnce sync.Once
	pingErr  error
)

// RequireEngine skips (or, with CI=true, fails) the test unless the Docker
// Engine at Socket answers.
func RequireEngine(t testing.TB) {
	t.Helper()
	pingOnce.Do(func() {
		cli, err := newClient()
		if err != nil {
			pingErr = err
			return
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, pingErr = cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	})
	if pingErr != nil {
		Unavailable(t, "Docker Engine at %s does not answer: %v", Socket, pingErr)
	}
}

var (
	buildOnce sync.Once
	buildErr  error
	buildMiss bool // buildErr means busybox is missing (skip), not a failure
)

// BusyboxImage returns BusyboxRef after making sure the engine has it: an
// image holding only the host's static busybox as /bin/busybox and symlinks
// for its common applets (sh, cat, ls, stat, grep, sleep, echo, mount, id,
// ...), with CMD ["/bin/sh"]. It is built and imported at most once per test
// binary, and not at all if the engine already has the same image. No
// registry is involved.
func BusyboxImage(t testing.TB) string {
	t.Helper()
	RequireEngine(t)
	buildOnce.Do(func() { buildMiss, buildErr = ensureBusybox() })
	if buildErr != nil {
		if buildMiss {
			Unavailable(t, "%v (apt-get install busybox-static)", buildErr)
		}
		t.Fatalf("building %s: %v", BusyboxRef, buildErr)
	}
	return BusyboxRef
}

func newClient() (*client.Client, error) {
	return client.New(client.WithHost("unix://" + Socket))
}

func ensureBusybox() (missing bool, _ error) {
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return true, fmt.Errorf("static busybox: %w", err)
	}
	applets, err := appletList()
	if err != nil {
		return true, err
	}
	var links []string
	for _, a := range requiredApplets {
		if !applets[a] {
			return true, fmt.Errorf("%s has no %q applet", BusyboxPath, a)
		}
		links = append(links, a)
	}
	for _, a := range optionalApplets {
		if applets[a] {
			links = append(links, a)
		}
	}

	h := sha256.New()
	h.Write(bin)
	fmt.Fprintf(h, "\x00%s\x00%s", buildVersion, strings.Join(links, ","))
	sum := hex.EncodeToString(h.Sum(nil))

	cli, err := newClient()
	if err != nil {
		return false, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if img, err := cli.ImageInspect(ctx, BusyboxRef); err == nil &&
		img.Config != nil && img.Config.Labels[buildLabel] == sum {
		return false, nil
	}

	rootfs, err := rootfsTar(bin, links)
	if err != nil {
		return false, err
	}
	rc, err := cli.ImageImport(ctx,
		client.ImageImportSource{Source: bytes.NewReader(rootfs), SourceName: "-"},
		BusyboxRef,
		client.ImageImportOptions{
			Changes: []string{
				`CMD ["/bin/sh"]`,
				`ENV PATH=/bin`,
				`LABEL ` + buildLabel + `=` + sum,
			},
			Message: "hush test image: static busybox",
		})
	if err != nil {
		return false, fmt.Errorf("image import: %w", err)
	}
	defer rc.Close()
	if err := readProgress(rc); err != nil {
		return false, fmt.Errorf("image import: %w", err)
	}

	img, err := cli.ImageInspect(ctx, BusyboxRef)
	if err != nil {
		return false, fmt.Errorf("inspect imported image: %w", err)
	}
	if img.Config == nil || img.Config.Labels[buildLabel] != sum {
		return false, errors.New("imported image does not carry the expected build label")
	}
	return false, nil
}

// appletList runs busybox --list.
func appletList() (map[string]bool, error) {
	out, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", BusyboxPath, err)
	}
	m := map[string]bool{}
	for _, a := range strings.Fields(string(out)) {
		m[a] = true
	}
	return m, nil
}

// rootfsTar builds the image's root filesystem as a tar stream: the
// directories a container needs, /bin/busybox and one symlink per applet.
func rootfsTar(bin []byte, applets []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: mtime})
	}
	for _, d := range []struct {
		name string
		mode int64
	}{
		{"bin", 0o755}, {"dev", 0o755}, {"etc", 0o755}, {"proc", 0o555},
		{"sys", 0o555}, {"run", 0o755}, {"root", 0o700}, {"tmp", 0o1777},
		{"var", 0o755},
	} {
		if err := dir(d.name, d.mode); err != nil {
			return nil, err
		}
	}
	for _, f := range []struct{ name, data string }{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"},
		{"etc/group", "root:x:0:\nnogroup:x:65534:\n"},
	} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin)), ModTime: mtime}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	for _, a := range applets {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// readProgress drains the engine's JSON progress stream and returns the
// first error it reports.
func readProgress(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			return errors.New(m.ErrorDetail.Message)
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}
