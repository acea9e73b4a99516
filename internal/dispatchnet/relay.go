package dispatchnet

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
)

// Relayed logs: a node holds its session with one manager, and `service
// logs` may be asked of another. That manager asks the others, over their
// dispatcher ports under its own (manager) certificate, to fetch the logs
// from the node through the session they hold: POST pathRelayLogs with
// {Node, TaskID, options}; the answer's body is the stream, as the node
// sent it. Only a manager's certificate may ask (managers hold the whole
// store anyway); a node may only ever answer for itself.
const pathRelayLogs = "/hush.dispatcher/v1/relay-logs"

// ErrNoSession is the refusal of a logs request for a node that holds no
// session with the manager asked: another manager may hold it.
var ErrNoSession = errors.New("node holds no dispatcher session with this manager")

type relayRequest struct {
	Node   string
	TaskID string
	agent.LogOptions
}

// serveRelayLogs answers another manager's relayed logs request.
func (h *Handler) serveRelayLogs(w http.ResponseWriter, r *http.Request) {
	if _, err := h.peer(r); err != nil {
		h.fail(w, err)
		return
	}
	id, _ := pki.PeerIdentity(*r.TLS, h.c.ClusterID)
	if id.Role != pki.RoleManager {
		h.fail(w, errdefs.Unauthorized("only a manager may relay logs"))
		return
	}
	body, err := h.readBody(w, r, maxCallBody)
	if err != nil {
		h.fail(w, errdefs.BadRequest("request body over %d bytes or unreadable", maxCallBody))
		return
	}
	req, err := decodeBody[relayRequest](body)
	if err != nil {
		h.fail(w, err)
		return
	}
	var rc io.ReadCloser
	if req.Node != "" && req.Node == h.c.LocalNode && h.c.LocalLogs != nil {
		rc, err = h.c.LocalLogs(r.Context(), req.TaskID, req.LogOptions)
	} else {
		rc, err = h.Logs(r.Context(), req.Node, req.TaskID, req.LogOptions)
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	rctl := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if rctl.Flush() != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Relayer asks other managers for logs of nodes whose session they hold.
type Relayer struct {
	hc *http.Client
}

// NewRelayer returns a relayer dialling under tlsCfg (the manager's
// pki.TLSParams.ClientConfig).
func NewRelayer(tlsCfg func() (*tls.Config, error), log *slog.Logger) *Relayer {
	var d net.Dialer
	c := &Connector{c: ClientConfig{TLS: tlsCfg, Dial: d.DialContext}, log: log}
	return &Relayer{hc: &http.Client{Transport: c.transport()}}
}

// Logs asks the manager whose dispatcher is at addr for the logs of task
// taskID of node; ErrNoSession when that manager holds no session of it.
func (r *Relayer) Logs(ctx context.Context, addr, node, taskID string, o agent.LogOptions) (io.ReadCloser, error) {
	b, _ := json.Marshal(relayRequest{Node: node, TaskID: taskID, LogOptions: o})
	// The answer's headers come once the node answered the manager asked.
	hctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(logsAnswerTimeout+5*time.Second, cancel)
	req, err := http.NewRequestWithContext(hctx, http.MethodPost, "https://"+addr+pathRelayLogs, bytes.NewReader(b))
	if err != nil {
		cancel()
		return nil, err
	}
	resp, err := r.hc.Do(req)
	t.Stop()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: manager %s: %v", errdefs.ErrUnavailable, addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		err := readError(resp)
		resp.Body.Close()
		cancel()
		if errors.Is(err, errdefs.ErrUnavailable) {
			// No session there, or it did not answer: try another.
			return nil, fmt.Errorf("%w: %w", ErrNoSession, err)
		}
		return nil, err
	}
	return cancelOnClose{resp.Body, cancel}, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	c.cancel()
	return c.ReadCloser.Close()
}

// Close drops the relayer's idle connections.
func (r *Relayer) Close() { r.hc.CloseIdleConnections() }
