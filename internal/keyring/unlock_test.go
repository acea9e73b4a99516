package keyring

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnlockKeyFormat(t *testing.T) {
	k, err := GenerateUnlockKey()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k, "SWMKEY-1-") || len(k) != len("SWMKEY-1-")+43 {
		t.Fatalf("unlock key %q has the wrong shape", k)
	}
	for _, bad := range []string{"", "SWMKEY-1-", "SWMKEY-2-" + k[9:], k[:len(k)-1], k + "A", "nope"} {
		if _, err := parseUnlockKey(bad); !errors.Is(err, ErrBadUnlockKey) {
			t.Errorf("parse(%q) = %v", bad, err)
		}
	}
}

func TestLockedKeyStore(t *testing.T) {
	dir := t.TempDir()
	ls := LockedKeyStore{Path: filepath.Join(dir, "keys", "master.key.locked")}
	mk, _ := GenerateMasterKey()
	k1, _ := GenerateUnlockKey()
	if err := ls.Store(mk, k1); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(ls.Path)
	if err != nil || len(raw) == 0 {
		t.Fatalf("locked key file: %d bytes, %v", len(raw), err)
	}
	if bytes.Contains(raw, mk.Key) || bytes.Contains(raw, []byte(hex.EncodeToString(mk.Key))) || bytes.Contains(raw, []byte(k1)) {
		t.Fatal("locked file holds the master key or the unlock key in plaintext")
	}
	got, err := ls.Load(k1)
	if err != nil || !bytes.Equal(got.Key, mk.Key) || got.ID != mk.ID {
		t.Fatalf("load with the right key: %v", err)
	}
	k2, _ := GenerateUnlockKey()
	if _, err := ls.Load(k2); !errors.Is(err, ErrBadUnlockKey) || strings.Contains(err.Error(), k2) {
		t.Fatalf("wrong key: %v", err)
	}
	// Rotation: re-wrap under k2; k1 stops working.
	if err := ls.Store(mk, k2); err != nil {
		t.Fatal(err)
	}
	if _, err := ls.Load(k1); !errors.Is(err, ErrBadUnlockKey) {
		t.Fatalf("old key after rotation: %v", err)
	}
	if got, err := ls.Load(k2); err != nil || !bytes.Equal(got.Key, mk.Key) {
		t.Fatalf("new key after rotation: %v", err)
	}
	if err := ls.Remove(); err != nil || ls.Exists() {
		t.Fatalf("remove: %v", err)
	}
}

func TestFileKeyStoreStoreRemove(t *testing.T) {
	fs := FileKeyStore{Path: filepath.Join(t.TempDir(), "master.key")}
	mk, _ := GenerateMasterKey()
	if err := fs.Store(mk); err != nil {
		t.Fatal(err)
	}
	if err := fs.Store(mk); err == nil {
		t.Fatal("second Store must fail")
	}
	got, err := fs.Load()
	if err != nil || !bytes.Equal(got.Key, mk.Key) {
		t.Fatalf("load: %v", err)
	}
	if err := fs.Remove(); err != nil || fs.Exists() {
		t.Fatalf("remove: %v", err)
	}
}

func TestPendingLockedKeyMoveTo(t *testing.T) {
	dir := t.TempDir()
	cur := LockedKeyStore{Path: filepath.Join(dir, "master.key.locked")}
	next := LockedKeyStore{Path: cur.Path + ".next"}
	mk, _ := GenerateMasterKey()
	k1, _ := GenerateUnlockKey()
	k2, _ := GenerateUnlockKey()
	if err := cur.Store(mk, k1); err != nil {
		t.Fatal(err)
	}
	if err := next.Store(mk, k2); err != nil {
		t.Fatal(err)
	}
	if !cur.Opens(k1) || cur.Opens(k2) || !next.Opens(k2) || next.Opens(k1) {
		t.Fatal("Opens does not tell the keys apart")
	}
	if err := next.MoveTo(cur); err != nil {
		t.Fatal(err)
	}
	if next.Exists() || !cur.Opens(k2) || cur.Opens(k1) {
		t.Fatal("after MoveTo the locked key should open with the new key only")
	}
	other := LockedKeyStore{Path: filepath.Join(t.TempDir(), "x")}
	if err := cur.MoveTo(other); err == nil {
		t.Fatal("MoveTo across directories must be refused (not atomic)")
	}
}

func TestRemoveTempFiles(t *testing.T) {
	dir := t.TempDir()
	if n, err := RemoveTempFiles(filepath.Join(dir, "absent")); n != 0 || err != nil {
		t.Fatalf("missing dir: %d, %v", n, err)
	}
	ks := FileKeyStore{Path: filepath.Join(dir, "master.key")}
	mk, _ := GenerateMasterKey()
	if err := ks.Store(mk); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(ks.Path)
	orphan := filepath.Join(dir, ".hush-master-key-1.tmp")
	if err := os.WriteFile(orphan, want, 0o600); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(orphan)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if err := os.Link(ks.Path, filepath.Join(dir, ".hush-master-key-2.tmp")); err != nil {
		t.Fatal(err)
	}
	unrelated := filepath.Join(dir, "notes.tmp")
	if err := os.WriteFile(unrelated, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := RemoveTempFiles(dir)
	if err != nil || n != 2 {
		t.Fatalf("RemoveTempFiles: %d, %v; want 2 removed", n, err)
	}
	buf := make([]byte, len(want))
	if _, err := fh.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf, mk.Key) || bytes.Contains(buf, []byte(hex.EncodeToString(mk.Key))) {
		t.Fatal("orphaned temp key file not overwritten before unlinking")
	}
	if got, _ := os.ReadFile(ks.Path); !bytes.Equal(got, want) {
		t.Fatal("the installed key file was overwritten through its temp link")
	}
	if _, err := os.Stat(unrelated); err != nil {
		t.Fatal("a file not matching the temp pattern was removed")
	}
}
