package pki

import (
	"bytes"
	"crypto/x509"
	"time"
)

// Swarm renews a node certificate at a random point of its life between
// these fractions, so a cluster's nodes do not all renew at once.
const (
	renewLow  = 0.5
	renewHigh = 0.8
)

// RenewAt picks when leaf should be renewed: NotBefore plus a random
// whole number of minutes in [50%, 80%) of its life, as swarmkit does
// (NotBefore is the backdated one, so the window is measured as Swarm's).
// randN returns a uniform value in [0, n), e.g. math/rand/v2's Int64N;
// the caller keeps the result, since each call draws a new point.
func RenewAt(leaf *x509.Certificate, randN func(n int64) int64) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	low := int64(life.Minutes() * renewLow)
	high := int64(life.Minutes() * renewHigh)
	m := low
	if high-low >= 1 {
		m += randN(high - low)
	}
	return leaf.NotBefore.Add(time.Duration(m) * time.Minute)
}

// Reason says why a node certificate needs reissuing ("" when it does not).
type Reason string

// The reasons, in the order NeedsReissue checks them.
const (
	ReasonNone    Reason = ""
	ReasonExpired Reason = "expired"
	ReasonRole    Reason = "role changed"
	ReasonRoot    Reason = "issued under another root"
	ReasonDue     Reason = "renewal due"
)

// NeedsReissue says whether a node must get a new certificate now: its
// own has expired, carries another role than the node's current one (a
// promotion or demotion reissues at once), was not signed by the current
// root (a rotation in progress), or has reached renewAt (see RenewAt).
func NeedsReissue(leaf *x509.Certificate, role Role, root *x509.Certificate, renewAt, now time.Time) Reason {
	switch {
	case !now.Before(leaf.NotAfter):
		return ReasonExpired
	case len(leaf.Subject.OrganizationalUnit) != 1 || Role(leaf.Subject.OrganizationalUnit[0]) != role:
		return ReasonRole
	case !bytes.Equal(leaf.RawIssuer, root.RawSubject) || leaf.CheckSignatureFrom(root) != nil:
		return ReasonRoot
	case !now.Before(renewAt):
		return ReasonDue
	}
	return ReasonNone
}
