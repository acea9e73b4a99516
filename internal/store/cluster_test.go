package store_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/pki/pkitest"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// testTuning keeps elections quick in tests; it is also hushd's timing
// under Swarm's default raft ticks (the daemon passes the spec's).
var testTuning = store.Tuning{Heartbeat: 100 * time.Millisecond, ElectionTimeout: time.Second}

// wait bounds every wait for the cluster to converge under -race on a
// loaded machine.
const wait = 30 * time.Second

// testCA issues manager certificates under one cluster CA.
type testCA struct{ *pkitest.CA }

func newTestCA(t *testing.T) testCA { return testCA{pkitest.NewCA(t)} }

// issue is a member's TLS material for a new node in role.
func (c testCA) issue(t *testing.T, role pki.Role) store.MemberTLS {
	t.Helper()
	n := c.Issue(t, role, "")
	der, err := x509.MarshalECPrivateKey(n.Key)
	if err != nil {
		t.Fatal(err)
	}
	return store.MemberTLS{CertPEM: n.PEM, KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), CAPEM: c.PEM}
}

// freeURL reserves a loopback port and returns it as a peer URL. The port
// is released before etcd binds it; another process taking it in between
// fails the test loudly, never silently.
func freeURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "https://" + l.Addr().String()
}

// node is one manager of a test cluster: its data survives Close.
type node struct {
	name string
	dir  string
	cfg  store.MemberConfig
	s    *store.Store
}

type cluster struct {
	t     *testing.T
	keys  store.Keys
	ca    testCA
	nodes []*node
}

func newCluster(t *testing.T) *cluster {
	return &cluster{t: t, keys: storetest.NewKeys(t), ca: newTestCA(t)}
}

func (c *cluster) newNode(name string) *node {
	c.t.Helper()
	n := &node{name: name, dir: c.t.TempDir(), cfg: store.MemberConfig{PeerURL: freeURL(c.t), TLS: c.ca.issue(c.t, pki.RoleManager), ClusterToken: c.ca.Cluster}}
	c.nodes = append(c.nodes, n)
	c.t.Cleanup(func() { n.close(c.t) })
	return n
}

// open starts the node's member; it returns without waiting for a quorum.
func (c *cluster) open(n *node) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	cfg := n.cfg
	s, err := store.OpenEmbedded(ctx, store.EmbeddedConfig{Dir: n.dir, Name: n.name, EtcdLogLevel: "error", Keys: c.keys, Tuning: testTuning, StartTimeout: wait, Member: &cfg})
	if err != nil {
		c.t.Fatalf("open %s: %v", n.name, err)
	}
	n.s = s
}

func (n *node) close(t *testing.T) {
	if n.s == nil {
		return
	}
	if err := n.s.Close(); err != nil {
		t.Errorf("close %s: %v", n.name, err)
	}
	n.s = nil
}

func (n *node) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-n.s.Ready():
	case <-time.After(wait):
		t.Fatalf("%s did not reach a quorum within %s", n.name, wait)
	}
}

// join adds n through via (a learner, started, then promoted) as the
// swarm join endpoint will.
func (c *cluster) join(via, n *node) store.Member {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	m, peers, err := via.s.Members().AddLearner(ctx, n.name, n.cfg.PeerURL)
	if err != nil {
		c.t.Fatalf("add learner %s: %v", n.name, err)
	}
	if !m.Learner {
		c.t.Fatalf("added %s is not a learner: %+v", n.name, m)
	}
	n.cfg.Join, n.cfg.InitialCluster = true, peers
	c.open(n)
	n.waitReady(c.t)
	if v, err := n.s.Members().IsVoter(ctx); err != nil || v {
		c.t.Fatalf("%s votes before its promotion: %v %v", n.name, v, err)
	}
	if err := via.s.Members().Promote(ctx, m.ID); err != nil {
		c.t.Fatalf("promote %s: %v", n.name, err)
	}
	if v, err := n.s.Members().IsVoter(ctx); err != nil || !v {
		c.t.Fatalf("%s does not vote after its promotion: %v %v", n.name, v, err)
	}
	return m
}

// A member that first ran with a placeholder peer URL records the one its
// peers will dial; recording it again changes nothing.
func TestSetPeerURL(t *testing.T) {
	c := newCluster(t)
	n := c.newNode("m1")
	c.open(n)
	n.waitReady(t)
	ctx := ctxT(t)
	if id := n.s.Members().SelfID(); id != memberByName(t, n.s, "m1").ID {
		t.Fatalf("SelfID %s is not the member's", id)
	}
	next := freeURL(t)
	for range 2 {
		if err := n.s.Members().SetPeerURL(ctx, next); err != nil {
			t.Fatal(err)
		}
		if got := memberByName(t, n.s, "m1").PeerURLs; len(got) != 1 || got[0] != next {
			t.Fatalf("peer URLs %v, want [%s]", got, next)
		}
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

func memberByName(t *testing.T, s *store.Store, name string) store.Member {
	t.Helper()
	list, err := s.Members().List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range list {
		if m.Name == name {
			return m
		}
	}
	t.Fatalf("no member %s in %+v", name, list)
	return store.Member{}
}

// TestManagersCluster runs one three-manager cluster through its life:
// formation by learner join, reads across members, the orchestrator's
// election, the loss and return of quorum, refused demotions and the
// recovery from one member's data. The steps share one cluster because
// forming it is the slow part.
func TestManagersCluster(t *testing.T) {
	c := newCluster(t)
	n1, n2, n3 := c.newNode("m1"), c.newNode("m2"), c.newNode("m3")
	c.open(n1)
	n1.waitReady(t)
	ctx := ctxT(t)
	tb := func(n *node) *store.Table { return n.s.Table("things") }
	var acked []string
	write := func(n *node, id string) error {
		_, err := tb(n).Create(ctx, id, id, []byte("value-"+id))
		if err == nil {
			acked = append(acked, id)
		}
		return err
	}
	readAll := func(n *node) {
		t.Helper()
		for _, id := range acked {
			o, err := tb(n).Get(ctx, id)
			if err != nil || string(o.Value) != "value-"+id {
				t.Fatalf("%s lost acknowledged write %s: %+v %v", n.name, id, o, err)
			}
		}
	}
	if err := write(n1, "before-join"); err != nil {
		t.Fatal(err)
	}
	// Each step builds on the last: stop at the first failure. Each step's
	// calls are bounded by wait from the step's start: one bound from the
	// test's start covered every step's waits together, and the whole
	// life (three members formed, quorum lost and back, two restarts)
	// takes more than wait under -race on a loaded 2-core machine, where
	// a later step's call then ended in "context deadline exceeded".
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, func(t *testing.T) {
			ctx = ctxT(t)
			f(t)
		}) {
			t.FailNow()
		}
	}

	step("join", func(t *testing.T) {
		c.join(n1, n2)
		// A retried join finds the learner its first try added.
		m1, _, err := n1.s.Members().AddLearner(ctx, "m3", n3.cfg.PeerURL)
		if err != nil {
			t.Fatal(err)
		}
		m2, peers, err := n2.s.Members().AddLearner(ctx, "m3", n3.cfg.PeerURL)
		if err != nil || m2.ID != m1.ID {
			t.Fatalf("retried add: %+v %v, first %+v", m2, err, m1)
		}
		if len(peers) != 3 || peers[2] != (store.Peer{Name: "m3", PeerURL: n3.cfg.PeerURL}) {
			t.Fatalf("initial cluster for m3: %+v", peers)
		}
		// One learner at a time: a second joiner is told to wait.
		if _, _, err := n1.s.Members().AddLearner(ctx, "m4", freeURL(t)); !errdefs.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "joining") {
			t.Fatalf("second learner: %v", err)
		}
		joined := c.join(n1, n3)
		if joined.ID != m1.ID {
			t.Fatalf("join after retries added another member: %s vs %s", joined.ID, m1.ID)
		}
		// Retrying the whole join after it succeeded changes nothing.
		again, _, err := n1.s.Members().AddLearner(ctx, "m3", n3.cfg.PeerURL)
		if err != nil || again.ID != m1.ID || again.Learner {
			t.Fatalf("join retried after promotion: %+v %v", again, err)
		}
		if err := n1.s.Members().Promote(ctx, again.ID); err != nil {
			t.Fatalf("promotion retried: %v", err)
		}
		list, err := n2.s.Members().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		leaders := 0
		for _, m := range list {
			if m.Learner || !m.Reachable || m.Name == "" {
				t.Fatalf("member not a reachable voter: %+v", m)
			}
			if m.Leader {
				leaders++
			}
		}
		if len(list) != 3 || leaders != 1 {
			t.Fatalf("members: %+v", list)
		}
	})

	step("linearizable read on another member", func(t *testing.T) {
		for i := range 5 {
			id := fmt.Sprintf("lin-%d", i)
			if err := write([]*node{n1, n2, n3}[i%3], id); err != nil {
				t.Fatal(err)
			}
			o, err := tb([]*node{n1, n2, n3}[(i+1)%3]).Get(ctx, id)
			if err != nil || string(o.Value) != "value-"+id {
				t.Fatalf("read of %s on another member: %+v %v", id, o, err)
			}
		}
		readAll(n3)
	})

	step("renew TLS", func(t *testing.T) {
		renewed := c.ca.issue(t, pki.RoleManager)
		other := c.ca.issue(t, pki.RoleManager)
		mismatched := store.MemberTLS{CertPEM: renewed.CertPEM, KeyPEM: other.KeyPEM, CAPEM: renewed.CAPEM}
		if err := n2.s.Members().RenewTLS(mismatched); err == nil {
			t.Fatal("certificate with another key accepted")
		}
		if b, err := store.MemberTLSFileForTest(n2.s, 0); err != nil || !bytes.Equal(b, n2.cfg.TLS.CertPEM) {
			t.Fatalf("refused renewal changed the certificate: %v", err)
		}
		if err := n2.s.Members().RenewTLS(renewed); err != nil {
			t.Fatal(err)
		}
		for i, want := range [][]byte{renewed.CertPEM, renewed.KeyPEM, renewed.CAPEM} {
			if b, err := store.MemberTLSFileForTest(n2.s, i); err != nil || !bytes.Equal(b, want) {
				t.Fatalf("file %d after renewal: %v", i, err)
			}
		}
		n2.cfg.TLS = renewed
		// New handshakes (the probes, and etcd's) use the renewed pair.
		list, err := n2.s.Members().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range list {
			if !m.Reachable {
				t.Fatalf("unreachable after renewal: %+v", m)
			}
		}
		if err := write(n2, "after-renewal"); err != nil {
			t.Fatal(err)
		}
	})

	step("election with fencing", func(t *testing.T) {
		a, err := n1.s.Campaign(ctx, "orchestrator", "m1", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			l   *store.Leadership
			err error
		}
		bc := make(chan result, 1)
		go func() {
			l, err := n2.s.Campaign(ctx, "orchestrator", "m2", time.Second)
			bc <- result{l, err}
		}()
		if v, err := n3.s.Leader(ctx, "orchestrator"); err != nil || v != "m1" {
			t.Fatalf("leader seen from m3: %q %v", v, err)
		}
		if _, err := tb(n1).CreateGuarded(ctx, "fenced-a", "fenced-a", []byte("value-fenced-a"), []store.Cond{a.Guard()}); err != nil {
			t.Fatalf("leader's fenced write: %v", err)
		}
		acked = append(acked, "fenced-a")
		select {
		case r := <-bc:
			t.Fatalf("second campaigner led while the first held: %+v", r)
		default:
		}
		// m1 stalls past its TTL: its lease goes without it knowing.
		if err := a.ExpireForTest(ctx); err != nil {
			t.Fatal(err)
		}
		var b result
		select {
		case b = <-bc:
		case <-time.After(wait):
			t.Fatal("second campaigner did not take over")
		}
		if b.err != nil {
			t.Fatal(b.err)
		}
		if b.l.Fence() <= a.Fence() {
			t.Fatalf("fences not ordered: %d then %d", a.Fence(), b.l.Fence())
		}
		if _, err := tb(n1).CreateGuarded(ctx, "fenced-stale", "fenced-stale", []byte("x"), []store.Cond{a.Guard()}); !errors.Is(err, store.ErrGuard) {
			t.Fatalf("deposed leader's write: %v", err)
		}
		if err := a.Check(ctx); !errors.Is(err, store.ErrGuard) {
			t.Fatalf("deposed leader's check: %v", err)
		}
		if _, err := tb(n1).Get(ctx, "fenced-stale"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("deposed leader's write landed: %v", err)
		}
		select {
		case <-a.Done():
		case <-time.After(wait):
			t.Fatal("deposed leadership not done")
		}
		if err := b.l.Check(ctx); err != nil {
			t.Fatalf("new leader: %v", err)
		}
		if err := b.l.Resign(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := n3.s.Leader(ctx, "orchestrator"); !errdefs.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("leader after resign: %v", err)
		}
	})

	step("one of three down", func(t *testing.T) {
		n3.close(t)
		for i := range 3 {
			if err := write(n1, fmt.Sprintf("two-up-%d", i)); err != nil {
				t.Fatalf("write with two of three: %v", err)
			}
		}
		readAll(n2)
		// Demoting a live manager would leave m1 alone of three.
		m2 := memberByName(t, n1.s, "m2")
		if err := n1.s.Members().Remove(ctx, m2.ID); !errdefs.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "can't remove member from the raft: this would result in a loss of quorum") {
			t.Fatalf("quorum-losing removal: %v", err)
		}
		if list, err := n1.s.Members().List(ctx); err != nil || len(list) != 3 {
			t.Fatalf("members after refused removal: %+v %v", list, err)
		}
	})

	step("two of three down", func(t *testing.T) {
		n2.close(t)
		deadline := time.Now().Add(wait)
		for n1.s.HasLeader() {
			if time.Now().After(deadline) {
				t.Fatal("m1 still sees a leader alone of three")
			}
			time.Sleep(50 * time.Millisecond)
		}
		_, err := tb(n1).Create(ctx, "no-quorum", "no-quorum", []byte("x"))
		if !errdefs.Is(err, errdefs.ErrNoLeader) || !errors.Is(err, store.ErrNoLeader) && !errdefs.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("write without quorum: %v", err)
		}
		if _, err := tb(n1).Get(ctx, "before-join"); !errdefs.Is(err, errdefs.ErrNoLeader) {
			t.Fatalf("linearizable read without quorum: %v", err)
		}
	})

	step("whole cluster restart", func(t *testing.T) {
		n1.close(t)
		// A member alone opens at once and waits for the others.
		c.open(n1)
		select {
		case <-n1.s.Ready():
			t.Fatal("m1 ready without a quorum")
		default:
		}
		if _, err := tb(n1).Create(ctx, "still-none", "still-none", []byte("x")); !errdefs.Is(err, errdefs.ErrNoLeader) {
			t.Fatalf("write before quorum: %v", err)
		}
		c.open(n2)
		n1.waitReady(t)
		n2.waitReady(t)
		readAll(n1)
		readAll(n2)
		c.open(n3)
		n3.waitReady(t)
		readAll(n3)
		if _, err := tb(n3).Get(ctx, "no-quorum"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("refused write appeared: %v", err)
		}
	})

	step("force new cluster from one member", func(t *testing.T) {
		if err := write(n2, "last-before-loss"); err != nil {
			t.Fatal(err)
		}
		n2.close(t)
		n3.close(t)
		n1.close(t)
		n1.cfg.ForceNewCluster = true
		c.open(n1)
		n1.waitReady(t)
		readAll(n1)
		if err := write(n1, "after-recovery"); err != nil {
			t.Fatal(err)
		}
		list, err := n1.s.Members().List(ctx)
		if err != nil || len(list) != 1 || list[0].Name != "m1" || !list[0].Leader {
			t.Fatalf("members after recovery: %+v %v", list, err)
		}
		if err := n1.s.Members().Remove(ctx, list[0].ID); !errdefs.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "attempting to demote the last manager of the swarm") {
			t.Fatalf("removing the last manager: %v", err)
		}
	})
}

// A campaign that is waiting for its turn ends promptly when its context
// does, also after the cluster lost its quorum meanwhile (the other
// managers stopped first): hushd's stop waited out the whole lease TTL
// revoking the candidate's lease there.
func TestCampaignEndsWithoutQuorum(t *testing.T) {
	c := newCluster(t)
	n1, n2, n3 := c.newNode("m1"), c.newNode("m2"), c.newNode("m3")
	c.open(n1)
	n1.waitReady(t)
	c.join(n1, n2)
	c.join(n1, n3)
	ctx := ctxT(t)
	// A TTL far beyond the bound below: waiting it out cannot pass.
	const ttl = 60 * time.Second
	if _, err := n2.s.Campaign(ctx, "orchestrator", "m2", ttl); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		l, err := n1.s.Campaign(cctx, "orchestrator", "m1", ttl)
		if err == nil {
			err = fmt.Errorf("m1 leads: %v", l.Fence())
		}
		done <- err
	}()
	// Wait until m1 is a candidate (its key is in the election).
	deadline := time.Now().Add(wait)
	for {
		resp, err := n1.s.Client().Get(ctx, "/hush/v1/elections/orchestrator/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil && resp.Count == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("m1 never became a candidate: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	n2.close(t)
	n3.close(t)
	for n1.s.HasLeader() {
		if time.Now().After(deadline) {
			t.Fatal("m1 still sees a leader alone of three")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	// What may remain is etcd's own cleanup of the candidate key, which
	// the no-leader gate answers within two election timeouts; the bug
	// waited for etcd's request timeout (5 s and more) or the TTL.
	bound := 5 * testTuning.ElectionTimeout
	select {
	case err := <-done:
		if err == nil || strings.Contains(err.Error(), "m1 leads") {
			t.Fatalf("campaign: %v", err)
		}
	case <-time.After(bound):
		t.Fatalf("the cancelled campaign did not return within %v without a quorum (lease TTL %v)", bound, ttl)
	}
}
