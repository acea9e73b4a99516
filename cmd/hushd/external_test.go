package main

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/testutil/etcdtest"
)

func TestExternalFlags(t *testing.T) {
	srv := etcdtest.Start(t)
	srv.Stop()
	files := externalFlags{caFile: srv.CAFile, certFile: srv.CertFile, keyFile: srv.KeyFile}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	with := func(f func(*externalFlags)) externalFlags {
		x := files
		f(&x)
		return x
	}
	for _, tc := range []struct {
		name  string
		flags externalFlags
		want  string   // refusal text; empty: accepted
		eps   []string // accepted endpoints
	}{
		{name: "none", flags: externalFlags{}},
		{name: "cacert alone", flags: externalFlags{caFile: "ca.pem"}, want: "--etcd-cacert needs --external-etcd"},
		{name: "cert alone", flags: externalFlags{certFile: "c.pem"}, want: "--etcd-cert needs --external-etcd"},
		{name: "key alone", flags: externalFlags{keyFile: "k.pem"}, want: "--etcd-key needs --external-etcd"},
		{name: "prefix alone", flags: externalFlags{prefix: "/a"}, want: "--external-etcd-prefix needs --external-etcd"},
		{name: "endpoint without files", flags: externalFlags{endpoints: "https://a:2379"}, want: "--external-etcd needs --etcd-cacert, --etcd-cert and --etcd-key"},
		{name: "endpoint without key", flags: with(func(f *externalFlags) { f.endpoints, f.keyFile = "https://a:2379", "" }), want: "needs --etcd-cacert, --etcd-cert and --etcd-key"},
		{name: "http", flags: with(func(f *externalFlags) { f.endpoints = "https://a:2379,http://b:2379" }), want: `endpoint "http://b:2379": scheme http refused, use https`},
		{name: "bad prefix", flags: with(func(f *externalFlags) { f.endpoints, f.prefix = "https://a:2379", "a/" }), want: "must start with /"},
		{name: "only commas", flags: with(func(f *externalFlags) { f.endpoints = " , " }), want: "no endpoint given"},
		// Read before the data dir is touched: refused by name, exit 2.
		{name: "missing CA file", flags: with(func(f *externalFlags) { f.endpoints, f.caFile = "https://a:2379", missing }), want: "--etcd-cacert, --etcd-cert, --etcd-key: external etcd: CA file"},
		{name: "CA file not PEM", flags: with(func(f *externalFlags) { f.endpoints, f.caFile = "https://a:2379", f.keyFile }), want: "holds no PEM certificate"},
		{name: "missing key", flags: with(func(f *externalFlags) { f.endpoints, f.keyFile = "https://a:2379", missing }), want: "--etcd-cacert, --etcd-cert, --etcd-key: external etcd: client key pair"},
		{name: "two endpoints", flags: with(func(f *externalFlags) { f.endpoints = "https://a:2379, https://b:2379" }), eps: []string{"https://a:2379", "https://b:2379"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.flags.config()
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want a refusal containing %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.eps == nil {
				if c != nil {
					t.Fatalf("config without --external-etcd: %+v", c)
				}
				return
			}
			if c == nil || !slices.Equal(c.Endpoints, tc.eps) || c.CAFile != srv.CAFile || c.CertFile != srv.CertFile || c.KeyFile != srv.KeyFile {
				t.Fatalf("config: %+v", c)
			}
		})
	}
}
