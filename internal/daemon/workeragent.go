package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/dispatchnet"
	"github.com/hush-secrets/hush/internal/pki"
)

// startWorkerAgentLocked runs a worker's agent: its only channel to the
// cluster is a dispatchnet session with one of the managers it was given
// at join (their dispatcher ports), under its worker certificate; its
// tasks run on the host's engine, their secrets in this node's tmpfs
// root. The caller holds d.mu; a node without an engine runs nothing.
func (d *Daemon) startWorkerAgentLocked() error {
	if d.worker == nil || d.engine == nil || d.runStop != nil {
		return nil
	}
	ws := d.worker
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(ws.CAPEM)) {
		return fmt.Errorf("worker state %s has no CA certificate", d.workerPath())
	}
	params := pki.TLSParams{ClusterID: ws.ClusterID,
		Cert:  d.currentCert,
		Roots: func() *x509.CertPool { return roots }}
	addrs := make([]string, 0, len(ws.Managers))
	for _, m := range ws.Managers {
		a, err := dispatchAddr(m)
		if err != nil {
			d.log.Warn("worker: skipping a manager address", "err", err)
			continue
		}
		addrs = append(addrs, a)
	}
	// ag serves the managers' logs requests for its own tasks only.
	var ag *agent.Agent
	opened := make(chan struct{})
	once := sync.OnceFunc(func() { close(opened) })
	conn, err := dispatchnet.NewConnector(dispatchnet.ClientConfig{Managers: addrs, TLS: params.ClientConfig, Logger: d.log,
		Describe: d.selfDescription, Opened: once,
		Logs: func(ctx context.Context, taskID string, o agent.LogOptions) (io.ReadCloser, error) {
			return ag.TaskLogs(ctx, taskID, o)
		}})
	if err != nil {
		return err
	}
	ag = agent.New(agent.Config{NodeID: d.nodeID, Dispatcher: conn,
		Executor: agent.NewExecutor(d.nodeID, d.engine, d.fs, d.realiser), Logger: d.log,
		// A worker has no networks manager: its agent removes the
		// networks its tasks no longer use.
		PruneNetworks: true,
		OnRemoved:     func() { d.removedFromCluster(ws) }})
	d.workerOpened = opened
	var ctx context.Context
	ctx, d.runStop = context.WithCancel(d.life)
	d.runDone.Add(1)
	go func() {
		defer d.runDone.Done()
		ag.Run(ctx)
	}()
	d.log.Info("worker agent running", "managers", addrs)
	return nil
}

// currentCert is the node's certificate as of this handshake (a renewal
// swaps it, roles.go).
func (d *Daemon) currentCert() (*tls.Certificate, error) {
	c := d.cert.Load()
	if c == nil {
		return nil, errors.New("this node has no certificate")
	}
	return c, nil
}
