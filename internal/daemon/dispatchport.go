package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// dispatchReservation is the dispatcher's listener, bound before init or
// join does anything else so that a taken port refuses them by name; the
// dispatcher serves on it once the node is a manager.
type dispatchReservation struct {
	addr string
	ln   net.Listener
}

// reserveDispatchLocked binds the dispatcher's port (listen port + 2) of
// plan, keeping the listener for the dispatcher. A taken port is the
// caller's refusal: workers would otherwise show Down with nothing said.
// Unavailable, without the control API's rpc prefix: no swarm call
// failed, a port of this host is busy. Nothing to do without a listen
// address.
func (d *Daemon) reserveDispatchLocked(plan listenPlan) error {
	if !plan.enabled() {
		return nil
	}
	addr, err := dispatchAddr(plan.Listen)
	if err != nil {
		return errdefs.BadRequest("invalid listen address %q: the dispatcher port (listen port + 2) is past 65535", plan.Listen)
	}
	// The join/CA port and etcd's peer port are bound later, by the join
	// service and etcd, after the cluster is made or the node admitted:
	// tried here first, so that a taken one refuses before anything is
	// done too (a port taken between the try and the bind still fails
	// then, as before).
	probes := []struct{ addr, role string }{{plan.Listen, "join/CA port (the listen port)"}}
	if d.cfg.External == nil {
		// With an external etcd no member runs here: no peer port.
		probes = append(probes, struct{ addr, role string }{nextPort(plan.Listen), "etcd peer port (listen port + 1)"})
	}
	for _, p := range probes {
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			return errdefs.Unavailable("%s", portText(p.addr, p.role, err))
		}
		_ = ln.Close()
	}
	if r := d.dispatchRes; r != nil && r.addr == addr {
		return nil
	}
	d.releaseDispatchLocked()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return errdefs.Unavailable("%s", dispatchPortText(addr, err))
	}
	d.dispatchRes = &dispatchReservation{addr: addr, ln: ln}
	return nil
}

// dispatchPortText names the port and its role: the user sees only it.
func dispatchPortText(addr string, err error) string {
	return portText(addr, "dispatcher port (listen port + 2, where workers keep their sessions)", err)
}

func portText(addr, role string, err error) string {
	why := err.Error()
	if errors.Is(err, syscall.EADDRINUSE) {
		why = "address already in use"
	}
	return fmt.Sprintf("cannot listen on %s, this manager's %s: %s; free it or choose another --listen-addr", addr, role, why)
}

// releaseDispatchLocked closes a reservation the dispatcher did not take.
func (d *Daemon) releaseDispatchLocked() {
	if r := d.dispatchRes; r != nil {
		_ = r.ln.Close()
		d.dispatchRes = nil
	}
}

// releaseUnservedDispatchLocked ends init's or join's reservation unless
// the node became a manager (whose dispatcher took it, or takes it at its
// next activation): a refused or worker join holds no port.
func (d *Daemon) releaseUnservedDispatchLocked() {
	if d.member == nil {
		d.releaseDispatchLocked()
	}
}

// takeDispatchLocked hands the reservation for addr to the dispatcher.
func (d *Daemon) takeDispatchLocked(addr string) net.Listener {
	r := d.dispatchRes
	if r == nil {
		return nil
	}
	d.dispatchRes = nil
	if r.addr != addr {
		_ = r.ln.Close()
		return nil
	}
	return r.ln
}

// noteDispatchProblem records why the dispatcher does not serve, for
// docker info's swarm Error.
func (d *Daemon) noteDispatchProblem(addr string, err error) {
	msg := dispatchPortText(addr, err) + " (retrying)"
	if old := d.dispatchProblem.Swap(&msg); old == nil || *old != msg {
		d.log.Error("dispatcher for workers not served; retrying", "addr", addr, "err", err)
	}
}

// Bounds of the back-off between attempts at a taken dispatcher port.
const (
	dispatchRetryFirst = 500 * time.Millisecond
	dispatchRetryMax   = 30 * time.Second
)

// retryDispatchPort binds addr again with back-off until it succeeds or
// ctx ends (nil then). A restarted manager keeps serving its cluster
// meanwhile: see DESIGN.md "Dispatcher port".
func (d *Daemon) retryDispatchPort(ctx context.Context, addr string) net.Listener {
	defer d.dispatchProblem.Store(nil)
	delay := dispatchRetryFirst
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ln
		}
		d.noteDispatchProblem(addr, err)
		delay = min(2*delay, dispatchRetryMax)
	}
}
