package store_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The store wrapper does not leak etcd's types to its callers: only
// internal/store (with storetest) and the external-etcd harness
// internal/testutil/etcdtest import etcd, and only storetest reaches the
// raw client (store.RawClient). Every .go file of the module is parsed,
// tests and files under any build tag included, which `go list` would
// miss.
func TestNoEtcdOutsideStore(t *testing.T) {
	root := moduleRoot(t)
	bad, err := etcdLeaks(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Errorf("%s: use internal/store's own vocabulary (store.Cond, store.Op, store.Event...) or storetest's helpers", b)
	}
}

// The check itself finds each kind of leak and lets the allowed places be.
func TestEtcdLeaksFound(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":                             "module example.com/m\n",
		"internal/store/store.go":            "package store\nimport clientv3 \"go.etcd.io/etcd/client/v3\"\nvar _ clientv3.Op\n",
		"internal/store/storetest/st.go":     "package storetest\nimport \"example.com/m/internal/store\"\nvar _ = store.RawClient\n",
		"internal/testutil/etcdtest/e.go":    "package etcdtest\nimport _ \"go.etcd.io/etcd/server/v3/embed\"\n",
		"internal/manager/ok/ok.go":          "package ok\nimport \"example.com/m/internal/store\"\nvar _ store.Cond\n",
		"internal/manager/leak/leak.go":      "package leak\nimport clientv3 \"go.etcd.io/etcd/client/v3\"\nvar _ clientv3.Cmp\n",
		"internal/manager/leak/leak_test.go": "package leak\nimport _ \"go.etcd.io/etcd/api/v3/mvccpb\"\n",
		"internal/daemon/tagged.go":          "//go:build hushfailpoints\n\npackage daemon\nimport \"go.etcd.io/etcd/client/v3/concurrency\"\nvar _ concurrency.Session\n",
		"internal/daemon/raw_test.go":        "package daemon\nimport st \"example.com/m/internal/store\"\nvar _ = st.RawClient\n",
		"internal/daemon/other.go":           "package daemon\ntype c struct{}\nfunc (c) RawClient() {}\nvar _ = c{}.RawClient\n",
		"internal/daemon/testdata/x.go":      "package x\nimport _ \"go.etcd.io/etcd/client/v3\"\n",
	}
	for name, src := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bad, err := etcdLeaks(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"internal/daemon/raw_test.go: calls store.RawClient",
		"internal/daemon/tagged.go: imports go.etcd.io/etcd/client/v3/concurrency",
		"internal/manager/leak/leak.go: imports go.etcd.io/etcd/client/v3",
		"internal/manager/leak/leak_test.go: imports go.etcd.io/etcd/api/v3/mvccpb",
	}
	if !slices.Equal(bad, want) {
		t.Fatalf("leaks found:\n%s\nwant:\n%s", strings.Join(bad, "\n"), strings.Join(want, "\n"))
	}
}

// etcdLeaks lists, sorted, the files under the module root that import
// etcd or call store.RawClient outside the places allowed to.
func etcdLeaks(root string) ([]string, error) {
	const storePkg = "/internal/store"
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return nil, err
	}
	modPath := ""
	for _, l := range strings.Split(string(mod), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "module" {
			modPath = f[1]
		}
	}
	var bad []string
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, root+string(filepath.Separator)))
		if d.IsDir() {
			base := d.Name()
			if p != root && (base == "testdata" || base == "vendor" || strings.HasPrefix(base, ".") || strings.HasPrefix(base, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(rel, ".go") {
			return nil
		}
		inStore := strings.HasPrefix(rel, "internal/store/")
		if inStore {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		storeName := ""
		for _, im := range f.Imports {
			path, _ := strconv.Unquote(im.Path.Value)
			if strings.HasPrefix(path, "go.etcd.io/etcd/") && !strings.HasPrefix(rel, "internal/testutil/etcdtest/") {
				bad = append(bad, rel+": imports "+path)
			}
			if path == modPath+storePkg {
				storeName = "store"
				if im.Name != nil {
					storeName = im.Name.Name
				}
			}
		}
		if storeName == "" {
			return nil
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "RawClient" {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == storeName {
					bad = append(bad, rel+": calls store.RawClient")
					return false
				}
			}
			return true
		})
		return nil
	})
	slices.Sort(bad)
	return slices.Compact(bad), err
}

// moduleRoot is the directory of the go.mod above the test's.
func moduleRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = up
	}
}
