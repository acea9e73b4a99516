package daemon

import (
	"context"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

// An expired node certificate (see docs/DESIGN.md, "Role changes and
// renewal", expired certificate). Every manager's TLS (join/CA service, dispatcher, etcd)
// refuses an expired certificate, so a node whose certificate expired
// (it was down past its renewal window, or its clock jumped) cannot ask
// any manager for a new one. Swarm's node retries the renewal with a
// backoff, logging "failed to renew the certificate", and a restarted
// one does not start ("error while loading TLS certificate in …: certificate
// (1 - <node>) not valid after …"); the way out is to leave and join
// again, or `docker swarm init --force-new-cluster` on a manager.
//
// hush does the same, and better where it safely can: a manager whose
// store still answers (a lone manager, or one whose peers still hold a
// quorum with it) holds the CA key and the node records, so it reissues
// its own certificate under the role its record says, as another manager
// would have. Every other node still asks each round (its clock may be
// the wrong one), logs the reason at error once, and shows it as docker
// info's Swarm.Error until a renewal succeeds; `docker node ls` on the
// managers shows it Down, since its heartbeats are refused too.

// msgCertExpired is the problem an expired certificate is reported as.
const msgCertExpired = "this node's TLS certificate (node %s) expired at %s: the managers refuse it, so it cannot be renewed. " +
	"Make the node leave (docker swarm leave --force) and join the swarm again"

// msgCertExpiredManager is its addition on a manager that cannot renew
// itself (its store has no quorum).
const msgCertExpiredManager = "; if every manager's certificate expired, run docker swarm init --force-new-cluster on one manager (it then renews its own certificate) and join the others again"

// renewExpired handles a sync round of a node whose certificate expired:
// a manager whose store serves reissues its own; any other node asks the
// managers as for a renewal and, refused, reports the problem (once in
// the log).
func (d *Daemon) renewExpired(ctx context.Context, v syncView) error {
	d.mu.Lock()
	manager := d.member != nil
	d.mu.Unlock()
	var selfErr error
	if manager {
		if selfErr = d.CheckServing(); selfErr == nil {
			if selfErr = d.reissueSelf(ctx, v); selfErr == nil {
				return nil
			}
		}
	}
	// Asked anyway, as Swarm's renewer does: this node's clock may be
	// ahead of the managers'. The managers refuse a truly expired
	// certificate at the handshake, which costs them no more than that.
	err := d.renewSelf(ctx, v)
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf(msgCertExpired, d.nodeID, v.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	if manager {
		msg += msgCertExpiredManager
	}
	if prev := d.certProblem.Swap(&certProblem{serial: v.cert.Leaf.SerialNumber, msg: msg}); prev == nil || prev.msg != msg {
		d.log.Error("node certificate expired", "node", d.nodeID, "notAfter", v.cert.Leaf.NotAfter, "problem", msg, "renewal", err, "selfReissue", selfErr)
	}
	return nil
}

// reissueSelf certifies this manager's own key again from its store,
// when its record says it is a manager and it was not removed: what
// another manager's sync would have answered.
func (d *Daemon) reissueSelf(ctx context.Context, v syncView) error {
	st := d.curStore()
	d.mu.Lock()
	key := d.nodeKey
	d.mu.Unlock()
	c, err := cluster.Get(ctx, st)
	if err != nil {
		return err
	}
	n, err := nodes.Get(ctx, st, d.nodeID)
	if err != nil {
		return err
	}
	if n.Spec.Role != swarm.NodeRoleManager {
		return errdefs.FailedPrecondition("node %s is recorded as a %s: a manager renews only its own manager certificate", d.nodeID, n.Spec.Role)
	}
	removed, err := nodes.Removed(ctx, st)
	if err != nil {
		return err
	}
	if _, ok := removed[d.nodeID]; ok {
		return removedError(d.nodeID)
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		return err
	}
	iss, err := d.issue(&c, csr, d.nodeID, pki.RoleManager)
	if err != nil {
		return err
	}
	if err := nodes.SetKeyFP(ctx, st, d.nodeID, keyFP(iss.Leaf)); err != nil {
		return err
	}
	cert, err := pki.TLSCertificate(iss.PEM, key)
	if err != nil {
		return err
	}
	d.log.Warn("this manager's certificate had expired: it reissued its own from the cluster CA", "node", d.nodeID, "expired", v.cert.Leaf.NotAfter, "notAfter", iss.Leaf.NotAfter)
	return d.installRenewed(key, iss.PEM, cert)
}

// certProblem is why the certificate of serial cannot be renewed.
type certProblem struct {
	serial *big.Int
	msg    string
}

// CertProblem is why this node's certificate cannot be renewed ("" when
// there is none), for docker info's Swarm.Error. The problem is the
// certificate's: a node that left since (no certificate) or joined again
// (another one) has none, without waiting for a sync round to clear it.
func (d *Daemon) CertProblem() string {
	// docker info's swarm Error carries a taken dispatcher port too
	// (dispatchport.go): the one field a user reads for the node.
	msg := d.certProblemOnly()
	if dp := d.dispatchProblem.Load(); dp != nil {
		msg = strings.TrimSpace(msg + " " + *dp)
	}
	return msg
}

func (d *Daemon) certProblemOnly() string {
	p := d.certProblem.Load()
	if p == nil {
		return ""
	}
	if c := d.cert.Load(); c == nil || c.Leaf == nil || c.Leaf.SerialNumber.Cmp(p.serial) != 0 {
		return ""
	}
	return p.msg
}
