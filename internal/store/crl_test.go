package store_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
)

func serialOf(t *testing.T, m store.MemberTLS) *big.Int {
	t.Helper()
	blk, _ := pem.Decode(m.CertPEM)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// tlsGet asks url's /version under m's certificate: nil when etcd's
// listener accepted the connection.
func tlsGet(t *testing.T, url string, m store.MemberTLS) error {
	t.Helper()
	pair, err := tls.X509KeyPair(m.CertPEM, m.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(m.CAPEM)
	cli := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: "swarm-manager", MinVersion: tls.VersionTLS13}}}
	defer cli.CloseIdleConnections()
	resp, err := cli.Get(url + "/version")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// A manager certificate the revocation list names is refused by etcd's
// peer and client listeners from the next connection on; one it does not
// name is accepted; a list set later is read at the next connection.
func TestCRLRefusesCertificates(t *testing.T) {
	c := newCluster(t)
	n := c.newNode("m1")
	refused := c.ca.issue(t, pki.RoleManager)
	current := c.ca.issue(t, pki.RoleManager)
	later := c.ca.issue(t, pki.RoleManager)
	crl, err := c.ca.RevocationList([]*big.Int{serialOf(t, refused)}, 1, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	n.cfg.TLS.CRL = crl
	n.cfg.ClientURL = freeURL(t)
	c.open(n)
	n.waitReady(t)
	urls := map[string]string{"peer": n.cfg.PeerURL, "client": n.cfg.ClientURL}
	check := func(who string, m store.MemberTLS, ok bool) {
		t.Helper()
		for port, u := range urls {
			err := tlsGet(t, u, m)
			if ok && err != nil {
				t.Errorf("%s certificate on the %s port: %v", who, port, err)
			}
			if !ok && err == nil {
				t.Errorf("%s certificate accepted on the %s port", who, port)
			}
		}
	}
	check("a current", current, true)
	check("a refused", refused, false)
	check("a not yet refused", later, true)

	crl, err = c.ca.RevocationList([]*big.Int{serialOf(t, refused), serialOf(t, later)}, 2, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.s.Members().SetCRL(crl); err != nil {
		t.Fatal(err)
	}
	check("a newly refused", later, false)
	check("a current", current, true)
	if err := n.s.Members().SetCRL([]byte("not a list")); err == nil || !strings.Contains(err.Error(), "revocation list") {
		t.Fatalf("a malformed list: %v", err)
	}
	check("a current (after a malformed list was refused)", current, true)
}
