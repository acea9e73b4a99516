package pki

import (
	"crypto/x509"
	"math/big"
	"time"
)

// RevocationList is a CRL (DER) signed by the CA that names the serials
// of certificates it refuses: etcd's listeners read it on every
// connection and refuse a peer whose chain holds one of them (see
// internal/store/crl.go). number orders lists (a later list has a larger
// number); the list is valid for validity from now.
func (c *CA) RevocationList(serials []*big.Int, number int64, now time.Time, validity time.Duration) ([]byte, error) {
	entries := make([]x509.RevocationListEntry, 0, len(serials))
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: now})
	}
	return x509.CreateRevocationList(c.rand, &x509.RevocationList{
		Number:                    big.NewInt(number),
		ThisUpdate:                now.Add(-Backdate),
		NextUpdate:                now.Add(validity),
		RevokedCertificateEntries: entries,
	}, c.root, c.signer)
}
