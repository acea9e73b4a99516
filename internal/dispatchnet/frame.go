package dispatchnet

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"unicode/utf8"

	"github.com/hush-secrets/hush/internal/agent"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/model"
)

// A session stream (server to node) is a sequence of frames:
//
//	u32 length (big-endian, of what follows) | u8 type | body
//
// hello and end bodies are JSON. An assignments body is
//
//	u32 header length | JSON header | per data item: u32 length | bytes
//
// where the header is the message with each item's bytes left out, in
// the order the bytes follow. Data bytes never pass through JSON (whose
// encoder keeps pooled copies), so the one buffer holding a frame is the
// only copy to wipe.
const (
	frameHello       byte = 1
	frameAssignments byte = 2
	frameEnd         byte = 3
)

// MaxFrame bounds a frame a node accepts: a full set carries every data
// version of the node's running tasks (each under 1 MiB), so it is large,
// but not without end.
const MaxFrame = 256 << 20

// maxControlFrame bounds hello and end frames.
const maxControlFrame = 8 << 10

var errFrame = errors.New("malformed dispatcher frame")

type wireItem struct {
	model.DataRef
	Name       string
	Templating string
	Size       int
}

type wireAssignments struct {
	Full         bool                 `json:",omitempty"`
	Tasks        []model.AssignedTask `json:",omitempty"`
	RemovedTasks []string             `json:",omitempty"`
	Data         []wireItem           `json:",omitempty"`
	RemovedData  []model.DataRef      `json:",omitempty"`
}

// hello opens a stream: the session's ID (for the calls of the session)
// and the heartbeat period the node must keep.
type hello struct {
	Session         string
	HeartbeatMillis int64
	// Managers are the cluster's managers' dispatcher addresses as the
	// answering manager knows them (at most maxHelloManagers): the node
	// fails over to those, not only to the ones it was given at join.
	Managers []string `json:",omitempty"`
}

// Bounds on the manager list a hello carries.
const (
	maxHelloManagers = 32
	maxManagerAddr   = 200
)

// validManagers keeps the addresses that are host:port within bounds, at
// most maxHelloManagers of them.
func validManagers(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		if len(out) == maxHelloManagers {
			break
		}
		if len(a) == 0 || len(a) > maxManagerAddr {
			continue
		}
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			continue
		}
		out = append(out, a)
	}
	return out
}

// wireError is an error as it crosses: a category and a bounded text.
type wireError struct {
	Kind string
	Msg  string
}

// frame builds a frame of type typ around body.
func frame(typ byte, body []byte) []byte {
	b := make([]byte, 5+len(body))
	binary.BigEndian.PutUint32(b, uint32(1+len(body)))
	b[4] = typ
	copy(b[5:], body)
	return b
}

// encodeAssignments returns m as one frame; the caller writes and wipes it.
func encodeAssignments(m model.Assignments) ([]byte, error) {
	w := wireAssignments{Full: m.Full, Tasks: m.Tasks, RemovedTasks: m.RemovedTasks, RemovedData: m.RemovedData}
	size := 0
	for _, it := range m.Data {
		w.Data = append(w.Data, wireItem{DataRef: it.DataRef, Name: it.Name, Templating: it.Templating, Size: len(it.Data)})
		size += 4 + len(it.Data)
	}
	hdr, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("encode assignments: %w: %w", errdefs.ErrInternal, err)
	}
	size += 1 + 4 + len(hdr)
	if size > MaxFrame {
		return nil, errdefs.Unavailable("assignments of %d bytes exceed the %d-byte frame bound", size, MaxFrame)
	}
	b := make([]byte, 4+size)
	binary.BigEndian.PutUint32(b, uint32(size))
	b[4] = frameAssignments
	binary.BigEndian.PutUint32(b[5:], uint32(len(hdr)))
	off := 9 + copy(b[9:], hdr)
	for _, it := range m.Data {
		binary.BigEndian.PutUint32(b[off:], uint32(len(it.Data)))
		off += 4
		off += copy(b[off:], it.Data)
	}
	return b, nil
}

// readFrame reads one frame of at most max bytes. The body is the
// caller's to wipe.
func readFrame(r io.Reader, max int) (byte, []byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return 0, nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size < 1 || uint64(size) > uint64(max) {
		return 0, nil, fmt.Errorf("%w: frame of %d bytes (bound %d)", errFrame, size, max)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		clear(b)
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return b[0], b[1:], nil
}

// decodeAssignments parses an assignments body. Each item's data is a
// copy of its own (the agent wipes items one by one); the caller wipes
// body.
func decodeAssignments(body []byte) (m model.Assignments, err error) {
	if len(body) < 4 {
		return m, errFrame
	}
	hl := binary.BigEndian.Uint32(body)
	if uint64(hl) > uint64(len(body)-4) {
		return m, errFrame
	}
	var w wireAssignments
	if err := json.Unmarshal(body[4:4+hl], &w); err != nil {
		return m, fmt.Errorf("%w: header: %w", errFrame, err)
	}
	for _, at := range w.Tasks {
		if at.Task == nil {
			return m, fmt.Errorf("%w: a task without a record", errFrame)
		}
	}
	rest := body[4+hl:]
	defer func() {
		if err != nil {
			m.Wipe()
			m = model.Assignments{}
		}
	}()
	m = model.Assignments{Full: w.Full, Tasks: w.Tasks, RemovedTasks: w.RemovedTasks, RemovedData: w.RemovedData}
	for _, it := range w.Data {
		if err := checkItem(it); err != nil {
			return m, err
		}
		if len(rest) < 4 {
			return m, errFrame
		}
		n := binary.BigEndian.Uint32(rest)
		rest = rest[4:]
		if int64(n) != int64(it.Size) || uint64(n) > uint64(len(rest)) {
			return m, fmt.Errorf("%w: data length does not match its header", errFrame)
		}
		d := make([]byte, n)
		copy(d, rest)
		rest = rest[n:]
		m.Data = append(m.Data, model.DataItem{DataRef: it.DataRef, Name: it.Name, Templating: it.Templating, Data: d})
	}
	if len(rest) != 0 {
		return m, fmt.Errorf("%w: %d bytes after the last item", errFrame, len(rest))
	}
	return m, nil
}

// checkItem holds an item to what the dispatcher can send: a kind, and
// data within that kind's bound.
func checkItem(it wireItem) error {
	switch {
	case it.Kind == "secret" && it.Size >= 0 && it.Size < model.MaxSecretData:
	case it.Kind == "config" && it.Size >= 0 && it.Size < model.MaxConfigData:
	default:
		return fmt.Errorf("%w: item of kind %q and %d bytes", errFrame, it.Kind, it.Size)
	}
	return nil
}

// Error categories as they cross, most specific first (a failed
// precondition is also an invalid argument).
var kinds = []struct {
	name string
	cat  error
}{
	{"precondition", errdefs.ErrFailedPrecondition},
	{"noleader", errdefs.ErrNoLeader},
	{"sequence", errdefs.ErrOutOfSequence},
	{"invalid", errdefs.ErrInvalidArgument},
	{"notfound", errdefs.ErrNotFound},
	{"exists", errdefs.ErrAlreadyExists},
	{"conflict", errdefs.ErrConflict},
	{"unavailable", errdefs.ErrUnavailable},
	{"unauthorized", errdefs.ErrUnauthorized},
	{"forbidden", errdefs.ErrForbidden},
	{"nospace", errdefs.ErrNoSpace},
}

// maxErrorText bounds an error's text either way (the dispatcher's own
// texts are shorter; a node's report text is bounded the same).
const maxErrorText = 4096

// toWire categorises err; an uncategorised error crosses as "internal"
// without its text (it may name store internals).
func toWire(err error) wireError {
	var e *errdefs.Error
	if errors.Is(err, agent.ErrNodeRemoved) {
		msg := agent.ErrNodeRemoved.Error()
		if errors.As(err, &e) {
			msg = e.Msg
		}
		return wireError{Kind: kindRemoved, Msg: clip(msg)}
	}
	for _, k := range kinds {
		if errors.Is(err, k.cat) {
			msg := err.Error()
			if errors.As(err, &e) {
				msg = e.Msg
			}
			return wireError{Kind: k.name, Msg: clip(msg)}
		}
	}
	return wireError{Kind: "internal", Msg: "internal error"}
}

// fromWire rebuilds a categorised error.
func fromWire(w wireError) error {
	if w.Kind == kindRemoved {
		return removedError{msg: clip(w.Msg)}
	}
	for _, k := range kinds {
		if k.name == w.Kind {
			return &errdefs.Error{Category: k.cat, Msg: clip(w.Msg)}
		}
	}
	return &errdefs.Error{Category: errdefs.ErrInternal, Msg: "manager: " + clip(w.Msg)}
}

// clip cuts s to maxErrorText bytes on a character boundary.
func clip(s string) string {
	if len(s) <= maxErrorText {
		return s
	}
	s = s[:maxErrorText]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// kindRemoved is the wire kind of a refusal of a removed node: the agent
// stops on it (agent.ErrNodeRemoved) rather than reconnecting.
const kindRemoved = "removed"

// removedError is a removal refusal as the node receives it: unauthorized,
// and agent.ErrNodeRemoved.
type removedError struct{ msg string }

func (e removedError) Error() string { return e.msg }

func (e removedError) Is(target error) bool {
	return target == agent.ErrNodeRemoved || target == errdefs.ErrUnauthorized
}
