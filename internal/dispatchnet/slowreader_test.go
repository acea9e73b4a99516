package dispatchnet

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

// HTTP/2 frame types and flags the raw client below uses (RFC 9113).
const (
	h2Data, h2Headers, h2RST, h2Settings, h2GoAway = 0x0, 0x1, 0x3, 0x4, 0x7
	h2EndStream, h2EndHeaders, h2Ack               = 0x1, 0x4, 0x1
	h2InitialWindowSize                            = 0x4
)

func h2Frame(typ, flags byte, stream uint32, payload []byte) []byte {
	b := make([]byte, 9, 9+len(payload))
	b[0], b[1], b[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	b[3], b[4] = typ, flags
	binary.BigEndian.PutUint32(b[5:], stream)
	return append(b, payload...)
}

// hpackLiteral encodes a header field as a literal without indexing (no
// Huffman coding); every name and value here is under 127 bytes.
func hpackLiteral(name, value string) []byte {
	b := []byte{0, byte(len(name))}
	b = append(b, name...)
	b = append(b, byte(len(value)))
	return append(b, value...)
}

// TestCallAnswerDeadline: a node that announces a zero flow-control
// window (or never reads) does not hold the handler of its call for as
// long as it keeps the connection: the answer's write has the call
// deadline, after which the stream is reset. Both a refusal (no session)
// and an answer are held to it.
func TestCallAnswerDeadline(t *testing.T) {
	c := newCluster(t)
	f := newFixture()
	w := c.issue(t, pki.RoleWorker)
	f.store.Put(t, task("t1", w.id, swarm.TaskStateRunning))
	m := serve(t, c, f, nil, func(sc *ServerConfig) { sc.WriteTimeout = 300 * time.Millisecond })
	s := open(t, connector(t, c, w, []string{m.addr}, nil))
	next(t, s)
	for _, tc := range []struct {
		name    string
		session string
	}{{"refusal", ""}, {"answer", s.id}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := c.params(w, nil).ClientConfig()
			if err != nil {
				t.Fatal(err)
			}
			cfg.NextProtos = []string{"h2"}
			conn, err := tls.Dial("tcp", m.addr, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// The test's bound, far past the call's deadline.
			_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
			var hdr []byte
			for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", pathTask}, {":authority", "manager"}, {"content-type", "application/json"}} {
				hdr = append(hdr, hpackLiteral(kv[0], kv[1])...)
			}
			if tc.session != "" {
				hdr = append(hdr, hpackLiteral("hush-session", tc.session)...)
			}
			settings := make([]byte, 6)
			binary.BigEndian.PutUint16(settings, h2InitialWindowSize)
			out := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
			out = append(out, h2Frame(h2Settings, 0, 0, settings)...)
			out = append(out, h2Frame(h2Headers, h2EndHeaders, 1, hdr)...)
			out = append(out, h2Frame(h2Data, h2EndStream, 1, []byte(`{"TaskID":"t1"}`))...)
			if _, err := conn.Write(out); err != nil {
				t.Fatal(err)
			}
			var fh [9]byte
			answered := false
			for {
				if _, err := io.ReadFull(conn, fh[:]); err != nil {
					t.Fatalf("no reset of an answer the node cannot take: %v", err)
				}
				n := int(fh[0])<<16 | int(fh[1])<<8 | int(fh[2])
				payload := make([]byte, n)
				if _, err := io.ReadFull(conn, payload); err != nil {
					t.Fatal(err)
				}
				typ, flags, stream := fh[3], fh[4], binary.BigEndian.Uint32(fh[5:])&0x7fffffff
				switch {
				case typ == h2Settings && flags&h2Ack == 0:
					if _, err := conn.Write(h2Frame(h2Settings, h2Ack, 0, nil)); err != nil {
						t.Fatal(err)
					}
				case typ == h2Headers && stream == 1:
					answered = true
				case typ == h2Data && stream == 1:
					t.Fatalf("the manager sent %d bytes past a zero window", n)
				case typ == h2GoAway:
					t.Fatalf("connection closed (GOAWAY %x)", payload)
				case typ == h2RST && stream == 1:
					if !answered {
						t.Fatal("stream reset before its answer began")
					}
					return
				}
			}
		})
	}
}
