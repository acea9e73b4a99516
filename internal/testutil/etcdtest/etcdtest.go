package etcdtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is a one-member etcd cluster listening on Endpoint (https on
// 127.0.0.1) that requires a client certificate under CAFile.
type Server struct {
	Endpoint string
	// CAFile, CertFile and KeyFile are a client's TLS files (PEM).
	CAFile, CertFile, KeyFile string
	// Dir holds the TLS files and the member's data.
	Dir string
	e   *embed.Etcd
	ca  *x509.Certificate
	key *ecdsa.PrivateKey
	// quota is etcd's backend quota (0: etcd's default).
	quota int64
}

// Option changes how Start runs the server.
type Option func(*Server)

// WithQuota sets etcd's backend quota (--quota-backend-bytes), for tests
// of a full cluster.
func WithQuota(bytes int64) Option { return func(s *Server) { s.quota = bytes } }

// Start starts a server in a fresh temporary directory and stops it when
// the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{Dir: t.TempDir()}
	for _, o := range opts {
		o(s)
	}
	tlsFiles(t, s)
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

// Restart stops the server and starts it again on the same endpoint and
// data (the port is taken again at once; a test that loses it fails).
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = filepath.Join(s.Dir, "data")
	cfg.LogLevel = "error"
	cfg.QuotaBackendBytes = s.quota
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client := s.Endpoint
	if client == "" {
		client = "https://" + freeAddr(t)
	}
	cu, _ := url.Parse(client)
	peer, _ := url.Parse("http://" + freeAddr(t))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.ClientTLSInfo = transport.TLSInfo{
		CertFile:       filepath.Join(s.Dir, "server.crt"),
		KeyFile:        filepath.Join(s.Dir, "server.key"),
		TrustedCAFile:  s.CAFile,
		ClientCertAuth: true,
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("etcdtest: start: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		t.Fatal("etcdtest: server not ready within 60s")
	}
	s.e, s.Endpoint = e, client
}

// Stop stops the server (idempotent).
func (s *Server) Stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

// Client is a raw etcd client with the server's client files, closed when
// the test ends: what a test reads the stored bytes with.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := s.client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func (s *Server) client() (*clientv3.Client, error) {
	info := transport.TLSInfo{CertFile: s.CertFile, KeyFile: s.KeyFile, TrustedCAFile: s.CAFile}
	tc, err := info.ClientConfig()
	if err != nil {
		return nil, err
	}
	return clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}, TLS: tc, DialTimeout: 10 * time.Second,
		Logger: zap.NewNop()})
}

// Count is the number of keys under prefix.
func (s *Server) Count(ctx context.Context, prefix string) (int64, error) {
	cli, err := s.client()
	if err != nil {
		return 0, err
	}
	defer func() { _ = cli.Close() }()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}

// Dump returns every key and value in the server, for tests that look for
// clear text in what hush stored.
func (s *Server) Dump(t testing.TB) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := s.Client(t).Get(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatalf("etcdtest: dump: %v", err)
	}
	out := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// tlsFiles writes a CA, a server certificate for 127.0.0.1 and localhost,
// and a client certificate into s.Dir.
func tlsFiles(t testing.TB, s *Server) {
	t.Helper()
	now := time.Now()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcdtest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	s.ca, _ = x509.ParseCertificate(caDER)
	s.key = caKey
	s.CAFile = filepath.Join(s.Dir, "ca.crt")
	writePEM(t, s.CAFile, "CERTIFICATE", caDER)
	s.issue(t, filepath.Join(s.Dir, "server.crt"), filepath.Join(s.Dir, "server.key"), x509.ExtKeyUsageServerAuth)
	s.CertFile, s.KeyFile = filepath.Join(s.Dir, "client.crt"), filepath.Join(s.Dir, "client.key")
	s.IssueClient(t, s.CertFile, s.KeyFile)
}

// IssueClient writes a fresh client key pair under the server's CA to
// certFile and keyFile (a renewal, when they are the files in use).
func (s *Server) IssueClient(t testing.TB, certFile, keyFile string) {
	t.Helper()
	s.issue(t, certFile, keyFile, x509.ExtKeyUsageClientAuth)
}

func (s *Server) issue(t testing.TB, certFile, keyFile string, usage x509.ExtKeyUsage) {
	t.Helper()
	now := time.Now()
	key := newKey(t)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "etcdtest"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca, &key.PublicKey, s.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
