package events

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/events"
)

// filterKeys are the keys dockerd's event filter acts on. Any other key is
// refused: dockerd ignores unknown keys, and hush does not accept an option
// it would ignore.
var filterKeys = map[string]bool{
	"config": true, "container": true, "daemon": true, "event": true, "image": true,
	"label": true, "network": true, "node": true, "plugin": true, "scope": true,
	"secret": true, "service": true, "type": true, "volume": true,
}

// Filter is a parsed `filters` parameter of GET /events.
type Filter struct {
	args map[string]map[string]bool
}

// ParseFilters decodes the filters JSON of GET /events, in the current form
// {"type":{"secret":true}} or the legacy {"type":["secret"]}, as dockerd
// does. A malformed parameter or an unknown key is a 400.
func ParseFilters(raw string) (Filter, error) {
	f := Filter{args: map[string]map[string]bool{}}
	if raw == "" {
		return f, nil
	}
	if err := json.Unmarshal([]byte(raw), &f.args); err != nil {
		var legacy map[string][]string
		if lerr := json.Unmarshal([]byte(raw), &legacy); lerr != nil {
			// dockerd answers 500 with this text; it is the client's error.
			return Filter{}, errdefs.BadRequest("%s", err.Error())
		}
		f.args = make(map[string]map[string]bool, len(legacy))
		for k, vs := range legacy {
			f.args[k] = make(map[string]bool, len(vs))
			for _, v := range vs {
				f.args[k][v] = true
			}
		}
	}
	for k := range f.args {
		if !filterKeys[k] {
			return Filter{}, errdefs.BadRequest("Invalid filter '%s'", k)
		}
	}
	return f, nil
}

// Empty reports whether the filter has no conditions.
func (f Filter) Empty() bool { return len(f.args) == 0 }

// Include applies dockerd's event filter to m: every key given must match.
// Name keys (container, secret, service, ...) match any event's ID or name
// attribute by prefix, whatever the event's type: that is how dockerd
// applies them, so `--filter secret=db` also passes a container named db1.
func (f Filter) Include(m events.Message) bool {
	if len(f.args) == 0 {
		return true
	}
	if !f.matchAction(string(m.Action)) || !f.exact("type", string(m.Type)) || !f.exact("scope", m.Scope) {
		return false
	}
	for _, key := range []events.Type{
		events.DaemonEventType, events.ContainerEventType, events.PluginEventType, events.VolumeEventType,
		events.NetworkEventType, events.NodeEventType, events.ServiceEventType, events.SecretEventType,
		events.ConfigEventType,
	} {
		k := string(key)
		if !f.fuzzy(k, m.Actor.ID) && !f.fuzzy(k, m.Actor.Attributes["name"]) {
			return false
		}
	}
	return f.matchImage(m) && f.matchLabels(m.Actor.Attributes)
}

// exact holds when key is not filtered on or source is one of its values.
func (f Filter) exact(key, source string) bool {
	vs := f.args[key]
	if len(vs) == 0 {
		return true
	}
	return vs[source]
}

// fuzzy is exact, or source starts with one of key's values.
func (f Filter) fuzzy(key, source string) bool {
	if f.exact(key, source) {
		return true
	}
	for v, on := range f.args[key] {
		if on && strings.HasPrefix(source, v) {
			return true
		}
	}
	return false
}

// matchAction is dockerd's rule: the actions that carry a suffix after a
// colon (health_status, exec_create, exec_start) match by prefix when the
// filter names them bare.
func (f Filter) matchAction(action string) bool {
	for _, v := range []string{string(events.ActionHealthStatus), string(events.ActionExecCreate), string(events.ActionExecStart)} {
		if f.args["event"][v] {
			return f.fuzzy("event", action)
		}
	}
	return f.exact("event", action)
}

// matchImage matches the image filter against the event's ID and its
// "image" attribute (a container's image). dockerd also tries both without
// their tag; the events hush derives carry no image attribute and IDs have
// no tag, so that form adds nothing here.
func (f Filter) matchImage(m events.Message) bool {
	attr := "image"
	if m.Type == events.ImageEventType {
		attr = "name"
	}
	return f.exact("image", m.Actor.ID) || f.exact("image", m.Actor.Attributes[attr])
}

// matchLabels holds when every label filter ("k" or "k=v") is among the
// event's attributes.
func (f Filter) matchLabels(attrs map[string]string) bool {
	vs := f.args["label"]
	if len(vs) == 0 {
		return true
	}
	if len(attrs) == 0 {
		return false
	}
	for v := range vs {
		k, want, hasValue := strings.Cut(v, "=")
		got, ok := attrs[k]
		if !ok || (hasValue && got != want) {
			return false
		}
	}
	return true
}

// ParseTime reads a `since` or `until` parameter as dockerd does: Unix
// seconds with an optional fraction ("1700000000.5" is half a second in).
// "" and "-1" mean not given (the zero time).
func ParseTime(v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	secStr, fracStr, hasFrac := strings.Cut(v, ".")
	sec, err := strconv.ParseInt(secStr, 10, 64)
	if err != nil {
		// dockerd answers 500 with this text; it is the client's error.
		return time.Time{}, errdefs.BadRequest("%s", err.Error())
	}
	var nsec int64
	if hasFrac {
		frac, err := strconv.ParseUint(fracStr, 10, 64)
		if err != nil {
			return time.Time{}, errdefs.BadRequest("%s", err.Error())
		}
		// The fraction's digits are a decimal fraction of a second: scale
		// to nanoseconds (digits past the ninth are below a nanosecond).
		digits := len(fracStr)
		for ; digits > 9; digits-- {
			frac /= 10
		}
		for ; digits < 9; digits++ {
			frac *= 10
		}
		nsec = int64(frac)
	}
	if sec == -1 && nsec == 0 {
		return time.Time{}, nil
	}
	return time.Unix(sec, nsec), nil
}
