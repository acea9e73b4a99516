package dispatchnet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
)

// Bounds on the connections one verified node identity holds at once
// with a manager's dispatcher listener (see docs/DESIGN.md, "Dispatcher
// transport"). Streams per connection are bounded (32) and so are session
// opens and log streams, but without these a node, or whoever stole its
// certificate, could open connections without end, each holding TLS and
// HTTP/2 state on the manager.
//
// What a legitimate node uses: a worker's session is one connection that
// carries its stream, its heartbeats, its calls and its log answers; a
// reconnect to the same manager opens a new one while the old one drains
// (its streams end with the session, the idle connection is then
// dropped); the HTTP/2 client opens one more for each 32 streams in
// flight at once (the session, up to MaxLogStreams log answers, and one
// call per task operation in flight, which grow with the tasks starting
// at once). So 1 to 3 in steady use, MaxConnsPerWorker leaves room for a
// few hundred task calls at once. A manager's certificate shows here only
// for relayed logs (Relayer, one stream per relayed task, 32 a
// connection): MaxConnsPerManager is that relayer's bound.
//
// A certificate refused although it verifies (a removed node's, a
// demoted node's manager certificate, a promoted node's old worker one:
// ServerConfig.Refuse, RefuseWorker, RefuseManager) is served, so that
// its holder is told why, but its connections count apart from its
// node's, at most MaxConnsRefused: whoever kept or stole it must not take
// the places of the node's current certificate.
const (
	MaxConnsPerWorker  = 16
	MaxConnsPerManager = 64
	MaxConnsRefused    = 2
)

// refusedBucket is where a node's connections under a refused certificate
// are counted (a node ID holds no '/').
func refusedBucket(node string) string { return node + "/refused" }

// connLimiter counts the connections of each verified node identity. A
// connection is counted once its handshake has verified the node's
// certificate (tls.Config.VerifyConnection, before any byte of HTTP), and
// refused there when its node holds the bound already; it is released
// when the server closes it (http.Server.ConnState). A handshake that
// fails before the node's certificate verifies counts nothing.
type connLimiter struct {
	clusterID string
	log       *slog.Logger
	max       func(pki.Role) int
	// refused says whether a verified certificate is refused now (nil:
	// none is).
	refused func(ctx context.Context, id pki.Identity, leaf *x509.Certificate) bool

	mu     sync.Mutex
	byNode map[string]int
	byConn map[net.Conn]string
}

func newConnLimiter(clusterID string, log *slog.Logger) *connLimiter {
	return &connLimiter{clusterID: clusterID, log: log, max: maxConns,
		byNode: map[string]int{}, byConn: map[net.Conn]string{}}
}

func maxConns(r pki.Role) int {
	if r == pki.RoleManager {
		return MaxConnsPerManager
	}
	return MaxConnsPerWorker
}

// guard returns cfg (this handshake's configuration) counting the
// connection conn under the identity its verified certificate shows.
func (l *connLimiter) guard(cfg *tls.Config, conn net.Conn) *tls.Config {
	cfg = cfg.Clone()
	prev := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if prev != nil {
			if err := prev(cs); err != nil {
				return err
			}
		}
		id, err := pki.PeerIdentity(cs, l.clusterID)
		if err != nil {
			// No identity to count under: pki's configuration refused it
			// above (prev); under another that verifies less, the
			// handler refuses every request on it by itself.
			return nil
		}
		bucket, max := id.NodeID, l.max(id.Role)
		if l.refused != nil && l.refused(context.Background(), id, cs.VerifiedChains[0][0]) {
			bucket, max = refusedBucket(id.NodeID), MaxConnsRefused
		}
		return l.acquire(conn, id, bucket, max)
	}
	return cfg
}

// acquire counts conn for id in bucket, or refuses it past max.
func (l *connLimiter) acquire(conn net.Conn, id pki.Identity, bucket string, max int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.byConn[conn]; ok {
		return nil
	}
	n := l.byNode[bucket]
	if n >= max {
		l.log.Warn("dispatcher connection refused: the node holds the most connections a node may",
			"node", id.NodeID, "role", string(id.Role), "refusedCert", bucket != id.NodeID, "connections", n, "limit", max, "remote", conn.RemoteAddr().String())
		return errdefs.Unavailable("node %s holds %d connections to this dispatcher, the most a %s may: close one first", id.NodeID, n, id.Role)
	}
	l.byNode[bucket] = n + 1
	l.byConn[conn] = bucket
	return nil
}

// moveRefused counts conn, counted among node's connections, among those
// of its refused certificates instead: its certificate was refused since
// its handshake.
func (l *connLimiter) moveRefused(conn net.Conn, node string) {
	if conn == nil {
		return
	}
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byConn[conn] != node {
		return
	}
	l.decLocked(node)
	l.byNode[refusedBucket(node)]++
	l.byConn[conn] = refusedBucket(node)
}

func (l *connLimiter) decLocked(bucket string) {
	if l.byNode[bucket] <= 1 {
		delete(l.byNode, bucket)
	} else {
		l.byNode[bucket]--
	}
}

// release uncounts conn (the raw connection, or the TLS connection over
// it); a connection never counted is ignored.
func (l *connLimiter) release(conn net.Conn) {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	bucket, ok := l.byConn[conn]
	if !ok {
		return
	}
	delete(l.byConn, conn)
	l.decLocked(bucket)
}

// connState releases a connection once the server is done with it.
func (l *connLimiter) connState(c net.Conn, s http.ConnState) {
	if s == http.StateClosed || s == http.StateHijacked {
		l.release(c)
	}
}

// count is how many connections node holds, refused certificates' not
// included (for tests).
func (l *connLimiter) count(node string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byNode[node]
}
