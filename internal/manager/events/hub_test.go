package events

import (
	"fmt"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"
)

func ev(i int, typ events.Type) events.Message {
	t := time.Unix(1700000000, 0).Add(time.Duration(i) * time.Second)
	return events.Message{Type: typ, Action: "create", Scope: "swarm", Time: t.Unix(), TimeNano: t.UnixNano(),
		Actor: events.Actor{ID: fmt.Sprintf("id%03d", i), Attributes: map[string]string{"name": fmt.Sprintf("n%03d", i)}}}
}

func ids(ms []events.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Actor.ID
	}
	return out
}

func TestHistoryBounds(t *testing.T) {
	all, _ := ParseFilters("")
	secrets, _ := ParseFilters(`{"type":{"secret":true}}`)
	at := func(i int) time.Time { return time.Unix(1700000000, 0).Add(time.Duration(i) * time.Second) }
	tests := []struct {
		name         string
		published    int
		f            Filter
		since, until time.Time
		want         []string
	}{
		{"under capacity, all", 3, all, time.Unix(0, 0), time.Time{}, []string{"id000", "id001", "id002"}},
		{"ring keeps the last five", 8, all, time.Unix(0, 0), time.Time{}, []string{"id003", "id004", "id005", "id006", "id007"}},
		{"since is inclusive", 8, all, at(6), time.Time{}, []string{"id006", "id007"}},
		{"until is inclusive", 8, all, time.Time{}, at(4), []string{"id003", "id004"}},
		{"window", 8, all, at(4), at(5), []string{"id004", "id005"}},
		{"window after everything", 8, all, at(20), time.Time{}, nil},
		{"filtered", 8, secrets, time.Unix(0, 0), time.Time{}, []string{"id004", "id006"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHub(5, 4)
			for i := 0; i < tt.published; i++ {
				typ := events.Type("service")
				if i%2 == 0 {
					typ = "secret"
				}
				h.publish(ev(i, typ))
			}
			past, sub := h.subscribe(tt.f, tt.since, tt.until, true, false)
			if sub != nil {
				t.Fatal("a subscription without live")
			}
			if got := ids(past); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("history = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNoHistoryWithoutBounds(t *testing.T) {
	h := newHub(5, 4)
	h.publish(ev(0, "secret"))
	past, sub := h.subscribe(Filter{}, time.Time{}, time.Time{}, false, true)
	defer sub.Close()
	if len(past) != 0 {
		t.Fatalf("history without since/until: %v", ids(past))
	}
	h.publish(ev(1, "secret"))
	if m := <-sub.C; m.Actor.ID != "id001" {
		t.Fatalf("live event = %s", m.Actor.ID)
	}
}

func TestLiveFilterAndOrder(t *testing.T) {
	h := newHub(100, 100)
	secrets, _ := ParseFilters(`{"type":{"secret":true}}`)
	_, sub := h.subscribe(secrets, time.Time{}, time.Time{}, false, true)
	defer sub.Close()
	for i := 0; i < 10; i++ {
		typ := events.Type("service")
		if i%3 == 0 {
			typ = "secret"
		}
		h.publish(ev(i, typ))
	}
	var got []string
	for len(got) < 4 {
		got = append(got, (<-sub.C).Actor.ID)
	}
	if fmt.Sprint(got) != "[id000 id003 id006 id009]" {
		t.Fatalf("live = %v", got)
	}
	select {
	case m := <-sub.C:
		t.Fatalf("unexpected event %s", m.Actor.ID)
	default:
	}
}

func TestSlowSubscriberDropped(t *testing.T) {
	h := newHub(10, 3)
	drops := 0
	h.onDrop = func() { drops++ }
	_, slow := h.subscribe(Filter{}, time.Time{}, time.Time{}, false, true)
	_, fast := h.subscribe(Filter{}, time.Time{}, time.Time{}, false, true)
	defer fast.Close()
	for i := 0; i < 10; i++ {
		h.publish(ev(i, "secret"))
		<-fast.C // the fast reader keeps up
	}
	if !slow.Dropped() || drops != 1 {
		t.Fatalf("slow subscriber: dropped=%v drops=%d", slow.Dropped(), drops)
	}
	// What it had buffered is still readable, then the channel is closed.
	n := 0
	for range slow.C {
		n++
	}
	if n != 3 {
		t.Fatalf("slow subscriber read %d buffered events, want its buffer of 3", n)
	}
	if fast.Dropped() || h.subscribers() != 1 {
		t.Fatalf("fast dropped=%v, subscribers=%d", fast.Dropped(), h.subscribers())
	}
	slow.Close() // closing a dropped subscription is harmless
}

func TestCloseIdempotent(t *testing.T) {
	h := newHub(10, 3)
	_, s := h.subscribe(Filter{}, time.Time{}, time.Time{}, false, true)
	s.Close()
	s.Close()
	if _, ok := <-s.C; ok || h.subscribers() != 0 || s.Dropped() {
		t.Fatal("closed subscription still live")
	}
	h.publish(ev(0, "secret")) // must not panic on a closed channel
}

func TestCloseAll(t *testing.T) {
	h := newHub(10, 3)
	_, a := h.subscribe(Filter{}, time.Time{}, time.Time{}, false, true)
	_, b := h.subscribe(Filter{}, time.Time{}, time.Time{}, false, true)
	h.closeAll()
	for _, s := range []*Subscription{a, b} {
		if _, ok := <-s.C; ok || s.Dropped() {
			t.Fatal("subscription still live after closeAll")
		}
	}
	_, c := h.subscribe(Filter{}, time.Time{}, time.Time{}, false, true)
	defer c.Close()
	h.publish(ev(0, "secret"))
	if m := <-c.C; m.Actor.ID != "id000" {
		t.Fatalf("a later subscription got %s", m.Actor.ID)
	}
}
