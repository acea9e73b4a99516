package backup

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestManifestRoundTrip(t *testing.T) {
	m := &Manifest{
		Created: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), HushVersion: "test",
		NodeID: "n", ClusterID: "c", Autolock: true,
		Files: []File{{Path: "node.json", Data: []byte(`{"nodeID":"x"}`)}, {Path: "keys/master.key.locked", Data: []byte("k")}},
	}
	var buf bytes.Buffer
	if err := WriteManifest(&buf, m); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("SNAPSHOT")
	got, err := ReadManifest(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.NodeID != "n" || got.ClusterID != "c" || !got.Autolock || !got.Created.Equal(m.Created) || len(got.Files) != 2 ||
		string(got.Files[1].Data) != "k" || got.Format != ArchiveFormat {
		t.Fatalf("manifest after round trip: %+v", got)
	}
	if rest, _ := io.ReadAll(&buf); string(rest) != "SNAPSHOT" {
		t.Fatalf("what follows the manifest: %q", rest)
	}
}

func TestValidPath(t *testing.T) {
	for p, want := range map[string]bool{
		"node.json": true, "keys/master.key": true, "keys/master.key.locked": true, "keys/master.key.locked.next": true,
		"": false, "keys/": false, "keys/.hush-master-key-1.tmp": false, "keys/../node.json": false,
		"etcd/member/snap/db": false, "/node.json": false, "keys/a/b": false, "hushd.lock": false,
		"keys/" + strings.Repeat("a", 200): false, "keys/a b": false,
	} {
		if ValidPath(p) != want {
			t.Errorf("ValidPath(%q) = %v, want %v", p, !want, want)
		}
	}
}

func TestManifestRefused(t *testing.T) {
	node := File{Path: "node.json", Data: []byte("{}")}
	many := []File{node}
	for i := 0; i < MaxFiles; i++ {
		many = append(many, File{Path: "keys/k" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Data: []byte("x")})
	}
	cases := map[string]*Manifest{
		"no node.json":   {Files: []File{{Path: "keys/master.key"}}},
		"bad path":       {Files: []File{node, {Path: "../etc/passwd"}}},
		"duplicate":      {Files: []File{node, node}},
		"too many files": {Files: many},
		"large file":     {Files: []File{node, {Path: "keys/big", Data: make([]byte, MaxFileBytes+1)}}},
	}
	for name, m := range cases {
		if err := WriteManifest(io.Discard, m); err == nil {
			t.Errorf("%s: written", name)
		}
	}
	// The reader checks the same rules on what it is given.
	framed := func(js string) string {
		return string([]byte{0, 0, byte(len(js) >> 8), byte(len(js))}) + js
	}
	for name, raw := range map[string]string{
		"zero length": "\x00\x00\x00\x00",
		"huge length": "\xff\xff\xff\xff",
		"not JSON":    framed("abc"),
		"cut short":   framed(`{"Format":1}`)[:8],
		"bad path":    framed(`{"Format":1,"Files":[{"Path":"node.json"},{"Path":"etcd"}]}`),
		"old format":  framed(`{"Format":0,"Files":[{"Path":"node.json"}]}`),
		"no files":    framed(`{"Format":1}`),
	} {
		if _, err := ReadManifest(strings.NewReader(raw)); !errors.Is(err, ErrDamaged) {
			t.Errorf("%s: %v, want ErrDamaged", name, err)
		}
	}
}
