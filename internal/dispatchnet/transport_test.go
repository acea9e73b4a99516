package dispatchnet

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/hush-secrets/hush/internal/pki/pkitest"
	"github.com/moby/moby/api/types/swarm"
)

func taskIDs(m model.Assignments) []string {
	var ids []string
	for _, at := range m.Tasks {
		ids = append(ids, at.Task.ID)
	}
	return ids
}

func items(m model.Assignments) map[string]string {
	out := map[string]string{}
	for _, it := range m.Data {
		out[it.Kind+"/"+it.ID] = string(it.Data)
	}
	return out
}

// TestWorkerGetsOnlyItsTasks: over the wire a worker gets its own tasks
// and their secrets, then increments, and nothing of another node's; its
// calls on another node's task are refused.
func TestWorkerGetsOnlyItsTasks(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w1, w2 := c.issue(t, pki.RoleWorker), c.issue(t, pki.RoleWorker)
	f.store.Put(t, task("t1", w1.id, swarm.TaskStateRunning, "s1"))
	f.store.Put(t, task("t2", w2.id, swarm.TaskStateRunning, "s2"))
	m := serve(t, c, f, nil)
	s := open(t, connector(t, c, w1, []string{m.addr}, nil))

	full := next(t, s)
	if !full.Full || strings.Join(taskIDs(full), ",") != "t1" || len(full.Data) != 1 || items(full)["secret/s1"] != "value-of-s1-v1" {
		t.Fatalf("full set: tasks %v data %v", taskIDs(full), items(full))
	}
	if full.Tasks[0].Task.Version.Index == 0 {
		t.Fatal("the task's version did not cross")
	}
	f.store.Put(t, task("t3", w1.id, swarm.TaskStateRunning, "s3"))
	f.store.Put(t, task("t4", w2.id, swarm.TaskStateRunning, "s4"))
	inc := next(t, s)
	if inc.Full || strings.Join(taskIDs(inc), ",") != "t3" || len(inc.Data) != 1 || items(inc)["secret/s3"] != "value-of-s3-v1" {
		t.Fatalf("increment: tasks %v data %v", taskIDs(inc), items(inc))
	}
	ctx := context.Background()
	if _, err := s.Task(ctx, "t2"); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("another node's task: %v", err)
	}
	if _, err := s.RegistryAuth(ctx, "t2"); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("another node's registry auth: %v", err)
	}
	if _, _, err := s.Attachments(ctx, "t4"); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("another node's attachments: %v", err)
	}
	if got, err := s.Task(ctx, "t1"); err != nil || got.ID != "t1" || got.NodeID != w1.id {
		t.Fatalf("own task: %v %v", got, err)
	}
	if auth, err := s.RegistryAuth(ctx, "t1"); err != nil || auth != nil {
		t.Fatalf("own registry auth (none configured): %q %v", auth, err)
	}
}

// TestIdentityFromCertificateOnly: a request naming another node (header,
// query, another node's session ID) acts as the certificate's node only.
func TestIdentityFromCertificateOnly(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w1, w2 := c.issue(t, pki.RoleWorker), c.issue(t, pki.RoleWorker)
	f.store.Put(t, task("t2", w2.id, swarm.TaskStateRunning, "s2"))
	m := serve(t, c, f, nil)
	s1 := open(t, connector(t, c, w1, []string{m.addr}, nil))
	s2 := open(t, connector(t, c, w2, []string{m.addr}, nil))
	next(t, s1)
	next(t, s2)

	// w1 presents w2's session: no such session for w1's certificate.
	code, we := rawPost(t, s1, pathTask+"?node="+w2.id, map[string]string{SessionHeader: s2.id, "Hush-Node": w2.id}, taskRequest{TaskID: "t2"})
	if code != http.StatusServiceUnavailable || !strings.Contains(we.Msg, "no such session") {
		t.Fatalf("w1 with w2's session: %d %+v", code, we)
	}
	// Its own session naming w2 anywhere: still w1, refused w2's task.
	code, we = rawPost(t, s1, pathTask+"?node="+w2.id, map[string]string{SessionHeader: s1.id, "Hush-Node": w2.id}, map[string]string{"TaskID": "t2", "NodeID": w2.id})
	if code != http.StatusUnauthorized || we.Kind != "unauthorized" {
		t.Fatalf("w1 naming w2: %d %+v", code, we)
	}
	// w2's session is untouched by w1's attempts.
	if got, err := s2.Task(context.Background(), "t2"); err != nil || got.ID != "t2" {
		t.Fatalf("w2's own call: %v", err)
	}
}

// TestOtherClusterRefused: a certificate of another cluster (same CA, other
// O; or another CA) opens nothing, and the handler checks the cluster
// itself even under a TLS configuration that does not.
func TestOtherClusterRefused(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	m := serve(t, c, f, nil)
	foreign := c.issue(t, pki.RoleWorker, pkitest.NewID(t))
	conn := connector(t, c, foreign, []string{m.addr}, nil)
	if _, err := conn.Open(context.Background()); err == nil {
		t.Fatal("a worker of another cluster opened a session")
	}
	other := newCluster(t)
	stranger := other.issue(t, pki.RoleWorker)
	p := other.params(stranger, nil)
	p.Roots = c.params(stranger, nil).Roots // it trusts our managers
	conn2, _ := NewConnector(ClientConfig{Managers: []string{m.addr}, TLS: p.ClientConfig})
	if _, err := conn2.Open(context.Background()); err == nil {
		t.Fatal("a worker of another CA opened a session")
	}

	// A listener that verifies the chain but not the cluster: the handler
	// refuses by itself.
	mgr := c.issue(t, pki.RoleManager)
	loose := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*mgr.cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: c.roots}
	m2 := serve(t, c, f, loose)
	if _, err := connector(t, c, foreign, []string{m2.addr}, nil).Open(context.Background()); !errdefs.Is(err, errdefs.ErrUnauthorized) || !strings.Contains(err.Error(), "another cluster") {
		t.Fatalf("handler's own cluster check: %v", err)
	}
}

// TestRemovedNodeRefused: a removed node opens nothing, and a live session
// of a node removed meanwhile ends at its next heartbeat.
func TestRemovedNodeRefused(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	m := serve(t, c, f, nil)
	gone, live := c.issue(t, pki.RoleWorker), c.issue(t, pki.RoleWorker)
	if err := m.refuse.Remove(gone.id, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := connector(t, c, gone, []string{m.addr}, nil).Open(context.Background()); err == nil {
		t.Fatal("a removed node opened a session")
	}
	s := open(t, connector(t, c, live, []string{m.addr}, nil))
	next(t, s)
	if err := m.refuse.Remove(live.id, time.Now()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Next(ctx); err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("session of a node removed meanwhile: %v", err)
	}
}

// TestStatusRoundTrip: reports cross with the dispatcher's checks and
// error categories, texts are cut, oversized bodies refused.
func TestStatusRoundTrip(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w1, w2 := c.issue(t, pki.RoleWorker), c.issue(t, pki.RoleWorker)
	f.store.Put(t, task("t1", w1.id, swarm.TaskStateAssigned))
	f.store.Put(t, task("t2", w2.id, swarm.TaskStateAssigned))
	m := serve(t, c, f, nil)
	s := open(t, connector(t, c, w1, []string{m.addr}, nil))
	next(t, s)
	ctx := context.Background()
	long := strings.Repeat("x", 10000)
	got, err := s.ReportStatus(ctx, model.StatusReport{TaskID: "t1", State: swarm.TaskStateRunning, Message: long,
		Container: &swarm.ContainerStatus{ContainerID: "c1", PID: 7}})
	if err != nil || got.Status.State != swarm.TaskStateRunning || got.Status.ContainerStatus.PID != 7 {
		t.Fatalf("report: %+v %v", got, err)
	}
	if st := f.store.Task(t, "t1"); st.Status.State != swarm.TaskStateRunning || len(st.Status.Message) != 4096 {
		t.Fatalf("stored: %s, message of %d bytes", st.Status.State, len(st.Status.Message))
	}
	if _, err := s.ReportStatus(ctx, model.StatusReport{TaskID: "t1", State: swarm.TaskStateStarting}); !errdefs.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("backwards: %v", err)
	}
	if _, err := s.ReportStatus(ctx, model.StatusReport{TaskID: "t1", State: swarm.TaskStateOrphaned}); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("a manager's state: %v", err)
	}
	if _, err := s.ReportStatus(ctx, model.StatusReport{TaskID: "t2", State: swarm.TaskStateRunning}); !errdefs.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("another node's task: %v", err)
	}
	if _, err := s.ReportStatus(ctx, model.StatusReport{TaskID: "t1", State: swarm.TaskStateRunning, Err: strings.Repeat("e", maxStatusBody)}); !errdefs.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "bytes") {
		t.Fatalf("oversized body: %v", err)
	}
	if st := f.store.Task(t, "t2"); st.Status.State != swarm.TaskStateAssigned {
		t.Fatalf("another node's task changed: %s", st.Status.State)
	}
	if err := s.RemoveTask(ctx, "t1"); !errdefs.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("removing a task not desired removed: %v", err)
	}
}

// TestHeartbeats: heartbeats are recorded; a session that stops beating
// ends after the grace; a newer session of the node replaces the older.
func TestHeartbeats(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	m := serve(t, c, f, nil)
	s := open(t, connector(t, c, w, []string{m.addr}, nil))
	next(t, s)
	first, ok := m.seen.Last(w.id)
	if !ok {
		t.Fatal("opening a session recorded no heartbeat")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if last, _ := m.seen.Last(w.id); last.After(first) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no heartbeat recorded after the first")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A newer session replaces the older one.
	conn := connector(t, c, w, []string{m.addr}, nil)
	s2 := open(t, conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Next(ctx); err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("older session: %v", err)
	}
	next(t, s2)

	// A client that never beats: the stream ends with the reason.
	body := rawStream(t, conn, m.addr)
	for {
		typ, b, err := readFrame(body, MaxFrame)
		if err != nil {
			t.Fatalf("stream ended without an end frame: %v", err)
		}
		if typ == frameEnd {
			if !strings.Contains(string(b), "heartbeats missed") {
				t.Fatalf("end frame: %s", b)
			}
			break
		}
	}
}

// rawStream opens a session stream without the client's heartbeats and
// returns it after its hello.
func rawStream(t *testing.T, conn *Connector, addr string, tune ...func(*http.Transport)) io.ReadCloser {
	t.Helper()
	tr := conn.transport()
	for _, f := range tune {
		f(tr)
	}
	t.Cleanup(tr.CloseIdleConnections)
	req, _ := http.NewRequest(http.MethodPost, "https://"+addr+pathSession, nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if typ, _, err := readFrame(resp.Body, maxControlFrame); err != nil || typ != frameHello {
		t.Fatalf("hello: %d %v", typ, err)
	}
	return resp.Body
}

// TestReconnectFullSet: when a manager goes, the next open reaches the
// next manager of the list, and its first message is the full set.
func TestReconnectFullSet(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	f.store.Put(t, task("t1", w.id, swarm.TaskStateRunning, "s1"))
	a, b := serve(t, c, f, nil), serve(t, c, f, nil)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	conn := connector(t, c, w, []string{a.addr, deadAddr, b.addr}, nil)
	s := open(t, conn)
	if m := next(t, s); !m.Full || len(m.Data) != 1 {
		t.Fatalf("first: %+v", m)
	}
	f.store.Put(t, task("t2", w.id, swarm.TaskStateRunning, "s2"))
	if m := next(t, s); m.Full {
		t.Fatal("increment marked full")
	}
	a.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Next(ctx); err == nil {
		t.Fatal("session outlived its manager")
	}
	s2 := open(t, conn) // skips the dead address
	if !strings.HasSuffix(s2.base, b.addr) {
		t.Fatalf("reconnected to %s, want %s", s2.base, b.addr)
	}
	m := next(t, s2)
	if !m.Full || len(m.Tasks) != 2 || items(m)["secret/s1"] != "value-of-s1-v1" || items(m)["secret/s2"] != "value-of-s2-v1" {
		t.Fatalf("after reconnect: full=%v tasks %v data %v", m.Full, taskIDs(m), items(m))
	}
}

// capture records every byte crossing a raw connection, both ways.
type capture struct {
	net.Conn
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (c capture) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.buf.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.buf.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// TestCanaryNotInClear: a secret crosses the TCP connection under TLS
// only: neither its bytes nor their base64 appear on the wire, while the
// agent receives them.
func TestCanaryNotInClear(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	canary := []byte("CANARY-8d1f0c2e-secret-plaintext")
	f.data.canary = map[string][]byte{"sc": canary}
	w := c.issue(t, pki.RoleWorker)
	f.store.Put(t, task("t1", w.id, swarm.TaskStateRunning, "sc"))
	m := serve(t, c, f, nil)
	var mu sync.Mutex
	var wire bytes.Buffer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return capture{Conn: conn, mu: &mu, buf: &wire}, nil
	}
	s := open(t, connector(t, c, w, []string{m.addr}, dial))
	got := next(t, s)
	if items(got)["secret/sc"] != string(canary) {
		t.Fatalf("the canary did not arrive: %v", items(got))
	}
	got.Wipe()
	mu.Lock()
	defer mu.Unlock()
	if wire.Len() < len(canary) {
		t.Fatalf("captured %d bytes: the capture saw nothing", wire.Len())
	}
	for _, enc := range [][]byte{canary, []byte(base64.StdEncoding.EncodeToString(canary)), canary[:16]} {
		if bytes.Contains(wire.Bytes(), enc) {
			t.Fatalf("%q found in clear on the wire", enc)
		}
	}
}

// TestSlowReaderDisconnected: a node that stops reading its stream is cut
// off once a frame's write outlasts the bound, not buffered for.
func TestSlowReaderDisconnected(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	big := bytes.Repeat([]byte{'b'}, model.MaxSecretData-1)
	f.data.canary = map[string][]byte{}
	for i := range 16 {
		id := "big" + string(rune('a'+i))
		f.data.canary[id] = big
		f.store.Put(t, task("t"+id, w.id, swarm.TaskStateRunning, id))
	}
	m := serve(t, c, f, nil, func(sc *ServerConfig) {
		// Only the write bound may end it: heartbeats are not due.
		sc.WriteTimeout = 300 * time.Millisecond
		sc.HeartbeatPeriod = func() time.Duration { return time.Hour }
	})
	rawStream(t, connector(t, c, w, []string{m.addr}, nil), m.addr, func(tr *http.Transport) {
		tr.HTTP2.MaxReceiveBufferPerStream = 64 << 10
		tr.HTTP2.MaxReceiveBufferPerConnection = 64 << 10
	})
	deadline := time.Now().Add(10 * time.Second)
	for m.h.current(w.id) {
		if time.Now().After(deadline) {
			t.Fatal("a node that does not read kept its session")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A manager that accepts connections but never answers (a stopped
// process: its kernel still completes the TCP handshake) is left for the
// next one within the open timeout.
func TestStalledManagerSkipped(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	f.store.Put(t, task("t1", w.id, swarm.TaskStateRunning))
	good := serve(t, c, f, nil)
	stalled, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stalled.Close() })
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			conn, err := stalled.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	p := c.params(w, nil)
	conn, err := NewConnector(ClientConfig{Managers: []string{stalled.Addr().String(), good.addr}, TLS: p.ClientConfig,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, OpenTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := conn.Open(ctx)
	if err != nil {
		t.Fatalf("open with a stalled manager first: %v", err)
	}
	defer s.(*Session).Close()
	if base := s.(*Session).base; !strings.HasSuffix(base, good.addr) {
		t.Fatalf("session with %s, want %s", base, good.addr)
	}
}

// A node describes itself as it opens a session; the manager's hook gets
// the description under the certificate's node ID, and a description past
// its bounds refuses the session.
func TestSessionDescribesNode(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	var mu sync.Mutex
	got := map[string]Description{}
	m := serve(t, c, f, nil, func(sc *ServerConfig) {
		sc.Describe = func(_ context.Context, node string, _ netip.Addr, d *Description) error {
			mu.Lock()
			defer mu.Unlock()
			if d != nil {
				got[node] = *d
			}
			return nil
		}
	})
	want := Description{OS: "linux", Arch: "arm64", EngineVersion: "28.2.2", EngineLabels: map[string]string{"zone": "b"}, NanoCPUs: 4e9, MemoryBytes: 1 << 30}
	for _, tc := range []struct {
		name string
		desc Description
		ok   bool
	}{
		{"described", want, true},
		{"too many labels", Description{EngineLabels: func() map[string]string {
			m := map[string]string{}
			for i := range maxEngineLabels + 1 {
				m[fmt.Sprint(i)] = ""
			}
			return m
		}()}, false},
		{"long field", Description{OS: strings.Repeat("x", maxDescribeField+1)}, false},
		{"negative memory", Description{MemoryBytes: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			clear(got)
			mu.Unlock()
			p := c.params(w, nil)
			conn, err := NewConnector(ClientConfig{Managers: []string{m.addr}, TLS: p.ClientConfig,
				Describe: func() Description { return tc.desc }})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := conn.Open(ctx)
			if tc.ok != (err == nil) {
				t.Fatalf("open: %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("refusal: %v, want invalid argument", err)
				}
				mu.Lock()
				defer mu.Unlock()
				if len(got) != 0 {
					t.Fatalf("a refused description was recorded: %v", got)
				}
				return
			}
			s.(*Session).Close()
			mu.Lock()
			defer mu.Unlock()
			if d, ok := got[w.id]; !ok || !reflect.DeepEqual(d, tc.desc) {
				t.Fatalf("recorded %+v, want %+v under %s", got, tc.desc, w.id)
			}
		})
	}
}

// A node learns the managers from each session's hello: given only one
// at join, it fails over to another the first one named once the first
// goes away. Addresses past their bounds are dropped.
func TestHelloManagersFailover(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	b := serve(t, c, f, nil)
	a := serve(t, c, f, nil, func(sc *ServerConfig) {
		sc.Managers = func(context.Context) []string {
			return []string{"no-port", strings.Repeat("x", maxManagerAddr) + ":1", b.addr}
		}
	})
	conn := connector(t, c, w, []string{a.addr}, nil)
	s := open(t, conn)
	if !slices.Equal(s.managers, []string{b.addr}) {
		t.Fatalf("hello's managers kept: %v, want only %s", s.managers, b.addr)
	}
	a.stop()
	s2 := open(t, conn)
	if !strings.HasSuffix(s2.base, b.addr) {
		t.Fatalf("reconnected to %s, want %s (named in the hello)", s2.base, b.addr)
	}
}
