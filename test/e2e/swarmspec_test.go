package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// specFlags are the `docker swarm update` flags both systems take; init
// takes them too.
var specFlags = []string{"--cert-expiry", "48h", "--task-history-limit", "3", "--dispatcher-heartbeat", "7s",
	"--max-snapshots", "2", "--snapshot-interval", "5000"}

// specInfoLines picks the cluster-settings lines of `docker info`.
func specInfoLines(info string) []string {
	keep := regexp.MustCompile(`^\s*(Task History Retention Limit|Snapshot Interval|Number of Old Snapshots to Retain|Heartbeat Tick|Election Tick|Heartbeat Period|Expiry Duration|Force Rotate|Data Path Port|Root Rotation In Progress):`)
	var out []string
	for _, l := range strings.Split(info, "\n") {
		if keep.MatchString(l) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

func specGetSwarm(t *testing.T, sock string) swarm.Swarm {
	t.Helper()
	r := doRaw(t, sock, "GET", swarmAPI+"/swarm", "", nil)
	var sw swarm.Swarm
	if r.Status != 200 || json.Unmarshal(r.Body, &sw) != nil {
		t.Fatalf("GET /swarm on %s: %d %s", sock, r.Status, r.Body)
	}
	return sw
}

// specGolden holds Swarm's answer to specFlags: its `docker info` cluster
// settings lines, then its spec as JSON (labels and autolock, which the
// comparison leaves aside, cleared).
const specGolden = "swarmspec_ref"

// specRefOnSwarm returns Swarm's `docker info` settings lines and spec for
// specFlags. They come from testdata/swarm/swarmspec_ref.golden: setting
// them live would change the shared Swarm's cluster settings for every
// other user of the engine while the test runs (a history limit of 3
// prunes their services' task history, which no restore brings back).
// Only -update sets them on the reference Swarm, for a moment, and puts
// its previous spec back (at once, and again in Cleanup should the test
// stop first).
func specRefOnSwarm(t *testing.T) ([]string, swarm.Spec) {
	t.Helper()
	if !*update {
		want, ok := readGolden(t, specGolden)
		if !ok {
			t.Fatalf("no golden file %s: run with -update against Swarm", goldenPath(specGolden))
		}
		lines := strings.Split(strings.TrimSpace(want), "\n")
		var spec swarm.Spec
		if len(lines) < 2 || json.Unmarshal([]byte(lines[len(lines)-1]), &spec) != nil {
			t.Fatalf("golden file %s: want settings lines, then the spec as JSON", goldenPath(specGolden))
		}
		return lines[:len(lines)-1], spec
	}
	requireSwarm(t)
	ref := swarmCLI(t)
	prev := specGetSwarm(t, swarmSocket()).Spec
	restored := false
	restore := func() {
		if restored {
			return
		}
		cur := specGetSwarm(t, swarmSocket())
		body, _ := json.Marshal(prev)
		r := doRaw(t, swarmSocket(), "POST", fmt.Sprintf("%s/swarm/update?version=%d", swarmAPI, cur.Version.Index), "application/json", body)
		if r.Status != 200 {
			t.Errorf("restoring the reference Swarm's spec: %d %s", r.Status, r.Body)
			return
		}
		restored = true
	}
	t.Cleanup(restore)
	ref.MustDocker(append([]string{"swarm", "update"}, specFlags...)...)
	info := ref.MustDocker("info")
	spec := specGetSwarm(t, swarmSocket()).Spec
	restore()
	spec.Labels, spec.EncryptionConfig = nil, swarm.EncryptionConfig{}
	lines := specInfoLines(info)
	b, _ := json.Marshal(spec)
	writeGolden(t, specGolden, strings.Join(lines, "\n")+"\n"+string(b)+"\n")
	return lines, spec
}

// TestSpecInitOptions: `docker swarm init` with every cluster option on a
// --no-init hushd; `docker info` and GET /swarm show them as Swarm shows
// the same values set with `docker swarm update`.
func TestSpecInitOptions(t *testing.T) {
	h := startHushd(t, withArgs("--no-init"))
	out := h.MustDocker(append([]string{"swarm", "init", "--autolock", "--default-addr-pool", "10.20.0.0/16",
		"--default-addr-pool-mask-length", "24"}, specFlags...)...)
	m := regexp.MustCompile(`SWMKEY-1-[A-Za-z0-9+/]{43}`).FindString(out)
	if m == "" || !strings.Contains(out, "To unlock a swarm manager after it restarts, run the `docker swarm unlock`") {
		t.Fatalf("swarm init --autolock did not print the unlock key as Swarm does:\n%s", out)
	}
	info := h.MustDocker("info")
	for _, want := range []string{"Autolock Managers: true", "Default Address Pool: 10.20.0.0/16", "SubnetSize: 24",
		"Task History Retention Limit: 3", "Snapshot Interval: 5000", "Number of Old Snapshots to Retain: 2",
		"Heartbeat Period: 7 seconds", "Expiry Duration: 2 days"} {
		if !strings.Contains(info, want) {
			t.Errorf("docker info lacks %q:\n%s", want, info)
		}
	}
	got := specGetSwarm(t, h.Socket)
	if len(got.DefaultAddrPool) != 1 || got.DefaultAddrPool[0].String() != "10.20.0.0/16" || got.SubnetSize != 24 || !got.Spec.EncryptionConfig.AutoLockManagers {
		t.Fatalf("GET /swarm: pools %v size %d autolock %v", got.DefaultAddrPool, got.SubnetSize, got.Spec.EncryptionConfig.AutoLockManagers)
	}
	// Swarm networks get their subnets from the pool.
	net := "spec-net-" + runSuffix(t)
	h.MustDocker("network", "create", "-d", "overlay", net)
	t.Cleanup(func() { h.Docker("network", "rm", net) })
	if s := strings.TrimSpace(h.MustDocker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", net)); s != "10.20.0.0/24" {
		t.Fatalf("network %s subnet %q, want the pool's first /24", net, s)
	}

	// The same values on the reference, set with `docker swarm update`.
	refLines, refSpec := specRefOnSwarm(t)
	if a, b := specInfoLines(info), refLines; len(a) < 9 || strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Errorf("docker info differs:\nhushd:\n%s\nswarm:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
	mine := got.Spec
	mine.EncryptionConfig = refSpec.EncryptionConfig
	mine.Labels = refSpec.Labels
	a, _ := json.Marshal(mine)
	b, _ := json.Marshal(refSpec)
	if !bytes.Equal(a, b) {
		t.Errorf("spec differs:\nhushd: %s\nswarm: %s", a, b)
	}

	// Autolock from init holds across a restart, with the printed key.
	h.Restart()
	if st := strings.TrimSpace(h.MustDocker("info", "--format", "{{.Swarm.LocalNodeState}}")); st != "locked" {
		t.Fatalf("state after restart %q, want locked", st)
	}
	h.MustDockerStdin(m+"\n", "swarm", "unlock")
	if !strings.Contains(h.MustDocker("info"), "Snapshot Interval: 5000") {
		t.Fatal("settings lost across a restart")
	}
}

// TestSpecUpdateRefusals: bad settings are refused with Swarm's text and
// change nothing. Swarm's answers are recorded (-update runs them on the
// reference): were one accepted there, the shared Swarm's settings would
// change with nothing to put them back.
func TestSpecUpdateRefusals(t *testing.T) {
	h := startHushd(t)
	const golden = "swarmspec_update_refusals"
	refusals := [][]string{
		{"swarm", "update", "--cert-expiry", "30m"},
		{"swarm", "update", "--dispatcher-heartbeat", "-1s"},
	}
	side := func(cli *dockerCLI, sock string) string {
		var b strings.Builder
		for _, args := range refusals {
			before := specGetSwarm(t, sock).Version.Index
			_, e, code := cli.Docker(args...)
			fmt.Fprintf(&b, "$ docker %s\nexit %d\n%s\n", strings.Join(args, " "), code, strings.TrimSpace(e))
			if specGetSwarm(t, sock).Version.Index != before {
				t.Errorf("%v: a refused update changed the cluster on %s", args, sock)
			}
		}
		return b.String()
	}
	if *update {
		requireSwarm(t)
		writeGolden(t, golden, side(swarmCLI(t), swarmSocket()))
	}
	want, ok := readGolden(t, golden)
	if !ok {
		t.Fatalf("no golden file %s: run with -update against Swarm", goldenPath(golden))
	}
	if got := side(h.dockerCLI, h.Socket); got != want || strings.Contains(got, "exit 0") {
		t.Errorf("refusals differ from Swarm's %s (- Swarm, + hushd):\n%s", goldenPath(golden), lineDiff(want, got))
	}
}

// specCA makes a root CA (ECDSA P-256) valid from nb to na.
func specCA(t *testing.T, cn string, nb, na time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(k)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func specWrite(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// specTokenDigest is the CA digest a join token must carry for certPEM:
// Swarm's is the SHA-256 of the root's PEM as served (checked against the
// reference: its token's digest is `docker swarm ca | sha256sum`).
func specTokenDigest(certPEM []byte) string {
	sum := sha256.Sum256(certPEM)
	d := new(big.Int).SetBytes(sum[:]).Text(36)
	return strings.Repeat("0", 50-len(d)) + d
}

// specKeyForms is every form in which the key could leak: the PEM, the
// DER, their base64, the PEM as JSON escapes it, the line that carries the
// private scalar, and the scalar itself.
func specKeyForms(keyPEM []byte) map[string][]byte {
	blk, _ := pem.Decode(keyPEM)
	k, _ := x509.ParsePKCS8PrivateKey(blk.Bytes)
	scalar, _ := k.(*ecdsa.PrivateKey).Bytes()
	return map[string][]byte{
		"PEM":            keyPEM,
		"DER":            blk.Bytes,
		"base64 DER":     []byte(base64.StdEncoding.EncodeToString(blk.Bytes)),
		"base64 PEM":     []byte(base64.StdEncoding.EncodeToString(keyPEM)),
		"JSON PEM":       bytes.ReplaceAll(keyPEM, []byte("\n"), []byte(`\n`)),
		"first PEM line": bytes.Split(keyPEM, []byte("\n"))[1],
		"scalar":         scalar,
		"base64 scalar":  []byte(base64.StdEncoding.EncodeToString(scalar)),
	}
}

// TestSpecSwarmCA: `docker swarm ca` shows the root, `--rotate` makes a new
// one, `--rotate --ca-cert --ca-key` installs a given one; join tokens pin
// the new CA; bad CAs are refused as Swarm refuses them; the given key is
// in no answer, no log line and no file of the data dir.
func TestSpecSwarmCA(t *testing.T) {
	h := startHushd(t)
	dir := t.TempDir()
	root0 := strings.TrimSpace(h.MustDocker("swarm", "ca"))
	if root0 != strings.TrimSpace(specGetSwarm(t, h.Socket).TLSInfo.TrustRoot) || !strings.HasPrefix(root0, "-----BEGIN CERTIFICATE-----") {
		t.Fatalf("docker swarm ca: %q", root0)
	}
	tok0 := strings.TrimSpace(h.MustDocker("swarm", "join-token", "-q", "worker"))

	out := h.MustDocker("swarm", "ca", "--rotate")
	root1 := specGetSwarm(t, h.Socket).TLSInfo.TrustRoot
	if root1 == root0+"\n" || strings.TrimSpace(root1) == root0 || !strings.Contains(out, strings.TrimSpace(root1)) {
		t.Fatalf("--rotate: root unchanged or not printed:\n%s", out)
	}
	tok1 := strings.TrimSpace(h.MustDocker("swarm", "join-token", "-q", "worker"))
	if tok1 == tok0 || strings.Split(tok1, "-")[2] != specTokenDigest([]byte(root1)) {
		t.Fatalf("worker token %s does not pin the rotated CA", tok1)
	}

	now := time.Now()
	certPEM, keyPEM := specCA(t, "spec-e2e-ca", now.Add(-time.Hour), now.Add(5*365*24*time.Hour))
	_, otherKey := specCA(t, "spec-e2e-other", now.Add(-time.Hour), now.Add(5*365*24*time.Hour))
	soonCert, soonKey := specCA(t, "spec-e2e-soon", now.Add(-time.Hour), now.Add(30*24*time.Hour))
	certFile, keyFile := specWrite(t, dir, "ca.pem", certPEM), specWrite(t, dir, "ca-key.pem", keyPEM)

	// Refusals, compared with the reference (which they leave unchanged).
	refusals := [][]string{
		{"swarm", "ca", "--rotate", "-d", "--ca-cert", certFile, "--ca-key", specWrite(t, dir, "other.pem", otherKey)},
		{"swarm", "ca", "--rotate", "-d", "--ca-cert", specWrite(t, dir, "soon.pem", soonCert), "--ca-key", specWrite(t, dir, "soon-key.pem", soonKey)},
		{"swarm", "ca", "--rotate", "-d", "--ca-cert", certFile},
	}
	// Swarm's answers are recorded (-update runs them on the reference):
	// were one accepted, the shared Swarm's root CA and join tokens would
	// change under every other user of the engine.
	const caGolden = "swarmspec_ca_refusals"
	side := func(cli *dockerCLI) string {
		var b strings.Builder
		for i, args := range refusals {
			_, e, code := cli.Docker(args...)
			fmt.Fprintf(&b, "refusal %d: exit %d\n%s\n", i, code, strings.TrimSpace(e))
		}
		return b.String()
	}
	if *update {
		requireSwarm(t)
		refRoot := specGetSwarm(t, swarmSocket()).TLSInfo.TrustRoot
		writeGolden(t, caGolden, side(swarmCLI(t)))
		if specGetSwarm(t, swarmSocket()).TLSInfo.TrustRoot != refRoot {
			t.Fatal("a refused rotation changed the reference Swarm's CA")
		}
	}
	want, ok := readGolden(t, caGolden)
	if !ok {
		t.Fatalf("no golden file %s: run with -update against Swarm", goldenPath(caGolden))
	}
	if got := side(h.dockerCLI); got != want || strings.Contains(got, "exit 0") {
		t.Errorf("CA refusals differ from Swarm's %s (- Swarm, + hushd):\n%s", goldenPath(caGolden), lineDiff(want, got))
	}
	if specGetSwarm(t, h.Socket).TLSInfo.TrustRoot != root1 {
		t.Fatal("a refused rotation changed hushd's CA")
	}

	out = h.MustDocker("swarm", "ca", "--rotate", "--ca-cert", certFile, "--ca-key", keyFile)
	if !strings.Contains(out, strings.TrimSpace(string(certPEM))) {
		t.Fatalf("--ca-cert/--ca-key: the given cert is not printed as the new root:\n%s", out)
	}
	if got := specGetSwarm(t, h.Socket); got.TLSInfo.TrustRoot != string(certPEM) || got.Spec.CAConfig.SigningCACert != "" || got.Spec.CAConfig.SigningCAKey != "" {
		t.Fatalf("GET /swarm after --ca-cert/--ca-key: root given %v, signing cert %q key %q (Swarm shows neither)",
			got.TLSInfo.TrustRoot == string(certPEM), got.Spec.CAConfig.SigningCACert, got.Spec.CAConfig.SigningCAKey)
	}
	tok2 := strings.TrimSpace(h.MustDocker("swarm", "join-token", "-q", "worker"))
	if strings.Split(tok2, "-")[2] != specTokenDigest(certPEM) {
		t.Fatalf("worker token %s does not pin the given CA", tok2)
	}

	forms := specKeyForms(keyPEM)
	check := func(what string, b []byte) {
		t.Helper()
		for name, f := range forms {
			if bytes.Contains(b, f) {
				t.Errorf("the CA signing key (%s) is in %s", name, what)
			}
		}
	}
	for _, p := range []string{"/swarm", "/info", "/nodes", "/nodes/self", "/swarm/unlockkey", "/secrets", "/configs", "/services", "/tasks", "/networks", "/version"} {
		check("GET "+p, h.Raw("GET", swarmAPI+p, "", nil).Body)
	}
	for _, args := range [][]string{{"info"}, {"swarm", "ca"}, {"node", "inspect", "self"}, {"info", "--format", "{{json .Swarm}}"}} {
		o, e, _ := h.Docker(args...)
		check("docker "+strings.Join(args, " "), []byte(o+e))
	}
	// Another update (what `docker swarm update` sends after a rotation)
	// keeps the root, since GET /swarm gave it no certificate to resend.
	h.MustDocker("swarm", "update", "--task-history-limit", "4")
	if specGetSwarm(t, h.Socket).TLSInfo.TrustRoot != string(certPEM) {
		t.Fatal("a later swarm update lost the given root CA")
	}
	h.Stop()
	scanDir(t, h.DataDir, forms)
	b, _ := os.ReadFile(h.LogPath)
	check("the hushd log", b)
}
