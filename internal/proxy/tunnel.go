package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// closeGrace is how long a tunnel waits, once the engine has finished
// sending, for the client to finish too before closing both ends. The
// docker CLI closes its connection as soon as the output ends.
const closeGrace = 5 * time.Second

// wantsHijack reports whether r may turn its connection into a raw stream:
// it asks for an upgrade (attach, exec start, /session, /grpc from any
// current client), or it is an attach or exec start from a client old
// enough to hijack without asking.
func wantsHijack(r *http.Request) bool {
	for _, v := range r.Header["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), "upgrade") {
				return true
			}
		}
	}
	if r.Method != http.MethodPost {
		return false
	}
	parts := strings.Split(strings.Trim(stripVersion(r.URL.Path), "/"), "/")
	if len(parts) != 3 {
		return false
	}
	return (parts[0] == "containers" && parts[2] == "attach") || (parts[0] == "exec" && parts[2] == "start")
}

// stripVersion drops a leading /vX.Y from path.
func stripVersion(path string) string {
	if !strings.HasPrefix(path, "/v") {
		return path
	}
	i := strings.IndexByte(path[1:], '/')
	if i < 0 {
		return path
	}
	seg := path[2 : i+1]
	if seg == "" || strings.Trim(seg, "0123456789.") != "" {
		return path
	}
	return path[i+1:]
}

// switches reports whether resp turns the connection into a raw stream:
// 101 for clients that asked to upgrade, a length-less 200 raw stream for
// those that did not.
func switches(resp *http.Response) bool {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return true
	}
	if resp.StatusCode != http.StatusOK || resp.ContentLength >= 0 || len(resp.TransferEncoding) > 0 {
		return false
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	return mt == "application/vnd.docker.raw-stream" || mt == "application/vnd.docker.multiplexed-stream"
}

// serveHijack sends r over a connection of its own and, if the engine
// switches protocols, joins that connection to the client's.
func (p *Proxy) serveHijack(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ec, err := p.dial(r.Context())
	if err != nil {
		p.fail(w, r, start, err)
		return
	}
	// Until the tunnel is up, a client that goes away (or Close) ends the
	// engine connection, which ends the attempt.
	var once sync.Once
	closeEngine := func() { once.Do(func() { ec.Close() }) }
	stopReq := context.AfterFunc(r.Context(), closeEngine)
	stopBase := context.AfterFunc(p.base, closeEngine)
	abort := func(err error) {
		stopReq()
		stopBase()
		closeEngine()
		p.fail(w, r, start, err)
	}

	// As sent, Connection and Upgrade included: they are for the engine.
	out := outgoing(context.Background(), r)
	// The engine may answer, and close, before it has read the whole
	// request (a container that exits at once): a failed write is only
	// fatal if no answer can be read either.
	werr := out.Write(ec)
	br := bufio.NewReader(ec)
	resp, err := http.ReadResponse(br, out)
	if err != nil {
		if werr != nil {
			err = werr
		}
		abort(err)
		return
	}

	if !switches(resp) {
		defer resp.Body.Close()
		defer closeEngine()
		defer stopBase()
		defer stopReq()
		h := w.Header()
		for k, vv := range resp.Header {
			h[k] = vv
		}
		removeHopByHop(h)
		w.WriteHeader(resp.StatusCode)
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		err := copyFlush(w, rc, resp.Body)
		p.logDone(r, resp.StatusCode, start, err)
		return
	}

	stopBase()
	if !stopReq() {
		// The client left while the engine answered.
		closeEngine()
		p.logDone(r, resp.StatusCode, start, r.Context().Err())
		return
	}
	cc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		closeEngine()
		writeError(w, http.StatusInternalServerError, "hush: cannot hand over the connection: "+err.Error())
		p.log.Warn("engine hijack failed", "method", r.Method, "path", r.URL.Path, "err", err)
		return
	}
	_ = cc.SetDeadline(time.Time{})

	var head bytes.Buffer
	fmt.Fprintf(&head, "HTTP/%d.%d %s\r\n", resp.ProtoMajor, resp.ProtoMinor, resp.Status)
	_ = resp.Header.Write(&head)
	head.WriteString("\r\n")
	if _, err := cc.Write(head.Bytes()); err != nil {
		cc.Close()
		closeEngine()
		p.logDone(r, resp.StatusCode, start, err)
		return
	}
	p.log.Debug("engine tunnel open", "method", r.Method, "path", r.URL.Path, "status", resp.StatusCode)
	err = p.tunnel(cc, brw.Reader, ec, br)
	p.logDone(r, resp.StatusCode, start, err)
}

var errNoHalfClose = errors.New("connection cannot half-close")

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errNoHalfClose
}

// tunnel copies bytes both ways between the client and the engine,
// starting with what each side's reader has buffered already. When one
// side finishes sending, the other is told so by a half-close; when both
// are done, or either fails, both connections are closed.
func (p *Proxy) tunnel(client net.Conn, clientBuf *bufio.Reader, engine net.Conn, engineBuf *bufio.Reader) error {
	var once sync.Once
	closeAll := func() {
		once.Do(func() {
			client.Close()
			engine.Close()
		})
	}
	stop := context.AfterFunc(p.base, closeAll)
	defer stop()

	up := make(chan error, 1)   // client -> engine
	down := make(chan error, 1) // engine -> client
	go func() {
		var err error
		if n := clientBuf.Buffered(); n > 0 {
			b, _ := clientBuf.Peek(n)
			_, err = engine.Write(b)
		}
		if err == nil {
			_, err = io.Copy(engine, client)
		}
		if err == nil {
			err = closeWrite(engine)
		}
		up <- err
	}()
	go func() {
		// engineBuf holds whatever followed the response head.
		_, err := io.Copy(client, engineBuf)
		if err == nil {
			err = closeWrite(client)
		}
		down <- err
	}()

	var err error
	select {
	case err = <-up:
		if err == nil {
			// stdin is done; the output goes on until the engine ends it.
			err = <-down
			closeAll()
			return err
		}
		closeAll()
		<-down
	case err = <-down:
		if err == nil {
			t := time.NewTimer(closeGrace)
			select {
			case err = <-up:
				t.Stop()
				closeAll()
				return err
			case <-t.C:
			}
		}
		closeAll()
		<-up
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
