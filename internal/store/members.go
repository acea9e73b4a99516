package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/etcdserver"
)

// Member is one member of the managers' etcd cluster as this member sees
// it.
type Member struct {
	// ID is etcd's member ID in hex, as etcd prints it.
	ID string
	// Name is empty for a learner that has not started yet.
	Name     string
	PeerURLs []string
	Learner  bool
	// Leader is the raft leader as this member knows it.
	Leader bool
	// Reachable: this member completed a TLS request to the member's peer
	// listener just now (always true for itself).
	Reachable bool
}

// Members changes the cluster's membership. Every change goes through
// raft, so it needs a quorum like any write.
type Members struct {
	s     *Store
	srv   *etcdserver.EtcdServer
	mu    sync.Mutex
	tls   MemberTLS
	files memfds
	// probeTimeout bounds each reachability probe.
	probeTimeout time.Duration
	// promoteBackoff is the first wait between promotion attempts.
	promoteBackoff time.Duration
	// ext is, on an external etcd, this manager's node ID: the methods
	// then keep hush's manager registry instead (extmembers.go).
	ext string
}

// Swarm's refusals of a demotion, word for word.
const (
	lastManagerMsg = "attempting to demote the last manager of the swarm"
	quorumLossMsg  = "can't remove member from the raft: this would result in a loss of quorum"
)

// List returns the members, ordered by ID, with the reachability of each
// probed concurrently (each probe bounded).
func (m *Members) List(ctx context.Context) ([]Member, error) {
	if m.ext != "" {
		return m.extList(ctx)
	}
	resp, err := m.s.cli.MemberList(ctx)
	if err != nil {
		return nil, wrapEtcd(err)
	}
	self, lead := uint64(m.srv.MemberID()), m.srv.Lead()
	out := make([]Member, len(resp.Members))
	var wg sync.WaitGroup
	for i, pm := range resp.Members {
		out[i] = Member{
			ID:        fmt.Sprintf("%x", pm.ID),
			Name:      pm.Name,
			PeerURLs:  slices.Clone(pm.PeerURLs),
			Learner:   pm.IsLearner,
			Leader:    pm.ID == lead,
			Reachable: pm.ID == self,
		}
		if pm.ID == self {
			continue
		}
		wg.Add(1)
		go func(i int, urls []string) {
			defer wg.Done()
			out[i].Reachable = m.probe(ctx, urls)
		}(i, pm.PeerURLs)
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b Member) int { return cmpHex(a.ID, b.ID) })
	return out, nil
}

func cmpHex(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// probe asks a peer listener for etcd's version over mutual TLS.
func (m *Members) probe(ctx context.Context, urls []string) bool {
	cfg, err := m.clientTLS()
	if err != nil {
		return false
	}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: m.timeout()}
	for _, u := range urls {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/version", nil)
		if err != nil {
			continue
		}
		resp, err := c.Do(req)
		if err != nil {
			continue
		}
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return true
		}
	}
	return false
}

func (m *Members) timeout() time.Duration {
	if m.probeTimeout > 0 {
		return m.probeTimeout
	}
	return time.Second
}

// clientTLS is the probe's client configuration, built from the same
// material etcd's peer transport uses, with the same checks.
func (m *Members) clientTLS() (*tls.Config, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cert, err := tls.X509KeyPair(m.tls.CertPEM, m.tls.KeyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(m.tls.CAPEM) {
		return nil, errors.New("store: no CA certificate in the member's bundle")
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   orDefault(m.tls.Name, "swarm-manager"),
	}, nil
}

// RenewTLS makes the member use new TLS material (a renewed certificate,
// a rotated CA bundle) from its next handshake on; established peer
// connections keep theirs. The material is checked first: a certificate
// that does not match its key changes nothing.
func (m *Members) RenewTLS(t MemberTLS) error {
	if m.ext != "" {
		return nil // the user's etcd: hush's certificate is not its client's
	}
	if _, err := tls.X509KeyPair(t.CertPEM, t.KeyPEM); err != nil {
		return fmt.Errorf("store: renewed member certificate: %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(t.CAPEM) {
		return errors.New("store: renewed member CA bundle holds no certificate")
	}
	t = MemberTLS{CertPEM: slices.Clone(t.CertPEM), KeyPEM: slices.Clone(t.KeyPEM), CAPEM: slices.Clone(t.CAPEM), Name: m.tls.Name}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.files.replace(tlsFileNames, t.contents()); err != nil {
		return err
	}
	clear(m.tls.KeyPEM)
	m.tls = t
	return nil
}

// AddLearner adds the member that will listen on peerURL as a learner and
// returns it with the initial cluster it must start from (itself
// included, named name). A retried join (the joiner died, or its answer was
// lost) finds the member it added before instead of failing: etcd refuses a
// second member with the same peer URL, and a stale learner would
// otherwise block every later join. Only one learner at a time: etcd
// refuses a second one, and the refusal says a manager is already joining.
func (m *Members) AddLearner(ctx context.Context, name, peerURL string) (Member, []Peer, error) {
	if m.ext != "" {
		mem, err := m.extRegister(ctx, name)
		return mem, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, maxMembershipWait)
	defer cancel()
	if err := m.retry(ctx, "add learner", func() (bool, error) {
		_, err := m.s.cli.MemberAddAsLearner(ctx, []string{peerURL})
		switch {
		case err == nil, etcdIs(err, rpctypes.ErrPeerURLExist), etcdIs(err, rpctypes.ErrMemberExist):
			// A retry: etcd derives the ID from the peer URLs and the
			// second, so a quick retry collides on the ID, a later one
			// on the URL; the lookup below finds the earlier member.
			return true, nil
		case etcdIs(err, rpctypes.ErrTooManyLearners):
			return true, errdefs.Unavailable("another manager is joining the swarm; retry when it has caught up")
		case etcdIs(err, rpctypes.ErrUnhealthy):
			// etcd adds a member only once this one has been connected
			// to every voter for 5 s: after a join or a restart, wait.
			return false, err
		}
		return true, fmt.Errorf("store: add learner: %w", wrapEtcd(err))
	}); err != nil {
		return Member{}, nil, err
	}
	// Read the list back (linearizably) rather than trusting the add's
	// answer: on a retry the add answered nothing.
	resp, err := m.s.cli.MemberList(ctx)
	if err != nil {
		return Member{}, nil, wrapEtcd(err)
	}
	var added *etcdserverpb.Member
	var peers []Peer
	for _, pm := range resp.Members {
		if slices.Contains(pm.PeerURLs, peerURL) {
			added = pm
			continue
		}
		// A member that never started has no name; etcd's own member add
		// leaves it out of the new member's initial cluster too.
		if pm.Name != "" {
			for _, u := range pm.PeerURLs {
				peers = append(peers, Peer{Name: pm.Name, PeerURL: u})
			}
		}
	}
	if added == nil {
		return Member{}, nil, fmt.Errorf("store: member with peer URL %s vanished after its add: %w", peerURL, errdefs.ErrConflict)
	}
	if added.Name != "" && added.Name != name {
		return Member{}, nil, errdefs.AlreadyExists("peer URL %s already belongs to manager %s", peerURL, added.Name)
	}
	peers = append(peers, Peer{Name: name, PeerURL: peerURL})
	return Member{ID: fmt.Sprintf("%x", added.ID), Name: added.Name, PeerURLs: slices.Clone(added.PeerURLs), Learner: added.IsLearner}, peers, nil
}

// Promote makes the learner id a voter once it has caught up with the
// leader, retrying etcd's "not in sync" with a doubling wait (capped at 2
// s) until ctx ends. Promoting a member that already votes succeeds: a
// retried join must not fail on its own earlier success.
func (m *Members) Promote(ctx context.Context, id string) error {
	if m.ext != "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, maxMembershipWait)
	defer cancel()
	mid, err := parseMemberID(id)
	if err != nil {
		return err
	}
	return m.retry(ctx, "promote "+id, func() (bool, error) {
		_, err := m.s.cli.MemberPromote(ctx, mid)
		switch {
		case err == nil, etcdIs(err, rpctypes.ErrMemberNotLearner):
			return true, nil
		case etcdIs(err, rpctypes.ErrMemberNotFound):
			return true, errdefs.ControlNotFound("member %s not found", id)
		case etcdIs(err, rpctypes.ErrMemberLearnerNotReady), isNoLeader(err):
			return false, err
		}
		return true, fmt.Errorf("store: promote %s: %w", id, wrapEtcd(err))
	})
}

// maxMembershipWait bounds a membership change's retries whatever the
// caller's context: a learner that never starts must not keep a join (or
// a caller with context.Background) waiting for ever.
const maxMembershipWait = 2 * time.Minute

// retry runs try until it says done, waiting between tries from
// promoteBackoff doubling to 2 s, until ctx ends; the last transient error
// is then returned as unavailable.
func (m *Members) retry(ctx context.Context, what string, try func() (done bool, err error)) error {
	wait := m.promoteBackoff
	if wait <= 0 {
		wait = 100 * time.Millisecond
	}
	for {
		done, err := try()
		if done {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("store: %s: %w: %w (last: %w)", what, errdefs.ErrUnavailable, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// Remove takes member id out of the cluster (a demotion). As Swarm does,
// it refuses to remove the last voter, and a voter whose removal would
// leave fewer reachable voters than the new cluster's quorum; a learner can
// always go. Removing this member itself makes etcd stop it: its data
// directory must not be reused (the daemon wipes it).
func (m *Members) Remove(ctx context.Context, id string) error {
	if m.ext != "" {
		return m.extRemove(ctx, id)
	}
	mid, err := parseMemberID(id)
	if err != nil {
		return err
	}
	if err := m.CheckRemove(ctx, id); err != nil {
		return err
	}
	// etcd counts a voter as active only once it has been connected for
	// 5 s (its strict reconfiguration check, ErrUnhealthy): a member that
	// has just (re)started, the removed one included, makes a removal our
	// reachability check allows fail for that long. Retried, bounded.
	rctx, cancel := context.WithTimeout(ctx, removeSettle)
	defer cancel()
	var last error
	err = m.retry(rctx, "remove member", func() (bool, error) {
		_, err := m.s.cli.MemberRemove(rctx, mid)
		switch {
		case err == nil:
			return true, nil
		case etcdIs(err, rpctypes.ErrMemberNotFound):
			// Removed by an earlier try whose answer was lost.
			return true, nil
		case etcdIs(err, rpctypes.ErrUnhealthy):
			last = err
			return false, err
		}
		last = nil
		switch {
		case etcdIs(err, rpctypes.ErrMemberNotEnoughStarted):
			return true, errdefs.FailedPrecondition(quorumLossMsg)
		}
		return true, fmt.Errorf("store: remove member %s: %w", id, wrapEtcd(err))
	})
	if err != nil && last != nil && ctx.Err() == nil {
		return errdefs.FailedPrecondition(quorumLossMsg)
	}
	return err
}

// removeSettle bounds Remove's wait for etcd's 5 s health interval.
const removeSettle = 8 * time.Second

// CheckRemove says whether Remove(id) would be refused (Swarm's texts),
// without changing anything: a demotion is checked before its node
// record changes, so a refused one leaves the record as it was. Members
// named in pending (node IDs whose demotion is recorded but not carried
// out yet) count as removed already.
func (m *Members) CheckRemove(ctx context.Context, id string, pending ...string) error {
	if m.ext != "" {
		return nil // etcd's quorum is its operator's; the last manager is the caller's check
	}
	if _, err := parseMemberID(id); err != nil {
		return err
	}
	list, err := m.List(ctx)
	if err != nil {
		return err
	}
	var target *Member
	voters, reachable := 0, 0
	for i := range list {
		if list[i].ID == id {
			target = &list[i]
		}
		if list[i].Learner || list[i].ID != id && list[i].Name != "" && slices.Contains(pending, list[i].Name) {
			continue
		}
		voters++
		if list[i].ID != id && list[i].Reachable {
			reachable++
		}
	}
	if target == nil {
		return errdefs.ControlNotFound("member %s not found", id)
	}
	if !target.Learner {
		if voters <= 1 {
			return errdefs.FailedPrecondition(lastManagerMsg)
		}
		// The members left must be able to commit on their own: a quorum
		// of the smaller cluster reachable without the member (swarmkit's
		// rule; etcd's strict reconfiguration check also refuses a removal
		// the current quorum cannot commit).
		if reachable < (voters-1)/2+1 {
			return errdefs.FailedPrecondition(quorumLossMsg)
		}
	}
	return nil
}

// ByName finds the member named name (a node ID), learners included; ok
// is false when no member has that name, or when it is a learner that
// has not started yet and so has no name: look it up by peer URL then.
func (m *Members) ByName(ctx context.Context, name, peerURL string) (Member, bool, error) {
	if m.ext != "" {
		return m.extByName(ctx, name)
	}
	resp, err := m.s.cli.MemberList(ctx)
	if err != nil {
		return Member{}, false, wrapEtcd(err)
	}
	for _, pm := range resp.Members {
		if pm.Name == name && name != "" || peerURL != "" && slices.Contains(pm.PeerURLs, peerURL) {
			return Member{ID: fmt.Sprintf("%x", pm.ID), Name: pm.Name, PeerURLs: slices.Clone(pm.PeerURLs), Learner: pm.IsLearner}, true, nil
		}
	}
	return Member{}, false, nil
}

func parseMemberID(id string) (uint64, error) {
	var v uint64
	if _, err := fmt.Sscanf(id, "%x", &v); err != nil || v == 0 || fmt.Sprintf("%x", v) != id {
		return 0, errdefs.InvalidArgument("invalid member ID %q", id)
	}
	return v, nil
}

// etcdIs matches an etcd error whether it arrives as the client's value or
// as the server's gRPC status.
func etcdIs(err, target error) bool {
	return errors.Is(err, target) || rpctypes.ErrorDesc(err) == rpctypes.ErrorDesc(target)
}

// SetPeerURL changes the peer URL the cluster records for this member. A
// node that ran alone (its member advertised a placeholder, having no peer
// listener) and starts listening records the URL its peers will dial; until
// then a joining member's initial cluster would name an address nobody
// listens on. A URL already recorded is left as it is.
func (m *Members) SetPeerURL(ctx context.Context, peerURL string) error {
	if m.ext != "" {
		_, err := m.extRegister(ctx, m.ext)
		return err
	}
	self := uint64(m.srv.MemberID())
	resp, err := m.s.cli.MemberList(ctx)
	if err != nil {
		return wrapEtcd(err)
	}
	for _, pm := range resp.Members {
		if pm.ID == self && slices.Equal(pm.PeerURLs, []string{peerURL}) {
			return nil
		}
	}
	if _, err := m.s.cli.MemberUpdate(ctx, self, []string{peerURL}); err != nil {
		return fmt.Errorf("store: update peer URL: %w", wrapEtcd(err))
	}
	return nil
}

// SelfID is this member's ID in hex, as List shows it.
func (m *Members) SelfID() string {
	if m.ext != "" {
		return m.ext
	}
	return fmt.Sprintf("%x", uint64(m.srv.MemberID()))
}

// VotesLocally reports whether this member is a voter in its own view of
// the membership, as its data holds it (no quorum needed): false for a
// learner, and for a member whose data holds no membership yet (a
// learner that never caught up). A member started with ForceNewCluster
// from such data would be a cluster without a voter, or of its empty
// data.
func (m *Members) VotesLocally() bool {
	if m.ext != "" {
		return true
	}
	self := m.srv.Cluster().Member(m.srv.MemberID())
	return self != nil && !self.IsLearner
}

// IsVoter reports whether this member votes (a joined learner has been
// promoted), from a linearizable read of the membership.
func (m *Members) IsVoter(ctx context.Context) (bool, error) {
	if m.ext != "" {
		return true, nil
	}
	resp, err := m.s.cli.MemberList(ctx)
	if err != nil {
		return false, wrapEtcd(err)
	}
	self := uint64(m.srv.MemberID())
	for _, pm := range resp.Members {
		if pm.ID == self {
			return !pm.IsLearner, nil
		}
	}
	return false, nil
}
