package daemon

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/api"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/moby/moby/api/types/swarm"
)

func specStart(t *testing.T, dir string, noInit bool) *Daemon {
	t.Helper()
	d, err := Start(context.Background(), Config{DataDir: dir, Socket: filepath.Join(dir, "s.sock"), SecretsDir: filepath.Join(dir, "run"), NoInit: noInit})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func specPtr[T any](v T) *T { return &v }

// specHTTP calls the daemon's API socket.
func specHTTP(t *testing.T, d *Daemon, method, path string, body any) (int, []byte) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.cfg.Socket)
	}}}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://hush/v1.41"+path, rd)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// The raw API's `POST /swarm/init {"AutoLockManagers": true}` (no
// EncryptionConfig in the spec) and the CLI's form (both) lock the cluster
// as `docker swarm update --autolock=true` does.
func TestSpecAutolockAtInit(t *testing.T) {
	for name, req := range map[string]swarm.InitRequest{
		"request field": {ListenAddr: "0.0.0.0:2377", AutoLockManagers: true},
		"spec field":    {ListenAddr: "0.0.0.0:2377", Spec: swarm.Spec{EncryptionConfig: swarm.EncryptionConfig{AutoLockManagers: true}}},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			d := specStart(t, dir, true)
			if _, err := d.InitWithKey(ctx, req, nil); err != nil {
				t.Fatal(err)
			}
			sw, err := d.Inspect(ctx)
			if err != nil || !sw.Spec.EncryptionConfig.AutoLockManagers {
				t.Fatalf("autolock not on after init: %v", err)
			}
			key := fetchUnlockKey(t, d) // as `docker swarm init --autolock` does
			if !strings.HasPrefix(key, "SWMKEY-1-") {
				t.Fatalf("unlock key %q", key)
			}
			if d.plainKey.Exists() || !d.lockedKey.Exists() {
				t.Fatalf("key files: plain %v locked %v; want only the locked one", d.plainKey.Exists(), d.lockedKey.Exists())
			}
			d.Close()
			d = specStart(t, dir, true)
			defer d.Close()
			if d.State() != swarm.LocalNodeStateLocked {
				t.Fatalf("state after restart %s, want locked", d.State())
			}
			if err := d.Unlock(ctx, key); err != nil {
				t.Fatal(err)
			}
			if d.State() != swarm.LocalNodeStateActive {
				t.Fatalf("state after unlock %s", d.State())
			}
		})
	}
}

func TestSpecInitFieldsStoredAndApplied(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := specStart(t, dir, true)
	logDriver := &swarm.Driver{Name: "json-file", Options: map[string]string{"max-size": "1m"}}
	req := swarm.InitRequest{
		ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "127.0.0.1", DataPathAddr: "127.0.0.1", DataPathPort: 7789,
		DefaultAddrPool: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}, SubnetSize: 26,
		Availability: swarm.NodeAvailabilityDrain,
	}
	req.Spec.Labels = map[string]string{"team": "infra"}
	req.Spec.Orchestration.TaskHistoryRetentionLimit = specPtr(int64(3))
	req.Spec.Raft = swarm.RaftConfig{SnapshotInterval: 5000, KeepOldSnapshots: specPtr(uint64(2)), ElectionTick: 20, HeartbeatTick: 2}
	req.Spec.Dispatcher.HeartbeatPeriod = 7 * time.Second
	req.Spec.CAConfig.NodeCertExpiry = 48 * time.Hour
	req.Spec.CAConfig.ExternalCAs = []*swarm.ExternalCA{{Protocol: "cfssl", URL: "https://ca.example:8888"}}
	req.Spec.TaskDefaults.LogDriver = logDriver
	if _, err := d.InitWithKey(ctx, req, nil); err != nil {
		t.Fatal(err)
	}
	sw, err := d.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := sw.Spec
	switch {
	case *s.Orchestration.TaskHistoryRetentionLimit != 3, s.Raft.SnapshotInterval != 5000, *s.Raft.KeepOldSnapshots != 2,
		s.Raft.ElectionTick != 20, s.Raft.HeartbeatTick != 2, s.Raft.LogEntriesForSlowFollowers != 500,
		s.Dispatcher.HeartbeatPeriod != 7*time.Second, s.CAConfig.NodeCertExpiry != 48*time.Hour,
		len(s.CAConfig.ExternalCAs) != 1, !reflect.DeepEqual(s.TaskDefaults.LogDriver, logDriver), s.Labels["team"] != "infra",
		sw.DataPathPort != 7789, sw.SubnetSize != 26, len(sw.DefaultAddrPool) != 1 || sw.DefaultAddrPool[0].String() != "10.20.0.0/16":
		t.Fatalf("init settings not as asked: %+v", sw.ClusterInfo)
	}
	n, err := nodes.Get(ctx, d.store, d.nodeID)
	if err != nil || n.Spec.Availability != swarm.NodeAvailabilityDrain {
		t.Fatalf("availability %q %v, want drain", n.Spec.Availability, err)
	}
	if os := d.orchestratorSettings(); os.HistoryLimit != 3 || !reflect.DeepEqual(os.LogDriver, logDriver) {
		t.Fatalf("orchestrator settings %+v", os)
	}
	pools, size, err := d.addrPools(ctx)
	if err != nil || size != 26 || len(pools) != 1 {
		t.Fatalf("network pools %v /%d %v", pools, size, err)
	}
	// The raft settings reach etcd at the next start.
	want := store.Tuning{SnapshotCount: 5000, MaxSnapFiles: 3, SnapshotCatchUpEntries: 500, Heartbeat: 200 * time.Millisecond, ElectionTimeout: 2 * time.Second}
	if d.spec.running == want {
		t.Fatal("etcd cannot have been started with settings given after it started")
	}
	d.Close()
	d = specStart(t, dir, true)
	defer d.Close()
	if d.spec.running != want {
		t.Fatalf("etcd started with %+v, want %+v", d.spec.running, want)
	}
	// An update replaces the whole spec, and a changed setting is applied.
	c, _ := cluster.Get(ctx, d.store)
	next := c.Spec
	next.Orchestration.TaskHistoryRetentionLimit = specPtr(int64(-1))
	next.Raft.SnapshotInterval = 7000
	if err := d.Update(ctx, c.Version, next, api.SwarmUpdateFlags{}); err != nil {
		t.Fatal(err)
	}
	if d.orchestratorSettings().HistoryLimit != -1 || d.loadTuning().SnapshotCount != 7000 {
		t.Fatalf("update not applied: %+v %+v", d.orchestratorSettings(), d.loadTuning())
	}
}

func TestSpecRefusalsChangeNothing(t *testing.T) {
	ctx := context.Background()
	d := specStart(t, t.TempDir(), true)
	defer d.Close()
	req := swarm.InitRequest{ListenAddr: "0.0.0.0:2377"}
	req.Spec.CAConfig.NodeCertExpiry = 30 * time.Minute
	_, err := d.InitWithKey(ctx, req, nil)
	if err == nil || err.Error() != "error updating cluster settings: rpc error: code = InvalidArgument desc = minimum certificate expiry time is: 1h0m0s" {
		t.Fatalf("init: %v", err)
	}
	if ok, _ := cluster.Exists(ctx, d.store); ok || d.State() != swarm.LocalNodeStateInactive {
		t.Fatal("a refused init left a cluster")
	}
	for _, bad := range []swarm.InitRequest{
		{ListenAddr: "0.0.0.0:2377", DataPathPort: 80},
		{ListenAddr: "0.0.0.0:2377", DefaultAddrPool: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, SubnetSize: 31},
		{ListenAddr: "0.0.0.0:2377", Spec: swarm.Spec{Raft: swarm.RaftConfig{ElectionTick: 3, HeartbeatTick: 1}}},
	} {
		if _, err := d.InitWithKey(ctx, bad, nil); err == nil {
			t.Fatalf("init %+v accepted", bad)
		}
	}
	if ok, _ := cluster.Exists(ctx, d.store); ok {
		t.Fatal("a refused init left a cluster")
	}
	if _, err := d.InitWithKey(ctx, swarm.InitRequest{ListenAddr: "0.0.0.0:2377"}, nil); err != nil {
		t.Fatal(err)
	}
	c, _ := cluster.Get(ctx, d.store)
	for _, edit := range []func(*swarm.Spec){
		func(s *swarm.Spec) { s.CAConfig.NodeCertExpiry = time.Minute },
		func(s *swarm.Spec) { s.Name = "other" },
		func(s *swarm.Spec) { s.Dispatcher.HeartbeatPeriod = -1 },
		func(s *swarm.Spec) {
			s.CAConfig.SigningCACert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
		},
	} {
		s := c.Spec
		s.Orchestration.TaskHistoryRetentionLimit = specPtr(int64(9))
		edit(&s)
		if err := d.Update(ctx, c.Version, s, api.SwarmUpdateFlags{SigningCAKey: []byte("x")}); err == nil {
			t.Fatalf("update %+v accepted", s)
		}
	}
	after, _ := cluster.Get(ctx, d.store)
	if after.Version != c.Version || *after.Spec.Orchestration.TaskHistoryRetentionLimit != 5 {
		t.Fatal("a refused update changed the cluster")
	}
}

func specCA(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "spec-daemon-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(5 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(k)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// keyForms is every form the key could leak in.
func keyForms(keyPEM []byte) map[string][]byte {
	blk, _ := pem.Decode(keyPEM)
	forms := map[string][]byte{
		"PEM":          keyPEM,
		"DER":          blk.Bytes,
		"base64 DER":   []byte(base64.StdEncoding.EncodeToString(blk.Bytes)),
		"base64 PEM":   []byte(base64.StdEncoding.EncodeToString(keyPEM)),
		"JSON PEM":     bytes.ReplaceAll(keyPEM, []byte("\n"), []byte(`\n`)),
		"private part": blk.Bytes[7:39], // SEC 1: the 32-byte scalar
	}
	// The first body line encodes the private scalar; later ones carry the
	// public key, which the certificate shows anyway.
	forms["first PEM line"] = bytes.Split(keyPEM, []byte("\n"))[1]
	return forms
}

func assertNoKeyIn(t *testing.T, what string, b []byte, forms map[string][]byte) {
	t.Helper()
	for name, f := range forms {
		if bytes.Contains(b, f) {
			t.Errorf("the CA signing key (%s) is in %s", name, what)
		}
	}
}

// docker swarm ca --rotate --ca-cert --ca-key and --rotate alone, through
// the API: the given CA becomes the root, tokens pin it, and the key is in
// no response and no file.
func TestSpecCARotationKeyNeverReturned(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := specStart(t, dir, false)
	certPEM, keyPEM := specCA(t)
	forms := keyForms(keyPEM)
	sw, _ := d.Inspect(ctx)
	oldTokens := sw.JoinTokens
	spec := sw.Spec
	spec.CAConfig.SigningCACert = string(certPEM)
	spec.CAConfig.SigningCAKey = string(keyPEM)
	code, body := specHTTP(t, d, "POST", fmt.Sprintf("/swarm/update?version=%d", sw.Version.Index), spec)
	if code != http.StatusOK {
		t.Fatalf("update: %d %s", code, body)
	}
	var got swarm.Swarm
	code, body = specHTTP(t, d, "GET", "/swarm", nil)
	if err := json.Unmarshal(body, &got); err != nil || code != 200 {
		t.Fatalf("GET /swarm: %d %s", code, body)
	}
	if got.TLSInfo.TrustRoot != string(certPEM) {
		t.Fatal("the given CA is not the trust root")
	}
	if got.Spec.CAConfig.SigningCAKey != "" || got.Spec.CAConfig.SigningCACert != "" {
		t.Fatal("GET /swarm shows the signing certificate or key (Swarm shows neither)")
	}
	if got.JoinTokens == oldTokens || strings.Split(got.JoinTokens.Worker, "-")[2] == strings.Split(oldTokens.Worker, "-")[2] {
		t.Fatal("join tokens still pin the old CA")
	}
	// The key is the one sealed in the record.
	c, _ := cluster.Get(ctx, d.store)
	sg, err := c.CASigner(&d.keys)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(keyPEM)
	given, _ := x509.ParseECPrivateKey(blk.Bytes)
	if !given.PublicKey.Equal(sg.Public()) {
		t.Fatal("the sealed key is not the given one")
	}
	var nodesOut []swarm.Node
	_, nb := specHTTP(t, d, "GET", "/nodes", nil)
	if err := json.Unmarshal(nb, &nodesOut); err != nil || len(nodesOut) != 1 || nodesOut[0].Description.TLSInfo.TrustRoot != string(certPEM) {
		t.Fatalf("the node does not show the new trust root (docker swarm ca --rotate waits for it): %s", nb)
	}
	for _, path := range []string{"/swarm", "/info", "/nodes", "/nodes/" + d.nodeID, "/swarm/unlockkey", "/secrets", "/services", "/tasks", "/networks"} {
		_, b := specHTTP(t, d, "GET", path, nil)
		assertNoKeyIn(t, "GET "+path, b, forms)
	}
	// A refused update (the key with another certificate) answers without
	// echoing the key.
	otherCert, _ := specCA(t)
	spec.CAConfig.SigningCACert = string(otherCert)
	code, b := specHTTP(t, d, "POST", fmt.Sprintf("/swarm/update?version=%d", got.Version.Index), spec)
	if code != http.StatusBadRequest || !strings.Contains(string(b), "certificate key mismatch") {
		t.Fatalf("mismatched key: %d %s", code, b)
	}
	assertNoKeyIn(t, "a refused update's answer", b, forms)

	// --rotate alone: ForceRotate+1 makes a new root.
	_, body = specHTTP(t, d, "GET", "/swarm", nil)
	_ = json.Unmarshal(body, &got)
	spec = got.Spec
	spec.CAConfig.ForceRotate++
	if code, body = specHTTP(t, d, "POST", fmt.Sprintf("/swarm/update?version=%d", got.Version.Index), spec); code != 200 {
		t.Fatalf("force rotate: %d %s", code, body)
	}
	_, body = specHTTP(t, d, "GET", "/swarm", nil)
	var rotated swarm.Swarm
	_ = json.Unmarshal(body, &rotated)
	if rotated.TLSInfo.TrustRoot == string(certPEM) || rotated.Spec.CAConfig.ForceRotate != 1 || rotated.JoinTokens == got.JoinTokens {
		t.Fatal("ForceRotate did not rotate the root CA")
	}
	d.Close()
	err = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		assertNoKeyIn(t, p, b, forms)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A record written by an earlier hushd, which kept the key in the spec in
// plaintext, is scrubbed at start.
func TestSpecScrubsPlaintextKeyOfEarlierRecord(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := specStart(t, dir, false)
	c, _ := cluster.Get(ctx, d.store)
	c.Spec.CAConfig.SigningCACert, c.Spec.CAConfig.SigningCAKey = "spec-old-cert", "-----BEGIN EC PRIVATE KEY-----\nspec-old-key\n-----END EC PRIVATE KEY-----\n"
	val, _ := json.Marshal(&c)
	if _, err := d.store.Table("cluster").Update(ctx, "default", c.Revision(), val); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d = specStart(t, dir, false)
	defer d.Close()
	o, err := d.store.Table("cluster").Get(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(o.Value, []byte("spec-old-key")) || bytes.Contains(o.Value, []byte("spec-old-cert")) {
		t.Fatalf("the plaintext key survived a restart: %s", o.Value)
	}
}

// --force-new-cluster on a running node keeps the cluster and applies the
// request's spec fields.
func TestSpecForceNewCluster(t *testing.T) {
	ctx := context.Background()
	d := specStart(t, t.TempDir(), false)
	defer d.Close()
	before, _ := d.Inspect(ctx)
	// Swarm restarts the node on a new listen or advertise address; hush
	// does not move a node, and says so by name rather than ignore them.
	for field, bad := range map[string]swarm.InitRequest{
		"ListenAddr":    {ListenAddr: "127.0.0.1:2999", ForceNewCluster: true},
		"AdvertiseAddr": {ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "10.9.9.9", ForceNewCluster: true},
	} {
		bad.Spec.Orchestration.TaskHistoryRetentionLimit = specPtr(int64(9))
		if _, err := d.InitWithKey(ctx, bad, nil); err == nil || !strings.Contains(err.Error(), field) {
			t.Fatalf("force-new-cluster with another %s: %v", field, err)
		}
	}
	if now, _ := d.Inspect(ctx); !reflect.DeepEqual(now.Spec, before.Spec) {
		t.Fatalf("a refused force-new-cluster changed the spec: %+v", now.Spec)
	}
	req := swarm.InitRequest{ListenAddr: "0.0.0.0:2377", ForceNewCluster: true}
	req.Spec.Orchestration.TaskHistoryRetentionLimit = specPtr(int64(7))
	id, err := d.InitWithKey(ctx, req, nil)
	if err != nil || id != d.nodeID {
		t.Fatalf("force-new-cluster: %q %v", id, err)
	}
	after, _ := d.Inspect(ctx)
	if after.ID != before.ID || *after.Spec.Orchestration.TaskHistoryRetentionLimit != 7 || !reflect.DeepEqual(after.Spec.Raft, before.Spec.Raft) {
		t.Fatalf("cluster %s→%s spec %+v", before.ID, after.ID, after.Spec)
	}
	if _, err := d.InitWithKey(ctx, swarm.InitRequest{ListenAddr: "0.0.0.0:2377"}, nil); err == nil || !strings.Contains(err.Error(), "already part of a swarm") {
		t.Fatalf("a second init without force: %v", err)
	}
}
