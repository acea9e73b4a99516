package events

import (
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/events"
)

func TestFilterInclude(t *testing.T) {
	secret := events.Message{Type: "secret", Action: "create", Scope: "swarm",
		Actor: events.Actor{ID: "abcdef0123456789abcdef012", Attributes: map[string]string{"name": "db_password"}}}
	svcUpdate := events.Message{Type: "service", Action: "update", Scope: "swarm",
		Actor: events.Actor{ID: "svc0123456789abcdef012345", Attributes: map[string]string{"name": "web", "replicas.old": "1", "replicas.new": "2"}}}
	container := events.Message{Type: "container", Action: "exec_create: sh -c true", Scope: "local",
		Actor: events.Actor{ID: "c0ffee", Attributes: map[string]string{"name": "box", "image": "busybox:1", "com.example": "x"}}}
	tests := []struct {
		name    string
		filters string
		m       events.Message
		want    bool
	}{
		{"no filter", ``, secret, true},
		{"type", `{"type":{"secret":true}}`, secret, true},
		{"other type", `{"type":{"service":true}}`, secret, false},
		{"two types", `{"type":{"service":true,"secret":true}}`, secret, true},
		{"legacy form", `{"type":["secret"]}`, secret, true},
		{"value set false", `{"type":{"secret":false}}`, secret, false},
		{"scope swarm", `{"scope":{"swarm":true}}`, secret, true},
		{"scope local", `{"scope":{"local":true}}`, secret, false},
		{"event", `{"event":{"create":true}}`, secret, true},
		{"other event", `{"event":{"remove":true}}`, secret, false},
		{"secret by name", `{"secret":{"db_password":true}}`, secret, true},
		{"secret by name prefix", `{"secret":{"db_":true}}`, secret, true},
		{"secret by ID prefix", `{"secret":{"abcdef":true}}`, secret, true},
		{"other secret", `{"secret":{"api_key":true}}`, secret, false},
		{"service by name", `{"service":{"web":true}}`, svcUpdate, true},
		{"service filter drops a secret", `{"service":{"web":true}}`, secret, false},
		// dockerd applies name keys to every event, whatever its type.
		{"container key matches a secret's name", `{"container":{"db":true}}`, secret, true},
		{"label key", `{"label":{"replicas.new":true}}`, svcUpdate, true},
		{"label key=value", `{"label":{"replicas.new=2":true}}`, svcUpdate, true},
		{"label wrong value", `{"label":{"replicas.new=3":true}}`, svcUpdate, false},
		{"label missing", `{"label":{"com.example":true}}`, secret, false},
		{"image drops swarm events", `{"image":{"busybox:1":true}}`, secret, false},
		{"image matches a container's image", `{"image":{"busybox:1":true}}`, container, true},
		{"bare exec_create matches by prefix", `{"event":{"exec_create":true}}`, container, true},
		{"all together", `{"type":{"service":true},"scope":{"swarm":true},"event":{"update":true},"service":{"we":true}}`, svcUpdate, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseFilters(tt.filters)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Include(tt.m); got != tt.want {
				t.Fatalf("Include = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseFiltersErrors(t *testing.T) {
	tests := []struct{ raw, want string }{
		{`{"foo":{"bar":true}}`, "Invalid filter 'foo'"},
		{`{"names":["x"]}`, "Invalid filter 'names'"},
		{`{"type":{"secret":true},"scope":["swarm"]}`, "json: cannot unmarshal array into Go value of type map[string]bool"},
		{`xx`, "invalid character 'x' looking for beginning of value"},
		{`{"type":"secret"}`, "json: cannot unmarshal string into Go value of type map[string]bool"},
	}
	for _, tt := range tests {
		_, err := ParseFilters(tt.raw)
		if err == nil || err.Error() != tt.want || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseFilters(%s) = %v, want 400 %q", tt.raw, err, tt.want)
		}
	}
}

func TestParseTime(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
		err  string
	}{
		{"", time.Time{}, ""},
		{"-1", time.Time{}, ""},
		{"0", time.Unix(0, 0), ""},
		{"1700000000", time.Unix(1700000000, 0), ""},
		{"1700000000.5", time.Unix(1700000000, 500000000), ""},
		{"1700000000.000000001", time.Unix(1700000000, 1), ""},
		{"1700000000.1234567891", time.Unix(1700000000, 123456789), ""},
		{"abc", time.Time{}, `strconv.ParseInt: parsing "abc": invalid syntax`},
		{"1700000000.5x", time.Time{}, `strconv.ParseUint: parsing "5x": invalid syntax`},
		{"1700000000.-5", time.Time{}, `strconv.ParseUint: parsing "-5": invalid syntax`},
	}
	for _, tt := range tests {
		got, err := ParseTime(tt.in)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("ParseTime(%q) error = %v, want 400 %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || !got.Equal(tt.want) || got.IsZero() != tt.want.IsZero() {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func FuzzParseFilters(f *testing.F) {
	for _, s := range []string{``, `{"type":{"secret":true}}`, `{"type":["secret"]}`, `{"label":{"a=b":true}}`, `{"foo":{}}`, `[`, `null`} {
		f.Add(s)
	}
	m := events.Message{Type: "secret", Action: "create", Scope: "swarm", Actor: events.Actor{ID: "x", Attributes: map[string]string{"name": "n"}}}
	f.Fuzz(func(t *testing.T, raw string) {
		flt, err := ParseFilters(raw)
		if err != nil {
			if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error not a 400: %v", err)
			}
			return
		}
		for k := range flt.args {
			if !filterKeys[k] {
				t.Fatalf("unknown key %q accepted", k)
			}
		}
		_ = flt.Include(m)
		if flt.Empty() && !flt.Include(m) {
			t.Fatal("an empty filter excluded an event")
		}
	})
}

func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"", "-1", "0", "1700000000.5", "1.", ".5", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseTime(s)
		if err != nil {
			if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error not a 400: %v", err)
			}
			return
		}
		if ns := got.Nanosecond(); ns < 0 || ns > 999999999 {
			t.Fatalf("nanoseconds out of range: %d", ns)
		}
	})
}
