package errdefs

import (
	"errors"
	"fmt"
)

// Category sentinels. Match with errors.Is.
var (
	ErrInvalidArgument = errors.New("invalid argument")
	ErrNotFound        = errors.New("not found")
	ErrAlreadyExists   = errors.New("already exists")
	ErrConflict        = errors.New("conflict")
	ErrUnavailable     = errors.New("unavailable")
	ErrUnauthorized    = errors.New("unauthorized")
	ErrForbidden       = errors.New("forbidden")
	ErrInternal        = errors.New("internal")
	// ErrNoSpace means the cluster store is at its quota: the client may
	// free space (remove objects) and retry; waiting alone does not help.
	ErrNoSpace = errors.New("insufficient storage")
	// ErrOutOfSequence is a write against a stale version. It is the
	// client's conflict, so it wraps ErrConflict, but Swarm reports it with
	// gRPC code Unknown and clients match on that text.
	ErrOutOfSequence = fmt.Errorf("update out of sequence: %w", ErrConflict)
	// ErrFailedPrecondition is a request refused because of the object's
	// state; dockerd answers swarmkit's FailedPrecondition with 400.
	ErrFailedPrecondition = fmt.Errorf("failed precondition: %w", ErrInvalidArgument)
	// ErrNoLeader means the managers have no quorum: nothing can be
	// written until more than half of them are back. It is unavailable
	// (503) and the edge answers with Swarm's own text (NoLeaderMessage).
	ErrNoLeader = fmt.Errorf("no leader: %w", ErrUnavailable)
)

// NoLeaderMessage is what dockerd answers when the swarm has no leader.
const NoLeaderMessage = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online."

// Error is a categorised error with a client-facing message.
//
// Control marks errors that, in Docker Swarm, come from the swarm control API
// over gRPC: dockerd prints those as "rpc error: code = X desc = msg", and the
// docker CLI shows exactly that text. Keeping the flag here (rather than
// baking the prefix into messages) lets the edge decide the rendering.
type Error struct {
	Category error
	Msg      string
	Control  bool
}

func (e *Error) Error() string { return e.Msg }

// Unwrap lets errors.Is match the category.
func (e *Error) Unwrap() error { return e.Category }

func newf(cat error, control bool, format string, args ...any) error {
	return &Error{Category: cat, Msg: fmt.Sprintf(format, args...), Control: control}
}

// InvalidArgument is a control-API validation error (HTTP 400).
func InvalidArgument(format string, args ...any) error {
	return newf(ErrInvalidArgument, true, format, args...)
}

// AlreadyExists is a control-API uniqueness error (HTTP 409).
func AlreadyExists(format string, args ...any) error {
	return newf(ErrAlreadyExists, true, format, args...)
}

// NotFound is a lookup miss as dockerd reports it (HTTP 404, no rpc prefix).
func NotFound(format string, args ...any) error {
	return newf(ErrNotFound, false, format, args...)
}

// ControlNotFound is a not-found raised inside the control API (HTTP 404 with
// the rpc prefix), e.g. an object removed between lookup and update.
func ControlNotFound(format string, args ...any) error {
	return newf(ErrNotFound, true, format, args...)
}

// BadRequest is a request the API edge itself refuses (HTTP 400, no prefix).
func BadRequest(format string, args ...any) error {
	return newf(ErrInvalidArgument, false, format, args...)
}

// Unavailable means the cluster cannot serve the call now (HTTP 503).
func Unavailable(format string, args ...any) error {
	return newf(ErrUnavailable, false, format, args...)
}

// Unauthorized is a failed credential check (HTTP 401).
func Unauthorized(format string, args ...any) error {
	return newf(ErrUnauthorized, false, format, args...)
}

// Unknown is a control-API error that Swarm reports with gRPC code Unknown,
// such as "update out of sequence".
func Unknown(format string, args ...any) error {
	return newf(ErrInternal, true, format, args...)
}

// OutOfSequence is Swarm's answer to a stale ?version=: the text Swarm's
// CLI users know, with a conflict's status (HTTP 409).
func OutOfSequence() error {
	return &Error{Category: ErrOutOfSequence, Msg: "update out of sequence", Control: true}
}

// FailedPrecondition is a control-API refusal because of an object's state,
// such as removing a manager (HTTP 400, gRPC code FailedPrecondition).
func FailedPrecondition(format string, args ...any) error {
	return newf(ErrFailedPrecondition, true, format, args...)
}

// NoSpace is a write refused because the cluster store is at its quota
// (HTTP 507); the message must name the limit.
func NoSpace(format string, args ...any) error {
	return newf(ErrNoSpace, false, format, args...)
}

// Is reports whether err belongs to category cat.
func Is(err, cat error) bool { return errors.Is(err, cat) }
