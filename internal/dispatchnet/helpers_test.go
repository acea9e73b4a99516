package dispatchnet

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/manager/dispatcher"
	"github.com/hush-secrets/hush/internal/manager/dispatcher/dispatchertest"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/pki/pkitest"
	"github.com/moby/moby/api/types/swarm"
)

// cluster is a root CA and the cluster ID its nodes carry.
type cluster struct {
	*pkitest.CA
	roots *x509.CertPool
}

func newCluster(t testing.TB) cluster {
	t.Helper()
	ca := pkitest.NewCA(t)
	return cluster{CA: ca, roots: pki.TrustPool(ca.Root)}
}

type node struct {
	id   string
	cert *tls.Certificate
}

// issue certifies a new node of the cluster, or of clusterID when given.
func (c cluster) issue(t testing.TB, role pki.Role, clusterID ...string) node {
	t.Helper()
	cid := ""
	if len(clusterID) > 0 {
		cid = clusterID[0]
	}
	n := c.CA.Issue(t, role, cid)
	return node{id: n.ID, cert: n.Cert}
}

func (c cluster) params(n node, refuse *pki.Refusals) pki.TLSParams {
	p := pki.TLSParams{
		ClusterID: c.Cluster,
		Cert:      func() (*tls.Certificate, error) { return n.cert, nil },
		Roots:     func() *x509.CertPool { return c.roots },
	}
	if refuse != nil {
		p.Refuse = refuse.Check
	}
	return p
}

// fixture is a real dispatcher over the in-memory store.
type fixture struct {
	store *dispatchertest.MemStore
	data  dataSource
	disp  *dispatcher.Dispatcher
}

// dataSource serves "value-of-<id>-v<n>", or a canary for canary IDs.
type dataSource struct {
	dispatchertest.Data
	canary map[string][]byte
}

func (d *dataSource) ContentVersion(ctx context.Context, id string, n int) ([]byte, string, error) {
	if c, ok := d.canary[id]; ok {
		return bytes.Clone(c), "", nil
	}
	return d.Data.ContentVersion(ctx, id, n)
}

func newFixture() *fixture {
	f := &fixture{store: dispatchertest.NewMemStore()}
	f.disp = dispatcher.New(dispatcher.Config{Tasks: f.store, Changes: f.store, Table: f.store, Secrets: &f.data, Configs: &f.data})
	return f
}

func task(id, node string, state swarm.TaskState, secretIDs ...string) *model.Task {
	t := &model.Task{ServiceName: "svc"}
	t.ID, t.NodeID, t.DesiredState, t.Status.State, t.ServiceID = id, node, swarm.TaskStateRunning, state, "svc1"
	cs := &swarm.ContainerSpec{Image: "x"}
	for _, s := range secretIDs {
		cs.Secrets = append(cs.Secrets, &swarm.SecretReference{SecretID: s, SecretName: "name-" + s, File: &swarm.SecretReferenceFileTarget{Name: s, UID: "0", GID: "0", Mode: 0o444}})
	}
	t.Spec.ContainerSpec = cs
	return t
}

// manager is a served Handler.
type manager struct {
	addr    string
	h       *Handler
	srv     *http.Server
	seen    *LastSeen
	refuse  *pki.Refusals
	stopped sync.Once
}

func (m *manager) stop() { m.stopped.Do(func() { m.srv.Close() }) }

type serverOpt func(*ServerConfig)

// serve runs a manager of c on 127.0.0.1 under tlsCfg (nil: the pki
// server configuration).
func serve(t *testing.T, c cluster, f *fixture, tlsCfg *tls.Config, opts ...serverOpt) *manager {
	t.Helper()
	m := &manager{seen: &LastSeen{}, refuse: &pki.Refusals{}}
	mgr := c.issue(t, pki.RoleManager)
	if tlsCfg == nil {
		var err error
		if tlsCfg, err = c.params(mgr, m.refuse).ServerConfig(); err != nil {
			t.Fatal(err)
		}
	}
	sc := ServerConfig{ClusterID: c.Cluster, Refuse: m.refuse.Check, Dispatcher: FromDispatcher(f.disp), Heartbeats: m.seen,
		HeartbeatPeriod: func() time.Duration { return 200 * time.Millisecond }}
	for _, o := range opts {
		o(&sc)
	}
	m.h = NewHandler(sc)
	m.srv = NewServer(m.h, tlsCfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = ln.Addr().String()
	go func() { _ = m.srv.ServeTLS(ln, "", "") }()
	t.Cleanup(m.stop)
	return m
}

func connector(t *testing.T, c cluster, n node, addrs []string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Connector {
	t.Helper()
	p := c.params(n, nil)
	conn, err := NewConnector(ClientConfig{Managers: addrs, TLS: p.ClientConfig, Dial: dial, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func open(t *testing.T, c *Connector) *Session {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sess := s.(*Session)
	t.Cleanup(sess.Close)
	return sess
}

func next(t *testing.T, s *Session) model.Assignments {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := s.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// rawPost sends a call as a node's client would, with any headers.
func rawPost(t *testing.T, s *Session, path string, hdr map[string]string, body any) (int, wireError) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPost, s.base+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var we wireError
	_ = json.NewDecoder(resp.Body).Decode(&we)
	return resp.StatusCode, we
}
