package store

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"golang.org/x/sys/unix"
)

// MemberConfig makes the embedded member one member of a cluster of
// managers (issue 9). Nil keeps a lone member that opens no socket.
type MemberConfig struct {
	// PeerURL is what other members dial to reach this one
	// (https://host:port); it is also where the member listens unless
	// ListenPeerURL says otherwise. It identifies the member in the
	// cluster: a retried join finds its earlier learner by it.
	PeerURL string
	// ListenPeerURL is the peer listener when it differs from PeerURL
	// (e.g. https://0.0.0.0:2380 behind an advertised address).
	ListenPeerURL string
	// ClientURL, when set, serves etcd's client API (https only) to other
	// managers' tools; hushd itself needs none (it talks to its own member
	// in-process), so the default opens no client port.
	ClientURL string
	// TLS is the member's mutual TLS under the cluster CA, used for both
	// the peer and the client listener.
	TLS MemberTLS
	// Join starts the member as etcd's initial-cluster-state=existing with
	// InitialCluster from Members.AddLearner; otherwise the member founds a
	// new cluster of itself. Both are ignored when the data directory
	// already holds a member (a restart).
	Join bool
	// InitialCluster is the cluster a joining member starts from (what
	// AddLearner returned, this member included).
	InitialCluster []Peer
	// ForceNewCluster restarts from this member's data as a cluster of
	// this member alone (every other member is dropped): the recovery
	// after losing quorum for good, as swarm init --force-new-cluster.
	ForceNewCluster bool
	// ClusterToken tells clusters apart on the wire so that a member of
	// another cluster cannot join this one by mistake; every member of a
	// cluster must use the same value (the cluster ID).
	ClusterToken string
}

// Peer is a member as the initial cluster of a joining member names it.
type Peer struct {
	Name    string
	PeerURL string
}

// MemberTLS is the PEM material of a member's mutual TLS. etcd reads
// certificates from files at each handshake and accepts no *tls.Config, so
// the store puts this material into anonymous in-memory files
// (memfd_create): the key never touches a disk, and etcd reads it through
// /proc/self/fd only while the store is open.
type MemberTLS struct {
	// CertPEM is the node's certificate chain; KeyPEM its private key.
	// The store copies both: the caller wipes its KeyPEM after Open.
	CertPEM, KeyPEM []byte
	// CAPEM is the bundle of trusted roots.
	CAPEM []byte
	// CRL is the DER revocation list of refused certificates etcd checks
	// on each connection (Members.SetCRL replaces it); empty starts with
	// an empty list.
	CRL []byte
	// Name is the DNS name every peer's certificate must carry, both as a
	// server and as a client (default "swarm-manager", the name pki puts in
	// every manager certificate): a worker's certificate under the same CA
	// is refused.
	Name string
}

var tlsFileNames = []string{"hush-cert", "hush-key", "hush-ca"}

func (t MemberTLS) contents() [][]byte { return [][]byte{t.CertPEM, t.KeyPEM, t.CAPEM} }

// DefaultClusterTuning is the raft timing a member of a cluster uses when
// it is opened with none: a loaded 2-core manager can stall for a few
// hundred milliseconds, and etcd's defaults (100 ms / 1 s) turn such a stall
// into a needless election. hushd always passes the cluster spec's timing
// (Swarm's default ticks: 100 ms / 1 s), from a member's first start on;
// this applies to a spec whose ticks are both zero.
var DefaultClusterTuning = Tuning{Heartbeat: 250 * time.Millisecond, ElectionTimeout: 2500 * time.Millisecond}

// memfds holds the in-memory files behind etcd's TLS file paths.
type memfds []*os.File

// replace swaps the content of every file for the matching new one,
// each atomically (dup3 onto the same descriptor number, so the path etcd
// reads stays valid). A handshake between two swaps may read a new
// certificate with the old key and fail; raft redials.
func (m memfds) replace(names []string, contents [][]byte) error {
	for i, b := range contents {
		f, _, err := memFile(names[i], b)
		if err != nil {
			return err
		}
		err = unix.Dup3(int(f.Fd()), int(m[i].Fd()), unix.O_CLOEXEC)
		_ = f.Close()
		if err != nil {
			return fmt.Errorf("store: replace %s: %w", names[i], err)
		}
	}
	return nil
}

func (m memfds) close() {
	for _, f := range m {
		_ = f.Close()
	}
}

// memFile writes b into an anonymous in-memory file and returns it with
// the path etcd can read it by.
func memFile(name string, b []byte) (*os.File, string, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, "", fmt.Errorf("store: memfd for %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return nil, "", fmt.Errorf("store: write memfd %s: %w", name, err)
	}
	return f, fmt.Sprintf("/proc/self/fd/%d", fd), nil
}

func (m *MemberConfig) check() error {
	if m.PeerURL == "" {
		return errors.New("store: a cluster member needs a peer URL")
	}
	for _, u := range []string{m.PeerURL, m.ListenPeerURL, m.ClientURL} {
		if u == "" {
			continue
		}
		p, err := url.Parse(u)
		if err != nil {
			return fmt.Errorf("store: member URL %q: %w", u, err)
		}
		// Every socket a member opens carries the cluster's data and raft
		// traffic: TLS always, even on loopback.
		if p.Scheme != "https" {
			return fmt.Errorf("store: member URL %q must use https", u)
		}
		if _, _, err := net.SplitHostPort(p.Host); err != nil {
			return fmt.Errorf("store: member URL %q needs host:port: %w", u, err)
		}
	}
	if len(m.TLS.CertPEM) == 0 || len(m.TLS.KeyPEM) == 0 || len(m.TLS.CAPEM) == 0 {
		return errors.New("store: a cluster member needs its certificate, key and the cluster CA")
	}
	if m.Join && len(m.InitialCluster) == 0 {
		return errors.New("store: joining a cluster needs the member list AddLearner returned")
	}
	if m.Join && m.ForceNewCluster {
		return errors.New("store: a member cannot both join a cluster and force a new one")
	}
	return nil
}

// configure turns cfg (a lone member's) into a cluster member's. The
// returned files back etcd's TLS paths and are closed with the store.
func (m *MemberConfig) configure(cfg *embed.Config, name string) (memfds, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	var files memfds
	paths := make([]string, 3)
	for i, b := range m.TLS.contents() {
		f, p, err := memFile(tlsFileNames[i], b)
		if err != nil {
			files.close()
			return nil, err
		}
		files = append(files, f)
		paths[i] = p
	}
	crl := m.TLS.CRL
	if len(crl) == 0 {
		var err error
		if crl, err = placeholderCRL(); err != nil {
			files.close()
			return nil, fmt.Errorf("store: revocation list: %w", err)
		}
	} else if _, err := x509.ParseRevocationList(crl); err != nil {
		files.close()
		return nil, fmt.Errorf("store: revocation list: %w", err)
	}
	f, crlPath, err := memFile(crlFileName, crl)
	if err != nil {
		files.close()
		return nil, err
	}
	files = append(files, f)
	allowed := orDefault(m.TLS.Name, "swarm-manager")
	info := func() (ti transport.TLSInfo) {
		ti.CertFile, ti.KeyFile, ti.TrustedCAFile = paths[0], paths[1], paths[2]
		ti.ClientCertAuth = true
		// Managers are known by certificate, not by address: the peer's
		// IP is not in its certificate (pki issues names, not IPs).
		ti.SkipClientSANVerify = true
		ti.ServerName = allowed
		ti.AllowedHostnames = []string{allowed}
		ti.MinVersion = tls.VersionTLS13
		// Refused manager certificates (a demoted or removed node's),
		// re-read by etcd on every connection: see crl.go.
		ti.CRLFile = crlPath
		return ti
	}
	cfg.PeerTLSInfo = info()
	adv, _ := url.Parse(m.PeerURL)
	listen := adv
	if m.ListenPeerURL != "" {
		listen, _ = url.Parse(m.ListenPeerURL)
	}
	cfg.AdvertisePeerUrls = []url.URL{*adv}
	cfg.ListenPeerUrls = []url.URL{*listen}
	if m.ClientURL != "" {
		cu, _ := url.Parse(m.ClientURL)
		cfg.ClientTLSInfo = info()
		cfg.ListenClientUrls = []url.URL{*cu}
		cfg.AdvertiseClientUrls = []url.URL{*cu}
	}
	cfg.InitialClusterToken = orDefault(m.ClusterToken, "hush")
	if m.Join {
		parts := make([]string, 0, len(m.InitialCluster))
		for _, p := range m.InitialCluster {
			parts = append(parts, p.Name+"="+p.PeerURL)
		}
		cfg.InitialCluster = strings.Join(parts, ",")
		cfg.ClusterState = embed.ClusterStateFlagExisting
	} else {
		cfg.InitialCluster = name + "=" + adv.String()
		cfg.ClusterState = embed.ClusterStateFlagNew
	}
	cfg.ForceNewCluster = m.ForceNewCluster
	// Refuse a removal that would leave fewer started members than a
	// quorum (etcd's own guard, behind Members.Remove's).
	cfg.StrictReconfigCheck = true
	return files, nil
}

// Timing is the raft timing this member's etcd runs with: its heartbeat
// interval and election timeout, as etcd was started (it reads them at
// start only). An external store's member reports zeros.
func (m *Members) Timing() (heartbeat, election time.Duration) {
	if m == nil || m.srv == nil {
		return 0, 0
	}
	tick := time.Duration(m.srv.Cfg.TickMs) * time.Millisecond
	return tick, time.Duration(m.srv.Cfg.ElectionTicks) * tick
}
