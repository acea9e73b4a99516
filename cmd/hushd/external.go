package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hush-secrets/hush/internal/store"
)

// externalFlags are the command line's --external-etcd options.
type externalFlags struct {
	endpoints, caFile, certFile, keyFile, prefix string
}

// config checks the options together and returns the store's
// configuration, or nil without --external-etcd. The TLS files are read
// here too, so that a missing one is refused (exit 2) before the data dir
// is touched; the store reads them again when it opens.
func (f externalFlags) config() (*store.ExternalConfig, error) {
	if f.endpoints == "" {
		for _, o := range []struct{ name, val string }{
			{"--etcd-cacert", f.caFile}, {"--etcd-cert", f.certFile}, {"--etcd-key", f.keyFile}, {"--external-etcd-prefix", f.prefix},
		} {
			if o.val != "" {
				return nil, fmt.Errorf("%s needs --external-etcd", o.name)
			}
		}
		return nil, nil
	}
	if f.caFile == "" || f.certFile == "" || f.keyFile == "" {
		return nil, errors.New("--external-etcd needs --etcd-cacert, --etcd-cert and --etcd-key: hush talks to an external etcd only over mutual TLS")
	}
	var eps []string
	for _, ep := range strings.Split(f.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	c := &store.ExternalConfig{Endpoints: eps, CAFile: f.caFile, CertFile: f.certFile, KeyFile: f.keyFile, Prefix: f.prefix}
	if err := store.CheckExternal(*c); err != nil {
		return nil, fmt.Errorf("--external-etcd: %w", err)
	}
	if err := store.CheckExternalFiles(*c); err != nil {
		return nil, fmt.Errorf("--etcd-cacert, --etcd-cert, --etcd-key: %w", err)
	}
	return c, nil
}
