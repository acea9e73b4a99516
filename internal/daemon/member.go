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
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

// cliDefaultListen is what `docker swarm init/join` sends when the user
// gave no --listen-addr: hushd's own --listen-addr then applies.
const cliDefaultListen = "0.0.0.0:2377"

// listenPlan is where a manager listens: the join/CA service on Listen,
// etcd's peer traffic on the next port; Advertise is the address other
// nodes dial (the advertised host, the same ports).
type listenPlan struct {
	Listen    string // host:port of the join/CA service
	Advertise string // host:port others reach it at
}

func (p listenPlan) enabled() bool { return p.Listen != "" }

// peerURLs are the member's advertised and listened peer URLs: the port
// after the join/CA service's.
func (p listenPlan) peerURLs() (adv, listen string) {
	return "https://" + nextPort(p.Advertise), "https://" + nextPort(p.Listen)
}

func nextPort(hostPort string) string {
	h, port, _ := net.SplitHostPort(hostPort)
	n, _ := strconv.Atoi(port)
	return net.JoinHostPort(h, strconv.Itoa(n+1))
}

// listenPlanFor resolves the listen address (the request's, unless it is
// the CLI's default, else hushd's --listen-addr) and the advertised one
// (the request's, else hushd's --advertise-addr, with the listen port).
// An empty advertise takes the listen IP, as Swarm does; only a node
// listening on every address falls back to 127.0.0.1, and a manager
// join across hosts then refuses it by name (checkAdvertisedReach).
func listenPlanFor(flagListen, reqListen, advertise string) (listenPlan, error) {
	listen := flagListen
	if reqListen != "" && reqListen != cliDefaultListen {
		listen = reqListen
	}
	if listen == "" {
		return listenPlan{}, nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listenPlan{}, errdefs.BadRequest("invalid listen address %q: want host:port", listen)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n+dispatchPortOffset > 65535 {
		// The peer port is the next one and the dispatcher's the one
		// after: they must exist too.
		return listenPlan{}, errdefs.BadRequest("invalid listen address %q: the port must be 1-%d", listen, 65535-dispatchPortOffset)
	}
	if host == "" || net.ParseIP(host) == nil {
		return listenPlan{}, errdefs.BadRequest("invalid listen address %q: hush needs an IP address", listen)
	}
	advHost := advertise
	if h, p, err := net.SplitHostPort(advertise); err == nil {
		if p != port {
			// Peers dial the listen port and the two after it; an
			// advertised port (Swarm's, behind a port mapping) is not.
			return listenPlan{}, errdefs.BadRequest("AdvertiseAddr %s: hush advertises its listen port (%s); give the address without a port, or that port", advertise, port)
		}
		advHost = h
	}
	if net.ParseIP(advHost) == nil || net.ParseIP(advHost).IsUnspecified() {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			advHost = host
		} else if advertise == "" {
			advHost = defaultAdvertise
		} else {
			return listenPlan{}, errdefs.BadRequest("advertise address %q must be an IP address", advertise)
		}
	}
	return listenPlan{Listen: net.JoinHostPort(host, port), Advertise: net.JoinHostPort(advHost, port)}, nil
}

// defaultAdvertise is what a node advertises when neither hushd's
// --advertise-addr nor the request names an address and its listen
// address names none either (0.0.0.0): right for a one-host cluster only.
const defaultAdvertise = "127.0.0.1"

// advertiseFlag is hushd's --advertise-addr as given: "" when it was not,
// so that listenPlanFor advertises the listen IP instead.
func (d *Daemon) advertiseFlag() string {
	if d.advGiven {
		return d.cfg.AdvertiseAddr
	}
	return ""
}

// checkAdvertisedReach refuses, by name, a manager join between hosts that
// a loopback address would break: the join would be admitted, and the
// etcd peers would then dial 127.0.0.1 and wait out the join's time. from
// is the joiner's connection address as the manager sees it; own is the
// manager's advertised host:port; peerURL the joiner's advertised peer URL.
// Within one host (from on loopback) every address is reachable.
func checkAdvertisedReach(from, own, peerURL string) error {
	fh, _, err := net.SplitHostPort(from)
	if ip := net.ParseIP(fh); err != nil || ip == nil || ip.IsLoopback() {
		return nil
	}
	if h, _, err := net.SplitHostPort(own); err == nil {
		if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
			return errdefs.FailedPrecondition("this manager advertises %s, a loopback address a manager on another host (%s) cannot reach: restart it with --advertise-addr (or a --listen-addr naming its IP)", own, fh)
		}
	}
	if u, err := url.Parse(peerURL); err == nil {
		if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsLoopback() {
			return errdefs.BadRequest("the joining node advertises %s, a loopback address, from %s on another host: join with --advertise-addr (or a --listen-addr naming its IP)", u.Host, fh)
		}
	}
	return nil
}

// useListen makes plan this node's listen and advertised addresses (the
// API's node address included).
func (d *Daemon) useListen(plan listenPlan) {
	d.listen = plan
	if h, _, err := net.SplitHostPort(plan.Advertise); err == nil {
		d.acfg.Node.Addr = h
	}
}

// memberState is this node's membership of the managers' cluster, kept in
// <data-dir>/member.json (0600): what a restart needs to start the etcd
// member and the join/CA service again. The node key is sealed by the
// keyring (pki.SaveNodeKey); nothing in the file is secret in clear.
type memberState struct {
	Listen    listenPlan `json:"listen"`
	ClusterID string     `json:"clusterID"`
	CertPEM   string     `json:"certPEM"`
	CAPEM     string     `json:"caPEM"`
	Key       keyring.Sealed
	// Join and InitialCluster are how a joining member first starts;
	// etcd ignores them once its data directory holds the member.
	Join           bool         `json:"join,omitempty"`
	InitialCluster []store.Peer `json:"initialCluster,omitempty"`
	// Managers are the managers' join/CA addresses as a sync last
	// answered (roles.go): whom a demoted manager asks once its own
	// store is gone.
	Managers []string `json:"managers,omitempty"`
	// Epoch counts this node's role changes: after a crash half-way
	// through one, the file of the higher epoch (this or worker.json)
	// was written last and wins (convergeRoleFiles).
	Epoch uint64 `json:"roleEpoch,omitempty"`
	// External is set for a manager whose store is an external etcd: it
	// runs no etcd member (external.go).
	External *externalRef `json:"external,omitempty"`
	// ForceNew marks a `swarm init --force-new-cluster` under way
	// (forcenew.go): the member restarts as a cluster of itself until the
	// recovery is finished.
	ForceNew bool `json:"forceNew,omitempty"`
}

func (d *Daemon) memberPath() string { return filepath.Join(d.cfg.DataDir, "member.json") }

func (d *Daemon) saveMember(ms *memberState) error {
	b, err := json.Marshal(ms)
	if err != nil {
		return err
	}
	if err := writeFileSync(d.memberPath(), b, 0o600); err != nil {
		return fmt.Errorf("member state: %w", err)
	}
	return nil
}

// loadMember reads member.json and opens the node key with the master
// key file, for a restart of a cluster manager. A node without the file
// is a lone node (nil).
func (d *Daemon) loadMember() (*store.MemberConfig, error) {
	b, err := os.ReadFile(d.memberPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("member state: %w", err)
	}
	var ms memberState
	if err := json.Unmarshal(b, &ms); err != nil {
		return nil, fmt.Errorf("member state %s is corrupt", d.memberPath())
	}
	if d.cfg.ListenAddr != "" && d.cfg.ListenAddr != ms.Listen.Listen {
		return nil, fmt.Errorf("--listen-addr %s differs from %s, where this manager joined its cluster: hush cannot move a manager yet", d.cfg.ListenAddr, ms.Listen.Listen)
	}
	if !d.plainKey.Exists() {
		if d.lockedKey.Exists() || d.nextKey().Exists() {
			// Autolocked: the node key is sealed under the master key,
			// which waits for `docker swarm unlock` (autolockcluster.go).
			d.useListen(ms.Listen)
			d.lockedMember = &ms
			if err := os.RemoveAll(d.scratchStoreDir()); err != nil {
				return nil, fmt.Errorf("the locked manager's scratch store: %w", err)
			}
			return nil, nil
		}
		return nil, fmt.Errorf("this node is a manager of a cluster but its master key is missing from %s", d.plainKey.Path)
	}
	mk, err := d.plainKey.Load()
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	defer mk.Destroy()
	return d.openMember(&ms, mk)
}

// openMember opens ms's node key with the master key mk and makes ms
// this node's membership, for a restart or an unlock of a manager.
func (d *Daemon) openMember(ms *memberState, mk keyring.MasterKey) (*store.MemberConfig, error) {
	kr, err := keyring.New(mk)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	defer kr.Destroy()
	// A master-key rotation across the managers re-seals the node key
	// under the new key before it installs that key in the key files: the
	// new key is then in the rotating file, sealed under mk.
	d.loadRotatingKey(kr, mk)
	key, err := pki.LoadNodeKey(context.Background(), func(context.Context) ([]byte, error) {
		return kr.Open(ms.Key, pki.NodeKeyAAD(d.nodeID))
	})
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	cert, err := pki.TLSCertificate([]byte(ms.CertPEM), key)
	if err != nil {
		return nil, fmt.Errorf("manager certificate: %w", err)
	}
	d.useListen(ms.Listen)
	d.member, d.nodeKey = ms, key
	d.cert.Store(cert)
	return d.memberConfig(ms, key)
}

// memberConfig is the store's member configuration for ms; the key PEM is
// wiped by openStore.
func (d *Daemon) memberConfig(ms *memberState, key *ecdsa.PrivateKey) (*store.MemberConfig, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	keyring.Wipe(der)
	adv, lis := ms.Listen.peerURLs()
	mc := &store.MemberConfig{
		PeerURL: adv, ListenPeerURL: lis,
		TLS:            store.MemberTLS{CertPEM: []byte(ms.CertPEM), KeyPEM: keyPEM, CAPEM: []byte(ms.CAPEM), CRL: d.savedCRL()},
		Join:           ms.Join,
		InitialCluster: ms.InitialCluster,
		ClusterToken:   ms.ClusterID,
	}
	if ms.ForceNew {
		// A forced restart is of a member whose data dir holds it, where
		// the join settings are ignored anyway.
		mc.Join, mc.InitialCluster, mc.ForceNewCluster = false, nil, true
	}
	return mc, nil
}

// issue certifies csr's key for nodeID in role under c's CA, with the
// cluster's certificate lifetime: every node certificate hush hands out.
func (d *Daemon) issue(c *cluster.Cluster, csr []byte, nodeID string, role pki.Role) (*pki.Issued, error) {
	now := time.Now()
	roots, err := pki.ParseRootBundle([]byte(c.CACert), now)
	if err != nil {
		return nil, err
	}
	signer, err := c.CASigner(&d.keys)
	if err != nil {
		return nil, err
	}
	ca, err := pki.NewCA(roots[0], signer, nil)
	if err != nil {
		return nil, err
	}
	iss, err := ca.Issue(pki.IssueRequest{CSR: csr, NodeID: nodeID, ClusterID: c.ID, Role: role,
		Expiry: c.Spec.CAConfig.NodeCertExpiry, Now: now})
	if err != nil {
		return nil, err
	}
	// etcd refuses a manager certificate by serial (certrefusal.go).
	if err := d.noteIssued(iss, nodeID, role); err != nil {
		return nil, err
	}
	return iss, nil
}

// issueManager is issue for a manager, with the key the master key is
// wrapped to (hush's managers hold P-256 keys).
func (d *Daemon) issueManager(c *cluster.Cluster, csr []byte, nodeID string) (*pki.Issued, *ecdsa.PublicKey, error) {
	iss, err := d.issue(c, csr, nodeID, pki.RoleManager)
	if err != nil {
		return nil, nil, err
	}
	pub, ok := iss.Leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, nil, errdefs.BadRequest("hush's managers need an ECDSA P-256 node key")
	}
	return iss, pub, nil
}

// sealNodeKey is pki's SealKeyFunc: the key sealed by the keyring under
// the master key, bound to this node.
func (d *Daemon) sealNodeKey(out *keyring.Sealed) pki.SealKeyFunc {
	return func(_ context.Context, der []byte) error {
		s, err := d.keys.Seal(der, pki.NodeKeyAAD(d.nodeID))
		if err != nil {
			return err
		}
		*out = s
		return nil
	}
}

// becomeManagerLocked makes the active lone node the first manager of a
// cluster that others can join: it certifies itself, records the
// membership, reopens its store as a member listening on the peer port,
// records the member's real peer URL and starts the join/CA service.
func (d *Daemon) becomeManagerLocked(ctx context.Context, plan listenPlan) error {
	c, err := cluster.Get(ctx, d.store)
	if err != nil {
		return err
	}
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	iss, err := d.issue(&c, csr, d.nodeID, pki.RoleManager)
	if err != nil {
		return err
	}
	ms := &memberState{Listen: plan, ClusterID: c.ID, CertPEM: string(iss.PEM), CAPEM: c.CACert, External: d.externalRef()}
	// The restarted member elects itself before it can write.
	if err := d.enterMemberLocked(ctx, ms, key, false, &c.Spec.Raft); err != nil {
		return err
	}
	adv, _ := plan.peerURLs()
	if err := d.store.Members().SetPeerURL(ctx, adv); err != nil {
		return err
	}
	return nil
}

// enterMemberLocked keeps ms with the node key sealed in member.json,
// reopens the store as that member (wipe: from empty data, for a join) and
// waits until it has a quorum. The keyring must hold the master key.
//
// raft is the cluster spec's raft settings (nil: unknown, the default
// spec's; a joiner could read the spec only once its member has caught
// up, so the manager admitting it sends them). The member's etcd starts
// with their timing, as it does at every later start: etcd reads it at
// start only, and a first start on other timing (DefaultClusterTuning's
// 2.5 s election) made a young cluster's failovers slow.
func (d *Daemon) enterMemberLocked(ctx context.Context, ms *memberState, key *ecdsa.PrivateKey, wipe bool, raft *swarm.RaftConfig) error {
	if err := pki.SaveNodeKey(ctx, d.sealNodeKey(&ms.Key), key); err != nil {
		return err
	}
	d.startWithSpecTuning(raft)
	if err := d.saveMember(ms); err != nil {
		return err
	}
	mc, err := d.memberConfig(ms, key)
	if err != nil {
		return err
	}
	cert, err := pki.TLSCertificate([]byte(ms.CertPEM), key)
	if err != nil {
		clear(mc.TLS.KeyPEM)
		return fmt.Errorf("manager certificate: %w", err)
	}
	d.useListen(ms.Listen)
	d.member, d.nodeKey = ms, key
	d.cert.Store(cert)
	if err := d.reopenStore(ctx, mc, wipe); err != nil {
		return err
	}
	return d.awaitQuorum(ctx)
}

// newKeyAndCSR makes a node key and the CSR that certifies it.
func newKeyAndCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := pki.NewNodeKey()
	if err != nil {
		return nil, nil, err
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// listenOnExisting honours --listen-addr on a node whose cluster exists but
// which has not listened yet (a lone node restarted with the flag, or a
// first manager that crashed before it recorded its membership): it
// becomes the first manager others can join, as init would have made it.
func (d *Daemon) listenOnExisting(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.listen.enabled() || d.member != nil {
		return nil
	}
	switch d.state {
	case swarm.LocalNodeStateInactive:
		return nil // init or join will use it
	case swarm.LocalNodeStateLocked:
		return nil // after the unlock (listenAfterUnlock)
	}
	if err := d.reserveDispatchLocked(d.listen); err != nil {
		return err
	}
	defer d.releaseUnservedDispatchLocked()
	if err := d.becomeManagerLocked(ctx, d.listen); err != nil {
		return fmt.Errorf("becoming a manager on %s: %w", d.listen.Listen, err)
	}
	return d.activateLocked(d.mk)
}
