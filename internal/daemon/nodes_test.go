package daemon

import (
	"bytes"
	"context"
	"testing"
)

// node ls / node inspect of another node carry its TLS info (the root CA
// that issued its certificate), as Swarm's do (`node inspect --pretty`
// prints it as "TLS Info"); they used to be empty for every node but the
// one asked.
func TestOtherNodesTLSInfo(t *testing.T) {
	ctx := context.Background()
	m, w, c := managerAndWorker(t)
	_, others, ok, err := clusterNodes{m}.Managers(ctx)
	if err != nil || !ok || len(others) != 1 {
		t.Fatalf("node list: %d others, ok %v, %v", len(others), ok, err)
	}
	ti := others[0].Description.TLSInfo
	want := c.Info().TLSInfo
	if ti.TrustRoot == "" || ti.TrustRoot != want.TrustRoot || !bytes.Equal(ti.CertIssuerSubject, want.CertIssuerSubject) ||
		!bytes.Equal(ti.CertIssuerPublicKey, want.CertIssuerPublicKey) {
		t.Fatalf("the worker's TLS info %+v, want the cluster root's %+v", ti, want)
	}
	if !bytes.Equal(ti.CertIssuerSubject, w.cert.Load().Leaf.RawIssuer) {
		t.Fatal("the worker's TLS info does not name the issuer of its certificate")
	}
}
