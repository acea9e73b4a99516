package store

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Refused certificates at etcd's TLS. etcd's listeners (peer and client)
// take a CRL file (TLSInfo.CRLFile): on every accepted connection they
// read it again (no cache, etcd's transport.checkCRL) and refuse a peer
// whose certificate chain holds a serial the list names. etcd compares
// serial numbers only: it neither checks the list's signature nor its
// issuer. The store keeps that file in memory (memfd, as the TLS
// material) and the daemon replaces it with Members.SetCRL whenever the
// set of refused manager certificates changes.

const crlFileName = "hush-crl"

// placeholderCRL is an empty list, for the file etcd must be able to
// parse from the first connection on (an unreadable list refuses every
// peer) until the daemon sets the cluster's. It is signed by a key made
// for it and dropped: etcd reads only its (empty) serials.
func placeholderCRL() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	issuer := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hush placeholder CRL"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true, SubjectKeyId: []byte{1}}
	return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1),
		ThisUpdate: now, NextUpdate: now.Add(time.Hour)}, issuer, key)
}

// SetCRL replaces the certificate revocation list etcd's peer and client
// listeners consult on each new connection (DER, as x509.CreateRevocationList
// makes it). Established connections are not cut: a peer's raft streams
// last until they break (a removed member's are refused by etcd's
// membership anyway).
func (m *Members) SetCRL(der []byte) error {
	if _, err := x509.ParseRevocationList(der); err != nil {
		return fmt.Errorf("store: certificate revocation list: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.files) <= crlIndex {
		return errors.New("store: this member has no revocation list file")
	}
	return memfds{m.files[crlIndex]}.replace([]string{crlFileName}, [][]byte{der})
}

// crlIndex is the CRL's place among the member's files (after the
// certificate, its key and the CA bundle).
const crlIndex = 3
