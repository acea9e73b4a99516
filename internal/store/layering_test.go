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
// internal/testutil/etcdtest import any of etcd's modules (go.etcd.io/...,
// under whatever name), only storetest reaches the raw client
// (store.RawClient), and storetest, which writes past sealing and
// leadership guards, is imported by tests alone. Every .go file of the
// module is parsed, tests and files under any build tag included, which
// `go list` would miss.
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

// Each way a file can reach etcd or the raw client past the store, planted
// in a module of its own, is found; the allowed places stay allowed. The
// import's spelling (renamed, dot, blank) never matters, nor which of
// etcd's modules it is (go.etcd.io/raft and bbolt are etcd's too).
func TestEtcdLeakCases(t *testing.T) {
	const store = `"example.com/m/internal/store"`
	for _, tc := range []struct {
		name, file, src string
		want            string // "": allowed
	}{
		{"renamed etcd import", "internal/a/a.go", "package a\nimport cv \"go.etcd.io/etcd/client/v3\"\nvar _ cv.Op\n",
			"internal/a/a.go: imports go.etcd.io/etcd/client/v3"},
		{"dot etcd import", "internal/a/a.go", "package a\nimport . \"go.etcd.io/etcd/client/v3\"\nvar _ Op\n",
			"internal/a/a.go: imports go.etcd.io/etcd/client/v3"},
		{"blank etcd import in a test", "internal/a/a_test.go", "package a\nimport _ \"go.etcd.io/etcd/server/v3/embed\"\n",
			"internal/a/a_test.go: imports go.etcd.io/etcd/server/v3/embed"},
		{"etcd's raft module", "internal/a/a.go", "package a\nimport \"go.etcd.io/raft/v3\"\nvar _ raft.Config\n",
			"internal/a/a.go: imports go.etcd.io/raft/v3"},
		{"etcd's bbolt", "cmd/x/main.go", "package main\nimport bolt \"go.etcd.io/bbolt\"\nvar _ *bolt.DB\nfunc main() {}\n",
			"cmd/x/main.go: imports go.etcd.io/bbolt"},
		{"storetest in production code", "internal/a/a.go", "package a\nimport st \"example.com/m/internal/store/storetest\"\nvar _ = st.RawPut\n",
			"internal/a/a.go: imports internal/store/storetest outside a test"},
		{"storetest dot-imported in production code", "internal/a/a.go", "package a\nimport . \"example.com/m/internal/store/storetest\"\nvar _ = RawPut\n",
			"internal/a/a.go: imports internal/store/storetest outside a test"},
		{"storetest in a test", "internal/a/a_test.go", "package a\nimport \"example.com/m/internal/store/storetest\"\nvar _ = storetest.New\n", ""},
		{"RawClient through a dot import", "internal/a/a.go", "package a\nimport . " + store + "\nvar _ = RawClient\n",
			"internal/a/a.go: calls store.RawClient"},
		{"RawClient through a renamed import", "internal/a/a_test.go", "package a\nimport s " + store + "\nvar _ = s.RawClient\n",
			"internal/a/a_test.go: calls store.RawClient"},
		{"RawClient of a store imported twice", "internal/a/a.go", "package a\nimport (\n\t_ " + store + "\n\tx " + store + "\n)\nvar _ = x.RawClient\n",
			"internal/a/a.go: calls store.RawClient"},
		{"a RawClient of another package", "internal/a/a.go", "package a\nimport . " + store + "\ntype c struct{}\nfunc (c) RawClient() {}\nvar _ = c{}.RawClient\nvar _ Cond\n", ""},
		{"a package below internal/store", "internal/store/leaky/l.go", "package leaky\nimport \"go.etcd.io/etcd/client/v3\"\nvar _ clientv3.Op\n",
			"internal/store/leaky/l.go: imports go.etcd.io/etcd/client/v3"},
		{"the store itself", "internal/store/s.go", "package store\nimport \"go.etcd.io/etcd/client/v3\"\nvar _ clientv3.Op\n", ""},
		{"storetest itself", "internal/store/storetest/t.go", "package storetest\nimport (\n\t\"go.etcd.io/etcd/client/v3\"\n\t" + store + "\n)\nvar _ = store.RawClient\nvar _ clientv3.Op\n", ""},
		{"the external etcd harness", "internal/testutil/etcdtest/e.go", "package etcdtest\nimport _ \"go.etcd.io/etcd/server/v3/embed\"\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, src := range map[string]string{"go.mod": "module example.com/m\n", tc.file: tc.src} {
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
			var want []string
			if tc.want != "" {
				want = []string{tc.want}
			}
			if !slices.Equal(bad, want) {
				t.Fatalf("leaks found: %q, want %q", bad, want)
			}
		})
	}
}

// etcdLeaks lists, sorted, the files under the module root that import
// etcd or call store.RawClient outside the places allowed to, or import
// storetest (which writes past the sealing and the leadership guards)
// outside a test. Imports are judged by path, whatever name they bind;
// RawClient is found qualified by any name store is imported under, and
// unqualified in a file that dot-imports store.
func etcdLeaks(root string) ([]string, error) {
	const (
		storePkg     = "/internal/store"
		storetestPkg = "/internal/store/storetest"
		// Every module of etcd's project: the client and server, and the
		// raft and bbolt modules it is built on.
		etcdModules = "go.etcd.io/"
	)
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
		// The store's own files and storetest's, not a package below them.
		if dir := filepath.ToSlash(filepath.Dir(rel)); dir == "internal/store" || dir == "internal/store/storetest" {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		isTest := strings.HasSuffix(rel, "_test.go")
		storeNames := map[string]bool{}
		for _, im := range f.Imports {
			path, _ := strconv.Unquote(im.Path.Value)
			if strings.HasPrefix(path, etcdModules) && !strings.HasPrefix(rel, "internal/testutil/etcdtest/") {
				bad = append(bad, rel+": imports "+path)
			}
			if path == modPath+storetestPkg && !isTest {
				bad = append(bad, rel+": imports internal/store/storetest outside a test")
			}
			if path == modPath+storePkg {
				name := "store"
				if im.Name != nil {
					name = im.Name.Name
				}
				storeNames[name] = true
			}
		}
		if len(storeNames) == 0 {
			return nil
		}
		if rawClientUsed(f, storeNames) {
			bad = append(bad, rel+": calls store.RawClient")
		}
		return nil
	})
	slices.Sort(bad)
	return slices.Compact(bad), err
}

// rawClientUsed reports whether f refers to store's RawClient: qualified
// by a name store is imported under, or, when store is dot-imported, by
// its bare name (a method, field or key of that name is another thing).
func rawClientUsed(f *ast.File, storeNames map[string]bool) bool {
	const raw = "RawClient"
	dot := storeNames["."]
	// Identifiers that name something else: the selected name of a
	// selector, declared methods and fields, composite literal keys.
	other := map[*ast.Ident]bool{}
	found := false
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.SelectorExpr:
			if id, ok := n.X.(*ast.Ident); ok && storeNames[id.Name] && n.Sel.Name == raw {
				found = true
			}
			other[n.Sel] = true
		case *ast.FuncDecl:
			if n.Recv != nil {
				other[n.Name] = true
			}
		case *ast.Field:
			for _, id := range n.Names {
				other[id] = true
			}
		case *ast.KeyValueExpr:
			if id, ok := n.Key.(*ast.Ident); ok {
				other[id] = true
			}
		case *ast.Ident:
			if dot && n.Name == raw && !other[n] {
				found = true
			}
		}
		return !found
	})
	return found
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
