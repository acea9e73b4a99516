package store_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"golang.org/x/sys/unix"
)

// listening returns the inodes of this process's listening sockets (TCP
// over IPv4 and IPv6, and unix), read from /proc.
func listening(t *testing.T) map[string]string {
	t.Helper()
	own := map[string]bool{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:[") {
			own[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	out := map[string]string{}
	for _, tab := range []struct{ file, stateListen string }{
		{"/proc/self/net/tcp", "0A"}, {"/proc/self/net/tcp6", "0A"}, {"/proc/self/net/unix", "01"},
	} {
		f, err := os.Open(tab.file)
		if err != nil {
			continue // no IPv6 in this kernel
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			var inode, state, addr string
			switch {
			case strings.HasSuffix(tab.file, "unix") && len(fl) >= 7:
				// Num RefCount Protocol Flags Type St Inode [Path]; a
				// listener has __SO_ACCEPTCON in its flags.
				inode = fl[6]
				if fl[3] != "00010000" {
					continue
				}
				state = tab.stateListen
				addr = strings.Join(fl[7:], " ")
			case len(fl) >= 10:
				addr, state, inode = fl[1], fl[3], fl[9]
			default:
				continue
			}
			if state == tab.stateListen && own[inode] {
				out[inode] = tab.file + " " + addr
			}
		}
		_ = f.Close()
	}
	return out
}

func newListeners(before, after map[string]string) []string {
	var out []string
	for ino, what := range after {
		if _, ok := before[ino]; !ok {
			out = append(out, what)
		}
	}
	return out
}

// A lone member is reached in-process only: opening it adds no listening
// socket of any kind to the process.
func TestLoneMemberOpensNoSocket(t *testing.T) {
	before := listening(t)
	s := storetest.New(t)
	if _, err := s.Table("things").Create(ctxT(t), "a", "a", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if extra := newListeners(before, listening(t)); len(extra) != 0 {
		t.Fatalf("a lone member listens: %v", extra)
	}
}

// A cluster member's TLS material lives in anonymous in-memory files: not
// linked anywhere, not inherited by a child process, closed with the
// store; and its only listener is the peer URL (no client port unless one
// is asked for). Nothing under the data directory holds the key.
func TestMemberTLSFilesStayInMemory(t *testing.T) {
	before := listening(t)
	c := newCluster(t)
	n := c.newNode("m1")
	c.open(n)
	n.waitReady(t)
	if extra := newListeners(before, listening(t)); len(extra) != 1 {
		t.Fatalf("listeners of a member without a client URL: %v, want the peer listener alone", extra)
	}
	fds := store.MemberTLSFdsForTest(n.s)
	for i, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		if err != nil || !strings.HasPrefix(l, "/memfd:hush-") {
			t.Fatalf("TLS file %d is %q (%v), want an anonymous memfd", i, l, err)
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Fatalf("TLS file %d flags %#x (%v): a child process would inherit it", i, flags, err)
		}
	}
	key := n.cfg.TLS.KeyPEM
	err := filepath.WalkDir(n.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, key[30:80]) {
			return fmt.Errorf("%s holds the member's key", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	n.close(t)
	for i, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd)); err == nil && strings.HasPrefix(l, "/memfd:hush-") {
			t.Fatalf("TLS file %d still open after Close: %s", i, l)
		}
	}
	if extra := newListeners(before, listening(t)); len(extra) != 0 {
		t.Fatalf("listeners left after Close: %v", extra)
	}
}
