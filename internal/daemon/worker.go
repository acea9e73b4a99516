package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

// roleWorker is the join answer's role for a node admitted with the
// worker token: it gets a certificate and nothing of the managers' store.
const roleWorker = "worker"

// workerState is this node's membership of a cluster as a worker, kept in
// <data-dir>/worker.json (0600). Nothing in it is secret: the node key is
// in keys/node.key (see saveWorkerKey).
type workerState struct {
	ClusterID string `json:"clusterID"`
	CertPEM   string `json:"certPEM"`
	CAPEM     string `json:"caPEM"`
	// Managers are the managers' join/CA addresses (host:port) as the
	// admitting manager listed them.
	Managers []string `json:"managers"`
	// Listen is the node's listen plan when it joined with one: a worker
	// can be promoted only then (roles.go).
	Listen listenPlan `json:"listen,omitzero"`
	// Epoch: see memberState.Epoch.
	Epoch uint64 `json:"roleEpoch,omitempty"`
}

func (d *Daemon) workerPath() string { return filepath.Join(d.cfg.DataDir, "worker.json") }
func (d *Daemon) nodeKeyPath() string {
	return filepath.Join(filepath.Dir(d.plainKey.Path), "node.key")
}

// admitWorker certifies a worker's key and records the node. A worker gets
// no master key and no etcd membership: it never holds the store.
func (d *Daemon) admitWorker(ctx context.Context, req *joinRequest, c *cluster.Cluster) (*joinResponse, error) {
	if err := checkJoinRequest(req); err != nil {
		return nil, err
	}
	if req.NodeID == d.nodeID {
		return nil, errdefs.BadRequest("node ID %s is this manager's", req.NodeID)
	}
	iss, err := d.issue(c, req.CSR, req.NodeID, pki.RoleWorker)
	if err != nil {
		return nil, err
	}
	n, err := d.recordJoiner(ctx, nodes.Node{ID: req.NodeID, Hostname: req.Hostname, Addr: req.Addr, Spec: swarm.NodeSpec{
		Role: swarm.NodeRoleWorker, Availability: swarm.NodeAvailability(req.Availability),
	}}, iss.Leaf)
	if err != nil {
		return nil, err
	}
	if n.Spec.Role != swarm.NodeRoleWorker {
		// A retry finds the record; a manager's ID never becomes a worker's
		// by a join (demotion is its own call).
		return nil, errdefs.FailedPrecondition("node %s is already a manager of this cluster", req.NodeID)
	}
	mgrs, err := d.managerAddrs(ctx)
	if err != nil {
		return nil, err
	}
	return &joinResponse{Role: roleWorker, ClusterID: c.ID, CertPEM: iss.PEM, CAPEM: []byte(c.CACert), Managers: mgrs}, nil
}

// managerAddrs are the join/CA addresses of every recorded manager, this
// one first.
func (d *Daemon) managerAddrs(ctx context.Context) ([]string, error) {
	recs, err := nodes.List(ctx, d.curStore())
	if err != nil {
		return nil, err
	}
	out := []string{d.listen.Advertise}
	for _, n := range recs {
		if n.ID != d.nodeID && n.Spec.Role == swarm.NodeRoleManager && n.Addr != "" {
			out = append(out, n.Addr)
		}
	}
	return out, nil
}

// enterWorkerLocked keeps what the join answer gave a worker and puts the
// node in worker mode. The caller holds d.mu; the node was inactive.
func (d *Daemon) enterWorkerLocked(ctx context.Context, key *ecdsa.PrivateKey, resp *joinResponse, remote string, plan listenPlan) error {
	cert, err := pki.TLSCertificate(resp.CertPEM, key)
	if err != nil {
		return errdefs.Unavailable("the manager at %s sent a certificate that does not match this node's key", remote)
	}
	mgrs := resp.Managers
	if len(mgrs) == 0 {
		mgrs = []string{remote}
	}
	ws := &workerState{ClusterID: resp.ClusterID, CertPEM: string(resp.CertPEM), CAPEM: string(resp.CAPEM), Managers: mgrs, Listen: plan}
	if err := d.saveWorkerKey(key); err != nil {
		return err
	}
	// Written last: a crash before it leaves an inactive node (and a stray
	// key file the next join replaces).
	if err := d.saveWorker(ws); err != nil {
		return err
	}
	d.dropJoinKey()
	// The inactive node's store goes (it never held cluster data: an
	// inactive node's holds nothing, as a manager's join that wipes it
	// assumes too): a worker holds none (issue 9). openStore removes its
	// data, and a crash before that has a restart remove it.
	d.closeStoreLocked()
	d.worker, d.nodeKey = ws, key
	if err := d.openStoreLocked(ctx, nil); err != nil {
		return err
	}
	d.cert.Store(cert)
	if plan.enabled() {
		d.useListen(plan)
	}
	d.state = swarm.LocalNodeStateActive
	d.log.Info("joined the swarm as a worker", "cluster", resp.ClusterID, "managers", mgrs)
	if err := d.startWorkerAgentLocked(); err != nil {
		// Joined all the same: the next start retries the agent.
		d.log.Error("worker agent not started", "err", err)
		return nil
	}
	// As Swarm's, the join answers once the node is Ready: its first
	// session opens when a manager has recorded it so (AwaitReady).
	if d.workerOpened != nil {
		select {
		case <-d.workerOpened:
		case <-time.After(joinReadyWait):
			d.log.Warn("joined, but no dispatcher session opened yet; the node shows Unknown or Down until one does", "waited", joinReadyWait)
		}
	}
	return nil
}

// joinReadyWait bounds how long a join waits, once the node has joined,
// for it to be recorded Ready: past it the join answers all the same (the
// node did join), as dockerd's does after its own timeout.
const joinReadyWait = 15 * time.Second

// saveWorkerKey writes the node key to keys/node.key, mode 0600. A worker
// has no master key to seal it with (it never receives one): the key is
// protected as a manager's master.key is, by the file's mode, which is
// what Swarm does with a worker's swarm-node.key. The PEM is wiped after
// the write and never logged.
func (d *Daemon) saveWorkerKey(key *ecdsa.PrivateKey) error {
	return writeKeyFile(d.nodeKeyPath(), key)
}

// joinKeyPath holds the key this node joins with while it is not a
// member: made before its first join call, kept across a failed one and
// at a worker's leave (recordJoiner admits a recorded node ID only with
// the key it was last certified for), removed once the node is a member.
func (d *Daemon) joinKeyPath() string {
	return filepath.Join(filepath.Dir(d.plainKey.Path), "join.key")
}

// joinKey is the key to join with and its CSR: the kept one, or a new one
// written (0600) before anything is sent, so that a join whose answer was
// lost can be asked again for the same record.
func (d *Daemon) joinKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := readKeyFile(d.joinKeyPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
		if key, err = pki.NewNodeKey(); err != nil {
			return nil, nil, err
		}
		if err := writeKeyFile(d.joinKeyPath(), key); err != nil {
			return nil, nil, err
		}
	case err != nil:
		return nil, nil, err
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// dropJoinKey forgets the join key once the node holds its key as a
// member (a manager's sealed, a worker's as node.key).
func (d *Daemon) dropJoinKey() {
	if err := os.Remove(d.joinKeyPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("removing the join key", "err", err)
	}
}

// writeKeyFile writes key as PKCS #8 PEM, mode 0600, wiping the encoding.
func writeKeyFile(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("node key: %w", err)
	}
	p := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	keyring.Wipe(der)
	defer keyring.Wipe(p)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("node key: %w", err)
	}
	if err := writeFileSync(path, p, 0o600); err != nil {
		return fmt.Errorf("node key: %w", err)
	}
	return nil
}

// readKeyFile reads what writeKeyFile wrote (os.ErrNotExist: no file).
func readKeyFile(path string) (*ecdsa.PrivateKey, error) {
	p, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	defer keyring.Wipe(p)
	blk, _ := pem.Decode(p)
	if blk == nil {
		return nil, fmt.Errorf("node key %s is corrupt", path)
	}
	defer keyring.Wipe(blk.Bytes)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	key, ok := k.(*ecdsa.PrivateKey)
	if err != nil || !ok {
		return nil, fmt.Errorf("node key %s is corrupt", path)
	}
	return key, nil
}

// loadWorker reads worker.json and the node key at start: a node that
// joined as a worker resumes worker mode. No file: not a worker.
func (d *Daemon) loadWorker() error {
	b, err := os.ReadFile(d.workerPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("worker state: %w", err)
	}
	var ws workerState
	if err := json.Unmarshal(b, &ws); err != nil || ws.CertPEM == "" {
		return fmt.Errorf("worker state %s is corrupt", d.workerPath())
	}
	key, err := readKeyFile(d.nodeKeyPath())
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("this node is a worker but its node key is unreadable: %w", err)
	}
	if err != nil {
		return err
	}
	cert, err := pki.TLSCertificate([]byte(ws.CertPEM), key)
	if err != nil {
		return fmt.Errorf("worker certificate: %w", err)
	}
	d.worker, d.nodeKey = &ws, key
	d.cert.Store(cert)
	d.state = swarm.LocalNodeStateActive
	return nil
}

// leaveWorkerLocked is `docker swarm leave` on a worker: it stops the
// agent, removes the task containers it ran (labelled with its node ID)
// and their secret mounts, as Swarm removes a leaving node's containers,
// and forgets its certificate, keeping its key to join again under its ID
// (the managers keep its record, Down once its heartbeats stop, as
// Swarm's do until `node rm`).
func (d *Daemon) leaveWorkerLocked(ctx context.Context) error {
	d.stopRuntime()
	if d.engine != nil {
		d.removeTaskContainers(ctx)
	}
	d.pruneOwnBridges(ctx)
	if err := os.Remove(d.workerPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("worker state: %w", err)
	}
	// The key stays as the join key: the record keeps it, so a join again
	// under this node's ID is admitted with it (recordJoiner); the
	// certificate is forgotten.
	if err := os.Rename(d.nodeKeyPath(), d.joinKeyPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("keeping the node key for a later join", "err", err)
		if err := os.Remove(d.nodeKeyPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("removing the node key", "err", err)
		}
	}
	d.worker, d.nodeKey = nil, nil
	d.cert.Store(nil)
	d.state = swarm.LocalNodeStateInactive
	// Back to what an inactive node holds: an empty embedded store, for a
	// later init or join. The worker's background context holds no loop
	// (openStore runs none on a detached store) but, at a removal, the
	// goroutine running this leave (removedFromCluster): it is ended
	// without being waited for, which would wait for the caller itself.
	d.stopBG()
	if err := d.store.Close(); err != nil {
		d.log.Warn("closing a worker's store", "err", err)
	}
	if err := d.openStoreLocked(ctx, nil); err != nil {
		return fmt.Errorf("opening an inactive node's store after the leave: %w", err)
	}
	d.log.Info("left the swarm (worker)")
	return nil
}

// WorkerInfo is /info's Swarm section on a worker (ok false on any other
// node): active, not a manager, with the managers it knows.
func (d *Daemon) WorkerInfo() (swarm.Info, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.worker == nil {
		return swarm.Info{}, false
	}
	si := swarm.Info{NodeID: d.nodeID, NodeAddr: d.acfg.Node.Addr, LocalNodeState: swarm.LocalNodeStateActive, Error: d.CertProblem()}
	for _, m := range d.worker.Managers {
		si.RemoteManagers = append(si.RemoteManagers, swarm.Peer{Addr: m})
	}
	return si, true
}

// workerAddr is the address a node without a listen address advertises:
// hushd's --advertise-addr (a worker serves nothing on it yet).
func workerAddr(advertise string) string {
	if h, _, err := net.SplitHostPort(advertise); err == nil {
		advertise = h
	}
	return net.JoinHostPort(advertise, "0")
}
