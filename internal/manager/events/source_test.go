package events

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/networks"
	"github.com/hush-secrets/hush/internal/manager/nodes"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
)

// waitEvent bounds how long a test waits for an event that the watch
// delivers in microseconds: a failure guard, not a timing assertion.
const waitEvent = 10 * time.Second

func next(t *testing.T, sub *Subscription) events.Message {
	t.Helper()
	select {
	case m, ok := <-sub.C:
		if !ok {
			t.Fatal("subscription closed")
		}
		return m
	case <-time.After(waitEvent):
		t.Fatalf("no event within %s", waitEvent)
	}
	return events.Message{}
}

// line renders an event the way `docker events` prints it, minus the time.
func line(m events.Message) string {
	keys := make([]string, 0, len(m.Actor.Attributes))
	for k := range m.Actor.Attributes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	attrs := make([]string, len(keys))
	for i, k := range keys {
		attrs[i] = k + "=" + m.Actor.Attributes[k]
	}
	return fmt.Sprintf("%s %s %s (%s) %s", m.Type, m.Action, m.Actor.ID, strings.Join(attrs, ", "), m.Scope)
}

func runSource(t *testing.T, st *store.Store, c Config) *Source {
	t.Helper()
	c.Store = st
	s := New(c)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := s.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSourceFromManagers drives the real managers (their stored forms are
// what the source decodes) and checks the events that come out, in order.
func TestSourceFromManagers(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	secrets := objects.New(objects.Secret, st, kr, nil)
	configs := objects.New(objects.Config, st, kr, nil)
	mir := store.NewMirror(st)
	svcs := services.New(st, mir, nil)
	nets := networks.New(networks.Config{Store: st, Mirror: mir})
	svcs.UseNetworks(nets)
	mctx, mcancel := context.WithCancel(ctx)
	mdone := make(chan struct{})
	go func() { mir.Run(mctx); close(mdone) }()
	t.Cleanup(func() { mcancel(); <-mdone })
	if err := mir.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	// An object that exists before the source starts is no event.
	if _, err := secrets.Create(ctx, objects.Spec{Name: "before", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	src := runSource(t, st, Config{Hostname: func(string) string { return "testhost" }})
	_, sub, err := src.Subscribe(ctx, Filter{}, time.Time{}, time.Time{}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	canary := []byte("canary-secret-value-7f3a")
	var want []string
	expect := func(typ, action, id, attrs string) {
		want = append(want, fmt.Sprintf("%s %s %s (%s) swarm", typ, action, id, attrs))
	}

	secID, err := secrets.Create(ctx, objects.Spec{Name: "db_password", Data: canary, Labels: map[string]string{"a": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	expect("secret", "create", secID, "name=db_password")
	o, err := secrets.Get(ctx, secID)
	if err != nil {
		t.Fatal(err)
	}
	if err := secrets.Update(ctx, secID, o.Version, objects.Spec{Name: "db_password", Labels: map[string]string{"a": "2"}}); err != nil {
		t.Fatal(err)
	}
	expect("secret", "update", secID, "name=db_password")

	cfgID, err := configs.Create(ctx, objects.Spec{Name: "app.conf", Data: []byte("k=v")})
	if err != nil {
		t.Fatal(err)
	}
	expect("config", "create", cfgID, "name=app.conf")

	netID, err := nets.Create(ctx, network.CreateRequest{Name: "evt_net", Driver: "overlay"})
	if err != nil {
		t.Fatal(err)
	}
	expect("network", "create", netID, "name=evt_net")

	var spec swarm.ServiceSpec
	spec.Name = "web"
	spec.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: "busybox:1", Env: []string{"PASSWORD=" + string(canary)},
		Secrets: []*swarm.SecretReference{{SecretID: secID, SecretName: "db_password"}}}
	svcID, err := svcs.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	expect("service", "create", svcID, "name=web")
	update := func(mut func(*swarm.ServiceSpec)) {
		t.Helper()
		cur, err := svcs.Get(ctx, svcID)
		if err != nil {
			t.Fatal(err)
		}
		s := cur.Spec
		mut(&s)
		if err := svcs.Update(ctx, svcID, s, services.UpdateOptions{Version: cur.Version.Index}); err != nil {
			t.Fatal(err)
		}
	}
	update(func(s *swarm.ServiceSpec) { r := uint64(3); s.Mode.Replicated.Replicas = &r })
	expect("service", "update", svcID, "name=web, replicas.new=3, replicas.old=1")
	update(func(s *swarm.ServiceSpec) {
		cs := *s.TaskTemplate.ContainerSpec
		cs.Image = "busybox:2"
		s.TaskTemplate.ContainerSpec = &cs
	})
	// One write in hush, two events as in Swarm: the spec, then the rollout.
	expect("service", "update", svcID, "image.new=busybox:2, image.old=busybox:1, name=web")
	expect("service", "update", svcID, "name=web, updatestate.new=updating")
	cur, err := svcs.Get(ctx, svcID)
	if err != nil {
		t.Fatal(err)
	}
	if err := svcs.SetUpdateStatus(ctx, cur, &swarm.UpdateStatus{State: swarm.UpdateStateCompleted}); err != nil {
		t.Fatal(err)
	}
	expect("service", "update", svcID, "name=web, updatestate.new=completed, updatestate.old=updating")

	n, err := nodes.Ensure(ctx, st, "node0123456789abcdefghijk")
	if err != nil {
		t.Fatal(err)
	}
	expect("node", "create", n.ID, "name=testhost")
	ns := n.Spec
	ns.Labels = map[string]string{"zone": "a"}
	ns.Availability = swarm.NodeAvailabilityDrain
	if err := nodes.Update(ctx, st, n.ID, n.Version, ns); err != nil {
		t.Fatal(err)
	}
	expect("node", "update", n.ID, "availability.new=drain, availability.old=active, name=testhost")

	if err := svcs.Remove(ctx, svcID); err != nil {
		t.Fatal(err)
	}
	expect("service", "remove", svcID, "name=web")
	if err := nets.Remove(ctx, netID); err != nil {
		t.Fatal(err)
	}
	expect("network", "remove", netID, "name=evt_net")
	if err := configs.Remove(ctx, cfgID); err != nil {
		t.Fatal(err)
	}
	expect("config", "remove", cfgID, "name=app.conf")
	if err := secrets.Remove(ctx, secID); err != nil {
		t.Fatal(err)
	}
	expect("secret", "remove", secID, "name=db_password")

	var got []string
	var msgs []events.Message
	for len(got) < len(want) {
		m := next(t, sub)
		msgs = append(msgs, m)
		got = append(got, line(m))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, m := range msgs {
		for k, v := range m.Actor.Attributes {
			if strings.Contains(k+v, string(canary)) {
				t.Fatalf("event %s carries secret data or environment", line(m))
			}
		}
		if m.TimeNano == 0 || m.Time != m.TimeNano/1e9 {
			t.Fatalf("event %s: time %d, timeNano %d", line(m), m.Time, m.TimeNano)
		}
	}

	// The same events are history now, for a late subscriber.
	secretsOnly, _ := ParseFilters(`{"type":{"secret":true}}`)
	past, none, err := src.Subscribe(ctx, secretsOnly, time.Unix(0, 0), time.Now(), false)
	if err != nil || none != nil {
		t.Fatal(err, none)
	}
	var gotPast []string
	for _, m := range past {
		gotPast = append(gotPast, line(m))
	}
	wantPast := []string{want[0], want[1], want[len(want)-1]}
	if strings.Join(gotPast, "\n") != strings.Join(wantPast, "\n") {
		t.Fatalf("history:\n%s\nwant:\n%s", strings.Join(gotPast, "\n"), strings.Join(wantPast, "\n"))
	}
}

// TestHistoryIncludesAcknowledgedWrites: a history read right after a write
// returns includes it (Subscribe waits for the watch to catch up).
func TestHistoryIncludesAcknowledgedWrites(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	src := runSource(t, st, Config{})
	tbl := st.Table("secrets")
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("s%02d", i)
		if _, err := tbl.Create(ctx, id, id, []byte(`{"name":"`+id+`"}`)); err != nil {
			t.Fatal(err)
		}
		past, _, err := src.Subscribe(ctx, Filter{}, time.Unix(0, 0), time.Time{}, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(past) != i+1 || past[i].Actor.ID != id {
			t.Fatalf("after write %d the history has %d events (last %v)", i, len(past), past[len(past)-1].Actor)
		}
	}
}

// TestReloadReportsMissedChanges: after the watch restarts, what changed
// in between comes out as events.
func TestReloadReportsMissedChanges(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	s := New(Config{Store: st})
	tbl := st.Table("configs")
	for _, id := range []string{"keep", "gone", "changed"} {
		if _, err := tbl.Create(ctx, id, id, []byte(`{"name":"`+id+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.load(ctx); err != nil {
		t.Fatal(err)
	}
	_, sub := s.hub.subscribe(Filter{}, time.Time{}, time.Time{}, false, true)
	defer sub.Close()
	// Changes while no watch runs.
	if err := tbl.Delete(ctx, "gone", "gone", 0, nil); err != nil {
		t.Fatal(err)
	}
	o, err := tbl.Get(ctx, "changed")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Update(ctx, "changed", o.ModRev, []byte(`{"name":"changed","labels":{"a":"b"}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Create(ctx, "new", "new", []byte(`{"name":"new"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.load(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for i := 0; i < 3; i++ {
		m := next(t, sub)
		got[m.Actor.ID] = string(m.Action)
	}
	want := map[string]string{"gone": "remove", "changed": "update", "new": "create"}
	if !maps.Equal(got, want) {
		t.Fatalf("events after reload = %v, want %v", got, want)
	}
	select {
	case m := <-sub.C:
		t.Fatalf("unexpected event %s", line(m))
	default:
	}
}

// TestLeaveEraseIsNoEvent: `swarm leave --force` deletes the whole key
// space at once; Swarm reports no removals then, and the watch goes on.
func TestLeaveEraseIsNoEvent(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	src := runSource(t, st, Config{})
	_, sub, err := src.Subscribe(ctx, Filter{}, time.Time{}, time.Time{}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := st.Table("cluster").Create(ctx, "default", "", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Table("secrets").Create(ctx, "s1", "s1", []byte(`{"name":"s1"}`)); err != nil {
		t.Fatal(err)
	}
	if m := next(t, sub); m.Action != "create" || m.Actor.ID != "s1" {
		t.Fatalf("got %s", line(m))
	}
	// The same delete as daemon.Leave.
	if err := storetest.DeletePrefix(ctx, st, strings.TrimSuffix(st.Table("secrets").Key(""), "secrets/")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Table("secrets").Create(ctx, "s2", "s2", []byte(`{"name":"s2"}`)); err != nil {
		t.Fatal(err)
	}
	if m := next(t, sub); m.Action != "create" || m.Actor.ID != "s2" {
		t.Fatalf("after the erase, got %s; want only the new secret's create", line(m))
	}
	// An ordinary delete is still a removal.
	if err := st.Table("secrets").Delete(ctx, "s2", "s2", 0, nil); err != nil {
		t.Fatal(err)
	}
	if m := next(t, sub); m.Action != "remove" || m.Actor.ID != "s2" {
		t.Fatalf("got %s", line(m))
	}
}
