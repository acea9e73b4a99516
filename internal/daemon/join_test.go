package daemon

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

func TestListenPlanFor(t *testing.T) {
	tests := []struct {
		name                         string
		flag, req, advertise         string
		wantListen, wantAdv, wantErr string
	}{
		{name: "nothing asked: no port", advertise: "127.0.0.1"},
		{name: "CLI default without flag: no port", req: cliDefaultListen, advertise: "127.0.0.1"},
		{name: "flag", flag: "127.0.0.2:4000", req: cliDefaultListen, advertise: "127.0.0.2",
			wantListen: "127.0.0.2:4000", wantAdv: "127.0.0.2:4000"},
		{name: "request beats flag", flag: "127.0.0.2:4000", req: "127.0.0.3:5000", advertise: "127.0.0.3",
			wantListen: "127.0.0.3:5000", wantAdv: "127.0.0.3:5000"},
		{name: "advertise with another port: refused, not replaced", req: "0.0.0.0:5000", advertise: "10.0.0.1:9999",
			wantErr: "AdvertiseAddr 10.0.0.1:9999: hush advertises its listen port (5000)"},
		{name: "advertise with the listen port", req: "0.0.0.0:5000", advertise: "10.0.0.1:5000",
			wantListen: "0.0.0.0:5000", wantAdv: "10.0.0.1:5000"},
		{name: "unspecified advertise falls back to the listen IP", req: "127.0.0.5:5000", advertise: "0.0.0.0",
			wantListen: "127.0.0.5:5000", wantAdv: "127.0.0.5:5000"},
		{name: "no advertise given: the listen IP", flag: "10.0.0.2:2377",
			wantListen: "10.0.0.2:2377", wantAdv: "10.0.0.2:2377"},
		{name: "no advertise given, every address: loopback", req: "0.0.0.0:4000",
			wantListen: "0.0.0.0:4000", wantAdv: "127.0.0.1:4000"},
		{name: "no port", req: "127.0.0.2", wantErr: "want host:port"},
		{name: "last port leaves no peer port", req: "127.0.0.2:65535", wantErr: "1-65533"},
		{name: "next to last leaves no dispatcher port", req: "127.0.0.2:65534", wantErr: "1-65533"},
		{name: "a name, not an IP", req: "localhost:4000", wantErr: "needs an IP address"},
		{name: "nothing to advertise", req: "0.0.0.0:4000", advertise: "0.0.0.0", wantErr: "must be an IP address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := listenPlanFor(tc.flag, tc.req, tc.advertise)
			if tc.wantErr != "" {
				if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !bytes.Contains([]byte(err.Error()), []byte(tc.wantErr)) {
					t.Fatalf("err = %v, want a bad request saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Listen != tc.wantListen || p.Advertise != tc.wantAdv {
				t.Fatalf("plan = %+v, want listen %q advertise %q", p, tc.wantListen, tc.wantAdv)
			}
			if p.enabled() {
				adv, lis := p.peerURLs()
				if adv != "https://"+nextPort(tc.wantAdv) || lis != "https://"+nextPort(tc.wantListen) {
					t.Fatalf("peer URLs %s %s are not the next port", adv, lis)
				}
			}
		})
	}
}

func TestWrapMasterKey(t *testing.T) {
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	node, err := pki.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	const id = "kurbt9bshlwqqcqxvy2sfg9m2"
	pub, sealed, err := wrapMasterKey(mk, &node.PublicKey, id)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, mk.Key) {
		t.Fatal("the wrapped key holds the master key in clear")
	}
	resp := joinResponse{KeyID: mk.ID, WrapPub: pub, WrappedKey: sealed}
	got, err := unwrapMasterKey(node, id, &resp)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != mk.ID || !bytes.Equal(got.Key, mk.Key) {
		t.Fatal("unwrapped key differs")
	}
	tamper := func(f func(r *joinResponse)) *joinResponse {
		r := resp
		r.WrappedKey = bytes.Clone(resp.WrappedKey)
		f(&r)
		return &r
	}
	for name, tc := range map[string]struct {
		key  *ecdsa.PrivateKey
		id   string
		resp *joinResponse
	}{
		"another node's key": {other, id, &resp},
		"another node ID":    {node, "a" + id[1:], &resp},
		"another key ID":     {node, id, tamper(func(r *joinResponse) { r.KeyID = "other" })},
		"flipped bit":        {node, id, tamper(func(r *joinResponse) { r.WrappedKey[len(r.WrappedKey)-1] ^= 1 })},
		"short":              {node, id, tamper(func(r *joinResponse) { r.WrappedKey = r.WrappedKey[:5] })},
		"bad public key":     {node, id, tamper(func(r *joinResponse) { r.WrapPub = []byte{4, 1, 2} })},
	} {
		if _, err := unwrapMasterKey(tc.key, tc.id, tc.resp); err == nil {
			t.Errorf("%s: unwrapped", name)
		}
	}
}

func TestCheckJoinRequest(t *testing.T) {
	good := joinRequest{NodeID: "kurbt9bshlwqqcqxvy2sfg9m2", Hostname: "h", Addr: "127.0.0.3:4000",
		PeerURL: "https://127.0.0.3:4001", Availability: "active"}
	for name, f := range map[string]func(r *joinRequest){
		"bad node ID":        func(r *joinRequest) { r.NodeID = "../x" },
		"long hostname":      func(r *joinRequest) { r.Hostname = string(bytes.Repeat([]byte("h"), 254)) },
		"address sans port":  func(r *joinRequest) { r.Addr = "127.0.0.3" },
		"plain peer URL":     func(r *joinRequest) { r.PeerURL = "http://127.0.0.3:4001" },
		"peer URL sans port": func(r *joinRequest) { r.PeerURL = "https://127.0.0.3" },
		"peer URL path":      func(r *joinRequest) { r.PeerURL = "https://127.0.0.3:4001/x" },
		"availability":       func(r *joinRequest) { r.Availability = "on" },
	} {
		r := good
		f(&r)
		if err := checkJoinRequest(&r); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want a bad request", name, err)
		}
	}
	if err := checkJoinRequest(&good); err != nil {
		t.Fatal(err)
	}
}

// The joining node rebuilds the manager's refusal with its category and
// text, so the CLI shows Swarm's words with the right status.
func TestJoinErrorRoundTrip(t *testing.T) {
	for _, err := range []error{
		errdefs.InvalidArgument(msgBadJoinToken),
		errdefs.BadRequest(msgManagerNeedsListen),
		errdefs.Unavailable("another manager is joining the swarm; retry when it has caught up"),
		errdefs.FailedPrecondition("x"),
	} {
		je, code := toJoinError(err)
		if code != 400 {
			t.Errorf("%v: code %d", err, code)
		}
		back := je.err()
		var e1, e2 *errdefs.Error
		errors.As(err, &e1)
		if !errors.As(back, &e2) || e2.Msg != e1.Msg || e2.Control != e1.Control || !errors.Is(back, e1.Category) {
			t.Errorf("%v came back as %#v", err, back)
		}
	}
	je, code := toJoinError(errors.New("etcd: disk on fire at /secret/path"))
	if code != 500 || bytes.Contains([]byte(je.Message), []byte("/secret/path")) {
		t.Errorf("an internal error is shown to the joiner: %d %q", code, je.Message)
	}
}

// freeLoopbackPort returns a port P with P, P+1 and P+2 free on
// 127.0.0.1 (a node's join/CA service, etcd peer and dispatcher ports),
// chosen below the kernel's ephemeral range (32768 and up by default): a
// node restarted by a test binds the same ports again, and a port of the
// ephemeral range may meanwhile be taken as the local port of any
// process's outgoing connection (a restart then failed in CI with
// "bind: address already in use").
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	for range 200 {
		port := 10000 + rand.IntN(22000)
		var ls []net.Listener
		for i := range 3 {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+i)))
			if err != nil {
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if len(ls) == 3 {
			return port
		}
	}
	t.Fatal("no three free ports in a row below the ephemeral range")
	return 0
}

// A hushd started with a listen address on an existing lone cluster
// becomes its first manager (the flag is honoured, not ignored), serves the
// CA that its join token pins, refuses a wrong token, and a manager token without a peer URL,
// with Swarm's texts, and after a restart is the same member.
func TestFirstManagerJoinService(t *testing.T) {
	dir := t.TempDir()
	d := start(t, dir)
	c := getCluster(t, d)
	d.Close()
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))
	d = startWith(t, Config{DataDir: dir, ListenAddr: listen})
	if d.store.Members() == nil || d.member == nil {
		t.Fatal("--listen-addr on an existing cluster did not make a member")
	}
	if _, err := os.Stat(filepath.Join(dir, "member.json")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	list, err := d.store.Members().List(ctx)
	if err != nil || len(list) != 1 || list[0].PeerURLs[0] != "https://"+nextPort(listen) || !list[0].Leader {
		t.Fatalf("members: %+v %v; want this one leading at https://%s", list, err, nextPort(listen))
	}
	tok, err := pki.ParseToken(c.JoinTokens.Manager)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := fetchCA(ctx, listen)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.VerifyCA(tok, bundle, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, csr, err := newKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	req := joinRequest{CSR: csr, NodeID: "kurbt9bshlwqqcqxvy2sfg9m2", Hostname: "h", Addr: "127.0.0.1:1",
		PeerURL: "https://127.0.0.1:2", Availability: "active"}
	for _, tc := range []struct{ token, peerURL, want string }{
		{otherLastChar(c.JoinTokens.Manager), req.PeerURL, msgBadJoinToken},
		{c.JoinTokens.Manager, "", msgManagerNeedsListen},
	} {
		r := req
		r.Token, r.PeerURL = tc.token, tc.peerURL
		_, err := callJoin(ctx, listen, roots, &r)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || err.Error() != tc.want {
			t.Errorf("join: %v, want %q", err, tc.want)
		}
	}
	// A joiner holding the manager token still may not take the identity
	// of a node the cluster knows (recorded without a key: no key can
	// match): it would get a certificate in that node's name and a second
	// etcd member under it.
	other := req
	other.Token, other.NodeID = c.JoinTokens.Manager, "x4u9cdtqgk1jzlw4o0wq7mdlc"
	if _, err := nodes.Record(ctx, d.store, nodes.Node{ID: other.NodeID, Addr: "10.9.9.9:2377",
		Spec: swarm.NodeSpec{Role: swarm.NodeRoleManager}}); err != nil {
		t.Fatal(err)
	}
	if _, err := callJoin(ctx, listen, roots, &other); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("a join claiming a known node's ID: %v, want already exists", err)
	}
	if n, _ := d.store.Members().List(ctx); len(n) != 1 {
		t.Fatalf("a refused join changed the membership: %+v", n)
	}
	d.Close()
	d = startWith(t, Config{DataDir: dir})
	if d.member == nil || d.listen.Listen != listen || d.State() != swarm.LocalNodeStateActive {
		t.Fatalf("after a restart: member %v listen %q state %s", d.member != nil, d.listen.Listen, d.State())
	}
	if _, err := fetchCA(ctx, listen); err != nil {
		t.Fatalf("join service after a restart: %v", err)
	}
}

// The joining node keeps only an answer made for it: its own key
// certified as a manager under the pinned CA, in its node ID and the
// answer's cluster, with the very bundle its token pinned.
func TestCheckJoinAnswer(t *testing.T) {
	now := time.Now()
	issue := func(bundle, keyDER, csr []byte, nodeID, clusterID string, role pki.Role) []byte {
		return issueTestCert(t, now, bundle, keyDER, csr, nodeID, clusterID, role)
	}
	bundle, caKey, roots, key, csr := testRootAndKey(t, now)
	otherBundle, otherKey, _, _, _ := testRootAndKey(t, now)
	_, otherCSR, err := newKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	const node, clusterID = "kurbt9bshlwqqcqxvy2sfg9m2", "x4u9cdtqgk1jzlw4o0wq7mdlc"
	good := joinResponse{ClusterID: clusterID, CAPEM: bundle, CertPEM: issue(bundle, caKey, csr, node, clusterID, pki.RoleManager)}
	if err := checkJoinAnswer(&good, bundle, roots, key, node, pki.RoleManager); err != nil {
		t.Fatalf("a right answer is refused: %v", err)
	}
	for name, mutate := range map[string]func(r *joinResponse){
		"another node's ID": func(r *joinResponse) {
			r.CertPEM = issue(bundle, caKey, csr, "qtjkgmxm5e054yae2sexwjkey", clusterID, pki.RoleManager)
		},
		"another cluster":      func(r *joinResponse) { r.ClusterID = "qtjkgmxm5e054yae2sexwjkey" },
		"a worker certificate": func(r *joinResponse) { r.CertPEM = issue(bundle, caKey, csr, node, clusterID, pki.RoleWorker) },
		"another key":          func(r *joinResponse) { r.CertPEM = issue(bundle, caKey, otherCSR, node, clusterID, pki.RoleManager) },
		"another CA":           func(r *joinResponse) { r.CertPEM = issue(otherBundle, otherKey, csr, node, clusterID, pki.RoleManager) },
		"another CA bundle":    func(r *joinResponse) { r.CAPEM = otherBundle },
		"no certificate":       func(r *joinResponse) { r.CertPEM = nil },
	} {
		r := good
		mutate(&r)
		if err := checkJoinAnswer(&r, bundle, roots, key, node, pki.RoleManager); err == nil {
			t.Errorf("an answer with %s is accepted", name)
		}
	}
	// A worker answer is checked the same way, for the worker role.
	worker := good
	worker.CertPEM = issue(bundle, caKey, csr, node, clusterID, pki.RoleWorker)
	if err := checkJoinAnswer(&worker, bundle, roots, key, node, pki.RoleWorker); err != nil {
		t.Fatalf("a right worker answer is refused: %v", err)
	}
	if err := checkJoinAnswer(&good, bundle, roots, key, node, pki.RoleWorker); err == nil {
		t.Error("a manager certificate is accepted as the worker answer")
	}
}

// issueTestCert certifies csr's key under the root bundle/keyDER (from
// pki.NewRootCA) and returns the PEM chain.
func issueTestCert(t *testing.T, now time.Time, bundle, keyDER, csr []byte, nodeID, clusterID string, role pki.Role) []byte {
	t.Helper()
	roots, err := pki.ParseRootBundle(bundle, now)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := x509.ParseECPrivateKey(keyDER)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(roots[0], signer, nil)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.Issue(pki.IssueRequest{CSR: csr, NodeID: nodeID, ClusterID: clusterID, Role: role, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return iss.PEM
}

// A manager's redirect is not followed: it would resend the join token to
// wherever it points, plain HTTP included.
func TestCallJoinRefusesRedirects(t *testing.T) {
	now := time.Now()
	bundle, caKey, roots, key, csr := testRootAndKey(t, now)
	cert, err := pki.TLSCertificate(issueTestCert(t, now, bundle, caKey, csr, "kurbt9bshlwqqcqxvy2sfg9m2", "x4u9cdtqgk1jzlw4o0wq7mdlc", pki.RoleManager), key)
	if err != nil {
		t.Fatal(err)
	}
	var leaked atomic.Bool
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b, _ := io.ReadAll(r.Body); bytes.Contains(b, []byte("SWMTKN")) {
			leaked.Store(true)
		}
	}))
	defer plain.Close()
	mgr := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+joinPath, http.StatusTemporaryRedirect)
	}))
	mgr.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert}}
	mgr.StartTLS()
	defer mgr.Close()
	_, err = callJoin(context.Background(), mgr.Listener.Addr().String(), roots, &joinRequest{Token: "SWMTKN-1-secret", PeerURL: "https://127.0.0.1:2"})
	if err == nil || leaked.Load() {
		t.Fatalf("a redirect was followed (token sent in clear: %v): %v", leaked.Load(), err)
	}
}

// testRootAndKey makes a root CA (its bundle, key DER and parsed roots) and
// a node key with its CSR.
func testRootAndKey(t *testing.T, now time.Time) (bundle, caKey []byte, roots []*x509.Certificate, key *ecdsa.PrivateKey, csr []byte) {
	t.Helper()
	bundle, caKey, err := pki.NewRootCA(now)
	if err != nil {
		t.Fatal(err)
	}
	if roots, err = pki.ParseRootBundle(bundle, now); err != nil {
		t.Fatal(err)
	}
	if key, csr, err = newKeyAndCSR(); err != nil {
		t.Fatal(err)
	}
	return bundle, caKey, roots, key, csr
}

// otherLastChar is tok with its last character changed: a wrong token of
// the right shape. (Always "x" was the same token once in 36.)
func otherLastChar(tok string) string {
	last := byte('x')
	if tok[len(tok)-1] == last {
		last = 'y'
	}
	return tok[:len(tok)-1] + string(last)
}
