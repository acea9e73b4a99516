package main

import (
	"slices"
	"strings"
	"testing"
)

func TestExternalFlags(t *testing.T) {
	files := externalFlags{caFile: "ca.pem", certFile: "c.pem", keyFile: "k.pem"}
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
		{name: "with listen", flags: with(func(f *externalFlags) { f.endpoints, f.listen = "https://a:2379", "0.0.0.0:2377" }), want: "--listen-addr is not supported with --external-etcd"},
		{name: "bad prefix", flags: with(func(f *externalFlags) { f.endpoints, f.prefix = "https://a:2379", "a/" }), want: "must start with /"},
		{name: "only commas", flags: with(func(f *externalFlags) { f.endpoints = " , " }), want: "no endpoint given"},
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
			if c == nil || !slices.Equal(c.Endpoints, tc.eps) || c.CAFile != "ca.pem" || c.CertFile != "c.pem" || c.KeyFile != "k.pem" {
				t.Fatalf("config: %+v", c)
			}
		})
	}
}
