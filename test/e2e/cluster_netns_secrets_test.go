package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/agent/engine/enginetest"
)

// A secret created on one manager and used by a service whose task runs on
// the worker reaches the worker's tmpfs and no other node's, and the frames
// on the bridge meanwhile carry none of its bytes in clear (nor base64, as
// the API's JSON carries it).
func testLabWorkerSecrets(t *testing.T, c *labCluster) {
	img := enginetest.BusyboxImage(t)
	stop := c.lab.capture(t)
	sfx := randHex(t, 4)
	svc, sec, other := "hush-lab-w-"+sfx, "hush-lab-ws-"+sfx, "hush-lab-os-"+sfx
	// Random, so no unrelated traffic holds it by chance.
	val, oval := "lab-secret-"+randHex(t, 16), "lab-other-"+randHex(t, 16)
	m2, m3 := c.byName["m2"], c.byName["m3"]
	m2.MustDockerStdin(val, "secret", "create", sec, "-")
	m3.MustDockerStdin(oval, "secret", "create", other, "-")
	t.Cleanup(func() {
		_, _, _ = m2.Docker("service", "rm", svc)
		waitFor(t, 60*time.Second, "the service's containers gone", func() bool {
			return strings.TrimSpace(m2.MustDocker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+svc)) == ""
		})
	})
	m3.MustDocker("service", "create", "-d", "--name", svc, "--secret", sec, "--constraint", "node.role==worker",
		"--stop-grace-period", "1s", img, "sleep", "3600")
	var ctr string
	waitFor(t, 90*time.Second, "the task running on the worker", func() bool {
		ctr = strings.TrimSpace(m2.MustDocker("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc,
			"--filter", "label=com.docker.swarm.node.id="+c.ids["w1"]))
		return ctr != "" && !strings.Contains(ctr, "\n")
	})
	if got := m2.MustDocker("exec", ctr, "cat", "/run/secrets/"+sec); got != val {
		t.Fatalf("the worker's task reads %q from its secret", got)
	}
	pcap := stop()

	// At rest and in logs: the worker's whole data dir and its log, and
	// every manager's log, hold neither secret in any form (the managers'
	// data dirs hold them sealed, which the bytes cannot show).
	scan := []string{c.worker.DataDir, c.worker.LogPath}
	for _, m := range c.managers {
		scan = append(scan, m.LogPath)
	}
	leaks, files, err := secretLeaks(scan, [][]byte{[]byte(val), []byte(oval)})
	if err != nil {
		t.Fatal(err)
	}
	if files < len(scan) {
		t.Fatalf("the leak scan read %d file(s) from %d paths: it would find nothing", files, len(scan))
	}
	for _, l := range leaks {
		t.Errorf("a secret's value at rest or in a log: %s", l)
	}
	t.Logf("leak scan: %d files (the worker's data dir, its log, the managers' logs)", files)

	for name, dir := range c.secretsDir {
		found := secretFiles(t, dir)
		has := func(v string) bool {
			for _, f := range found {
				if f == v {
					return true
				}
			}
			return false
		}
		switch {
		case name == "w1" && (len(found) != 1 || !has(val)):
			t.Errorf("the worker's secrets dir holds %d file(s) (its task's secret among them: %v); want exactly its task's secret", len(found), has(val))
		case name != "w1" && (has(val) || has(oval)):
			t.Errorf("%s's secrets dir holds a secret of the worker's task or an unused one", name)
		}
	}

	// The capture must have seen the dispatcher's stream to the worker and
	// etcd's replication between managers, or finding nothing in it proves
	// nothing.
	w := c.lab.host("w1")
	seen := pcapTCPBytes(t, pcap, netip.MustParseAddr(w.ip), labPort+2)
	if seen == 0 {
		t.Fatalf("the capture (%d bytes) holds no TCP payload between the worker and a dispatcher (port %d)", len(pcap), labPort+2)
	}
	peers := 0
	for _, m := range []string{"m1", "m2", "m3"} {
		peers += pcapTCPBytes(t, pcap, netip.MustParseAddr(c.lab.host(m).ip), labPort+1)
	}
	if peers == 0 {
		t.Fatalf("the capture (%d bytes) holds no etcd peer traffic (port %d)", len(pcap), labPort+1)
	}
	for _, v := range []string{val, oval} {
		for _, form := range secretForms([]byte(v)) {
			if bytes.Contains(pcap, form) {
				t.Errorf("the capture on the bridge holds a secret in clear (%d bytes of frames, form %q…)", len(pcap), form[:8])
			}
		}
	}
	t.Logf("capture: %d bytes; TCP payload: %d bytes on the worker's dispatcher connections, %d on etcd peer connections", len(pcap), seen, peers)
}

// secretForms is what a value looks like where hush or etcd might write
// it: raw, base64 (as the API's JSON carries it), and a prefix of its
// base64 (the value base64'd inside a larger encoded blob keeps that
// prefix only when aligned; the raw form covers the rest).
func secretForms(v []byte) [][]byte {
	b64 := []byte(base64.StdEncoding.EncodeToString(v))
	return [][]byte{v, b64, b64[:min(20, len(b64))]}
}

// secretLeaks reads every regular file under each path (a directory is
// walked recursively; a file is read as is) and names, without the
// value, each file holding a form of one of the secrets; files is how
// many files it read, so that a caller can tell an empty scan.
func secretLeaks(paths []string, secrets [][]byte) (leaks []string, files int, err error) {
	for _, root := range paths {
		err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			files++
			for i, v := range secrets {
				for j, form := range secretForms(v) {
					if bytes.Contains(b, form) {
						leaks = append(leaks, fmt.Sprintf("%s holds secret #%d (form #%d: raw, base64, base64 prefix)", p, i, j))
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, 0, fmt.Errorf("scanning %s: %w", root, err)
		}
	}
	return leaks, files, nil
}

// secretFiles reads every regular file under a secrets dir but the
// manifests (which list mounts by name, no data).
func secretFiles(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() || de.Name() == ".manifest" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		found = append(found, string(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// pcapTCPBytes counts the TCP payload bytes in a pcap file (Ethernet or
// Linux "any" cooked captures, IPv4) between ip and any peer's port.
func pcapTCPBytes(t *testing.T, b []byte, ip netip.Addr, port int) int {
	t.Helper()
	if len(b) < 24 {
		t.Fatalf("capture too short: %d bytes", len(b))
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	default:
		bo = binary.BigEndian
	}
	// The link header's length and where it says the protocol.
	var hdr, proto int
	switch lt := bo.Uint32(b[20:]); lt {
	case 1: // Ethernet
		hdr, proto = 14, 12
	case 113: // LINUX_SLL
		hdr, proto = 16, 14
	case 276: // LINUX_SLL2
		hdr, proto = 20, 0
	default:
		t.Fatalf("capture link type %d: not Ethernet or Linux cooked", lt)
	}
	total := 0
	for off := 24; off+16 <= len(b); {
		n := int(bo.Uint32(b[off+8:]))
		f := b[off+16 : min(off+16+n, len(b))]
		off += 16 + n
		if len(f) < hdr+20 || binary.BigEndian.Uint16(f[proto:]) != 0x0800 {
			continue
		}
		ipb := f[hdr:]
		ihl := int(ipb[0]&0x0f) * 4
		if ipb[9] != 6 || len(ipb) < ihl+20 {
			continue
		}
		src, _ := netip.AddrFromSlice(ipb[12:16])
		dst, _ := netip.AddrFromSlice(ipb[16:20])
		tot := int(binary.BigEndian.Uint16(ipb[2:]))
		tcp := ipb[ihl:]
		sp, dp := int(binary.BigEndian.Uint16(tcp[0:])), int(binary.BigEndian.Uint16(tcp[2:]))
		doff := int(tcp[12]>>4) * 4
		if (src == ip && dp == port) || (dst == ip && sp == port) {
			total += max(0, tot-ihl-doff)
		}
	}
	return total
}
