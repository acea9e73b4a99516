package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

// fastSync is the sync period of the in-process role tests.
const fastSync = 100 * time.Millisecond

// waitUntil polls cond (bounded) and fails the test with what when it
// never holds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func loopbackListen(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))
}

// setRole is `docker node update --role` through manager m. The node's
// record is also written by the daemons in the background (liveness
// status, description, key fingerprint after a certificate): one written
// between the read here and the update is "update out of sequence", which
// a client answers by reading again, as the docker CLI's user does.
func setRole(ctx context.Context, m *Daemon, id string, role swarm.NodeRole) error {
	for range 10 {
		n, err := nodes.Get(ctx, m.store, id)
		if err != nil {
			return err
		}
		spec := n.Spec
		spec.Role = role
		_, err = clusterNodes{m}.UpdateNode(ctx, id, n.Version, spec)
		if !errors.Is(err, errdefs.ErrOutOfSequence) {
			return err
		}
	}
	return errors.New("the node's record changed at every one of 10 reads")
}

// recordChanged reports whether a node's record differs but for what the
// daemons write of it in the background (the liveness status, the
// description its session reports): the version moves with those too, so
// a refused change is told by the rest.
func recordChanged(before, after nodes.Node) bool {
	before.Version, before.Status, before.Description = 0, nil, nil
	after.Version, after.Status, after.Description = 0, nil, nil
	return !reflect.DeepEqual(before, after)
}

func exists(t *testing.T, dir, f string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(dir, f))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

func (d *Daemon) isWorker() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.worker != nil && d.member == nil && d.state == swarm.LocalNodeStateActive
}

func (d *Daemon) isVoter(ctx context.Context) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.member == nil || d.state != swarm.LocalNodeStateActive || d.store.Members() == nil {
		return false
	}
	v, err := d.store.Members().IsVoter(ctx)
	return err == nil && v
}

// A worker that joined with a listen address is promoted (it becomes a
// voting member holding the master key and serving the swarm API, its
// worker files gone) and demoted back (its member removed, a worker
// certificate, its etcd data and master key wiped); a worker without a
// listen address and the last manager are refused by name, and a refused
// change leaves the records as they were.
func TestPromoteDemote(t *testing.T) {
	ctx := context.Background()
	l1 := loopbackListen(t)
	m := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: l1, RoleSyncPeriod: fastSync})
	c := getCluster(t, m)

	wdir := t.TempDir()
	w := startWith(t, Config{DataDir: wdir, NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync})
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{l1}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	vdir := t.TempDir()
	v := startWith(t, Config{DataDir: vdir, NoInit: true, RoleSyncPeriod: fastSync})
	if err := v.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{l1}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}

	for _, tc := range []struct {
		name string
		id   string
		role swarm.NodeRole
		cat  error
		msg  string
	}{
		{"promote a worker without a listen address", v.nodeID, swarm.NodeRoleManager, errdefs.ErrInvalidArgument, "node " + v.nodeID + " has no listen address"},
		{"demote the last manager", m.nodeID, swarm.NodeRoleWorker, errdefs.ErrFailedPrecondition, "attempting to demote the last manager of the swarm"},
		{"an unknown role", w.nodeID, "boss", errdefs.ErrInvalidArgument, `invalid role "boss"`},
		{"an unknown node", "nosuchnode", swarm.NodeRoleManager, errdefs.ErrNotFound, "node nosuchnode not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before nodes.Node
			if tc.id != "nosuchnode" {
				before, _ = nodes.Get(ctx, m.store, tc.id)
			}
			n := before
			n.Spec.Role = tc.role
			_, err := clusterNodes{m}.UpdateNode(ctx, tc.id, before.Version, n.Spec)
			if !errors.Is(err, tc.cat) || len(err.Error()) < len(tc.msg) || err.Error()[:len(tc.msg)] != tc.msg {
				t.Fatalf("got %v, want %v %q", err, tc.cat, tc.msg)
			}
			if tc.id != "nosuchnode" {
				after, _ := nodes.Get(ctx, m.store, tc.id)
				if after.Spec.Role != before.Spec.Role || recordChanged(before, after) {
					t.Fatalf("a refused change changed the record: %+v", after)
				}
			}
		})
	}

	// The node call takes its caller's identity from a client certificate
	// only: without one it is refused, whatever the body says.
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the server is not what is tested
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+l1+nodeSyncPath, strings.NewReader(`{"csr":null}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := joinCall(noCert, r, l1, 1<<16); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("node call without a certificate: %v, want unauthorized", err)
	}
	noCert.CloseIdleConnections()

	// Promote.
	promoted(t, m, w, "the worker votes")
	for f, want := range map[string]bool{"member.json": true, "keys/master.key": true, "worker.json": false, "keys/node.key": false} {
		if exists(t, wdir, f) != want {
			t.Errorf("promoted node: %s exists=%v, want %v", f, !want, want)
		}
	}
	if err := w.CheckServing(); err != nil {
		t.Fatalf("promoted node does not serve the swarm API: %v", err)
	}
	if got, err := cluster.Get(ctx, w.store); err != nil || got.ID != c.ID {
		t.Fatalf("promoted node reads cluster %v, %v", got.ID, err)
	}
	if id := certRole(w.cert.Load().Leaf); id != pki.RoleManager {
		t.Fatalf("promoted node's certificate role %s", id)
	}
	// Renewal of a manager: a certificate past its renewal point is
	// reissued for the same key and swapped into the files, etcd and the
	// join service, which then shows it.
	renewed(t, m, l1)

	// A demotion against a stale version of the node's record is out of
	// sequence (the version guard and the other managers' guards share
	// one transaction: this one must not be taken for the latter and
	// retried into "the managers' records kept changing").
	// (The label is written as setRole writes, reading again when the
	// daemons' own writes to the record came first.)
	var stale nodes.Node
	for i := 0; ; i++ {
		if stale, err = nodes.Get(ctx, m.store, w.nodeID); err != nil {
			t.Fatal(err)
		}
		relabel := stale.Spec
		relabel.Labels = map[string]string{"stale": "yes"}
		err = nodes.Update(ctx, m.store, w.nodeID, stale.Version, relabel)
		if err == nil {
			break
		}
		if !errors.Is(err, errdefs.ErrOutOfSequence) || i == 10 {
			t.Fatalf("label the promoted node: %v", err)
		}
	}
	demote := stale.Spec
	demote.Role = swarm.NodeRoleWorker
	if _, err := (clusterNodes{m}).UpdateNode(ctx, w.nodeID, stale.Version, demote); !errors.Is(err, errdefs.ErrOutOfSequence) {
		t.Fatalf("demotion at a stale version: %v, want update out of sequence", err)
	}
	if n, err := nodes.Get(ctx, m.store, w.nodeID); err != nil || n.Spec.Role != swarm.NodeRoleManager {
		t.Fatalf("a stale demotion changed the role: %+v %v", n.Spec, err)
	}

	// Demote it back, through the other manager.
	demoted(t, m, w, "the demoted manager is a worker")
	for f, want := range map[string]bool{"member.json": false, "keys/master.key": false, "worker.json": true, "keys/node.key": true} {
		if exists(t, wdir, f) != want {
			t.Errorf("demoted node: %s exists=%v, want %v", f, !want, want)
		}
	}
	if list, err := m.store.Members().List(ctx); err != nil || len(list) != 1 {
		t.Fatalf("members after the demotion: %+v %v", list, err)
	}
	if id := certRole(w.cert.Load().Leaf); id != pki.RoleWorker {
		t.Fatalf("demoted node's certificate role %s", id)
	}
	if _, err := cluster.Get(ctx, w.store); err == nil {
		t.Fatal("the demoted node's store still holds the cluster")
	}
	// A restart resumes worker mode.
	w.Close()
	w = startWith(t, Config{DataDir: wdir, NoInit: true, RoleSyncPeriod: fastSync})
	if !w.isWorker() {
		t.Fatal("the demoted node is not a worker after a restart")
	}
	// Renewal of a worker.
	before := w.cert.Load().Leaf.SerialNumber
	w.skew.Store(int64(renewSkew(w.cert.Load())))
	waitUntil(t, "the worker renews", func() bool { return w.cert.Load().Leaf.SerialNumber.Cmp(before) != 0 })
	w.skew.Store(0)
	var ws workerState
	readJSON(t, filepath.Join(wdir, "worker.json"), &ws)
	if !sameSerial(t, ws.CertPEM, w.cert.Load()) {
		t.Fatal("worker.json does not hold the renewed certificate")
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func sameSerial(t *testing.T, certPEM string, c *tls.Certificate) bool {
	t.Helper()
	blk, _ := pem.Decode([]byte(certPEM))
	if blk == nil {
		t.Fatal("no certificate in the file")
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Cmp(c.Leaf.SerialNumber) == 0
}

// renewSkew moves a node's clock to 85% of its certificate's life: past
// any renewal point, before expiry.
func renewSkew(c *tls.Certificate) time.Duration {
	life := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)
	return time.Until(c.Leaf.NotBefore.Add(life * 85 / 100))
}

// renewed checks a manager's renewal end to end.
func renewed(t *testing.T, m *Daemon, listen string) {
	t.Helper()
	old := m.cert.Load()
	m.skew.Store(int64(renewSkew(old)))
	waitUntil(t, "the manager renews", func() bool { return m.cert.Load().Leaf.SerialNumber.Cmp(old.Leaf.SerialNumber) != 0 })
	m.skew.Store(0)
	cur := m.cert.Load()
	if !cur.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(old.Leaf.PublicKey) {
		t.Fatal("a renewal changed a manager's key")
	}
	var ms memberState
	readJSON(t, m.memberPath(), &ms)
	if !sameSerial(t, ms.CertPEM, cur) {
		t.Fatal("member.json does not hold the renewed certificate")
	}
	conn, err := tls.Dial("tcp", listen, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // reads the served certificate only
	if err != nil {
		t.Fatal(err)
	}
	served := conn.ConnectionState().PeerCertificates[0]
	_ = conn.Close()
	if served.SerialNumber.Cmp(cur.Leaf.SerialNumber) != 0 {
		t.Fatal("the join service still shows the old certificate")
	}
	// etcd's peer TLS reads the renewed pair: the membership still probes
	// reachable through it.
	if list, err := m.store.Members().List(context.Background()); err != nil || len(list) == 0 {
		t.Fatalf("members after renewal: %v", err)
	}
}

// crashAt makes d's next role change stop at point as a crash would: the
// step fails, and d's sync loop stops, so nothing retries before the
// test restarts the node. hit is closed when it fired.
func crashAt(d *Daemon, point string) (hit chan struct{}) {
	hit = make(chan struct{})
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail = failpoints{point: func() error {
		d.syncStop()
		select {
		case <-hit:
		default:
			close(hit)
		}
		return errors.New("injected crash at " + point)
	}}
	return hit
}

// Each step of a promotion and a demotion interrupted as by a crash
// converges when the node restarts: it ends in the role its record says,
// holding only that role's files.
func TestRoleChangeCrashes(t *testing.T) {
	ctx := context.Background()
	l1 := loopbackListen(t)
	m := startWith(t, Config{DataDir: t.TempDir(), ListenAddr: l1, RoleSyncPeriod: fastSync})
	c := getCluster(t, m)
	wdir := t.TempDir()
	wcfg := Config{DataDir: wdir, NoInit: true, ListenAddr: loopbackListen(t), RoleSyncPeriod: fastSync}
	w := startWith(t, wcfg)
	if err := w.Join(ctx, swarm.JoinRequest{RemoteAddrs: []string{l1}, JoinToken: c.JoinTokens.Worker}); err != nil {
		t.Fatalf("worker join: %v", err)
	}
	managerFiles := map[string]bool{"member.json": true, "keys/master.key": true, "worker.json": false, "keys/node.key": false}
	workerFiles := map[string]bool{"member.json": false, "keys/master.key": false, "worker.json": true, "keys/node.key": true}
	for _, step := range []struct {
		point string
		role  swarm.NodeRole
	}{
		{fpPromoteWriteMbr, swarm.NodeRoleManager},
		{fpDemoteWriteWorker, swarm.NodeRoleWorker},
		{fpPromoteWipe, swarm.NodeRoleManager},
		{fpDemoteWipe, swarm.NodeRoleWorker},
	} {
		outer := t // the restarted node outlives the subtest
		t.Run(step.point, func(t *testing.T) {
			hit := crashAt(w, step.point)
			if err := setRole(ctx, m, w.nodeID, step.role); err != nil {
				t.Fatalf("role change: %v", err)
			}
			waitUntil(t, "the failpoint fires", func() bool {
				select {
				case <-hit:
					return true
				default:
					return false
				}
			})
			w.Close()
			w = startWith(outer, wcfg)
			want := workerFiles
			if step.role == swarm.NodeRoleManager {
				want = managerFiles
				waitUntil(t, "the restarted node votes", func() bool { return w.isVoter(ctx) })
			} else {
				waitUntil(t, "the restarted node is a worker", w.isWorker)
				if list, err := m.store.Members().List(ctx); err != nil || len(list) != 1 {
					t.Fatalf("members: %+v %v", list, err)
				}
			}
			for f, ok := range want {
				if exists(t, wdir, f) != ok {
					t.Errorf("%s exists=%v, want %v", f, !ok, ok)
				}
			}
		})
	}
}

// A demotion still pending (the record says worker, the member is not
// removed yet) counts as done: demoting the other manager of two right
// after demoting this one must be refused as demoting the last manager,
// else the records name no manager at all and the remaining member waits
// forever for another manager to certify its demotion.
func TestDemotePendingCountsAsDone(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t)
	promoted(t, m, w, "the promoted node votes")
	// m's own demotion stays pending: its sync (which would carry it
	// out) is stopped.
	m.syncStop()
	if err := setRole(ctx, m, m.nodeID, swarm.NodeRoleWorker); err != nil {
		t.Fatalf("demote self: %v", err)
	}
	before, err := nodes.Get(ctx, m.store, w.nodeID)
	if err != nil {
		t.Fatal(err)
	}
	// The daemons write the record in the background (the liveness
	// status, the description a session reports): one lands here, as one
	// did under load.
	if err := nodes.SetDescription(ctx, m.store, w.nodeID, nodes.Description{OS: "a background write"}); err != nil {
		t.Fatal(err)
	}
	err = setRole(ctx, m, w.nodeID, swarm.NodeRoleWorker)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "attempting to demote the last manager of the swarm") {
		t.Fatalf("demoting the other manager while this one's demotion is pending: %v", err)
	}
	after, err := nodes.Get(ctx, m.store, w.nodeID)
	if err != nil || after.Spec.Role != swarm.NodeRoleManager || recordChanged(before, after) {
		t.Fatalf("a refused demotion changed the record: %+v %v", after, err)
	}
}

// A node removed through another manager while this manager's refusal
// list is still the cached one gets no new certificate here: one issued
// after the removal would not be refused by the removal's cut-off, and
// would let the removed node back in.
func TestNoCertificateForNodeRemovedElsewhere(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t, workerWithoutListen())
	w.syncStop()
	// m's cache was read just now and holds no removal; another manager
	// records w's removal (the record is deleted after it, later).
	m.removed.mu.Lock()
	m.removed.read, m.removed.v = time.Now().Add(time.Hour), nil
	m.removed.mu.Unlock()
	val, _ := json.Marshal(map[string]time.Time{"removedAt": time.Now().Truncate(time.Second).UTC()})
	if _, err := m.store.Table("removednodes").Create(ctx, w.nodeID, "", val); err != nil {
		t.Fatal(err)
	}
	v, csr := syncViewAndCSR(t, w)
	if ans, err := w.callSync(ctx, v, &syncRequest{CSR: csr}); !errors.Is(err, errdefs.ErrUnauthorized) || ans != nil {
		t.Fatalf("a removed node's renewal: %v (answered: %v), want unauthorized", err, ans != nil)
	}
}

// At start a node holding one role's state file keeps no file of the
// other role's secrets: a manager (its key sealed in member.json) no
// unsealed worker key left by a promotion stopped while wiping, a worker
// no master key.
func TestConvergeRoleFilesLeftovers(t *testing.T) {
	for _, tc := range []struct {
		name       string
		files      []string
		want, gone []string
	}{
		{"manager with a worker key", []string{"member.json", "keys/node.key"}, []string{"member.json"}, []string{"keys/node.key"}},
		{"worker with a master key", []string{"worker.json", "keys/node.key", "keys/master.key"}, []string{"worker.json", "keys/node.key"}, []string{"keys/master.key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
				t.Fatal(err)
			}
			for _, f := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, f), []byte("{}"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			d := &Daemon{cfg: Config{DataDir: dir}}
			d.plainKey.Path = filepath.Join(dir, "keys", "master.key")
			if err := d.convergeRoleFiles(); err != nil {
				t.Fatal(err)
			}
			for _, f := range tc.want {
				if !exists(t, dir, f) {
					t.Errorf("%s removed", f)
				}
			}
			for _, f := range tc.gone {
				if exists(t, dir, f) {
					t.Errorf("%s kept", f)
				}
			}
		})
	}
}

// A promotion whose member started but did not become a voter in time
// (here: the first wait fails) is finished by the next sync rounds: the
// node ends activated as a manager serving its join/CA service, without
// a restart.
func TestPromotionResumesAfterAFailedWait(t *testing.T) {
	ctx := context.Background()
	m, w, _ := managerAndWorker(t)
	hit := make(chan struct{})
	w.mu.Lock()
	w.fail = failpoints{fpPromoteActivate: func() error {
		select {
		case <-hit:
			return nil
		default:
			close(hit)
			return errors.New("injected: the member is not a voter yet")
		}
	}}
	w.mu.Unlock()
	if err := setRole(ctx, m, w.nodeID, swarm.NodeRoleManager); err != nil {
		t.Fatalf("promote: %v", err)
	}
	waitUntil(t, "the promoted node is activated and serves its join service", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.runStop != nil && w.joinSvc != nil && w.mk.ID != ""
	})
	select {
	case <-hit:
	default:
		t.Fatal("the failpoint never fired")
	}
}
