package orchestrator

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/swarm"
)

// settle runs passes, the clock advancing a second each, past the delay
// before a rotation's status is written.
func (f *fixture) settle() {
	f.t.Helper()
	for i := 0; i < 4; i++ {
		f.pass()
		f.now = f.now.Add(time.Second)
	}
}

// withSecrets gives the fixture a secrets manager the orchestrator reads
// current versions from.
func (f *fixture) withSecrets() *objects.Manager {
	f.t.Helper()
	mk, err := keyring.GenerateMasterKey()
	if err != nil {
		f.t.Fatal(err)
	}
	kr, err := keyring.New(mk)
	if err != nil {
		f.t.Fatal(err)
	}
	m := objects.New(objects.Secret, f.st, kr, nil)
	f.o.SetDataVersions(func(ctx context.Context, sids, _ []string) (map[string]int, map[string]int, error) {
		s, err := m.VersionsOf(ctx, sids)
		return s, nil, err
	})
	return m
}

func withSecret(s swarm.ServiceSpec, id, name string) swarm.ServiceSpec {
	s.TaskTemplate.ContainerSpec.Secrets = append(s.TaskTemplate.ContainerSpec.Secrets, &swarm.SecretReference{
		SecretID: id, SecretName: name, File: &swarm.SecretReferenceFileTarget{Name: name, UID: "0", GID: "0", Mode: 0o444},
	})
	return s
}

// TestRotationRollsTasks: a rotation makes the tasks of every service that
// references the secret outdated; they are rolled per each service's
// update config (parallelism 1 here: one slot at a time), the spec is
// unchanged, UpdateStatus shows the rollout, and every new task holds the
// new version. A service that does not reference the secret is untouched.
func TestRotationRollsTasks(t *testing.T) {
	f := newFixture(t)
	sm := f.withSecrets()
	sid, err := sm.Create(f.ctx, objects.Spec{Name: "pw", Data: []byte("one")})
	if err != nil {
		t.Fatal(err)
	}
	a := withSecret(replicated("a", 3), sid, "pw")
	a.UpdateConfig = &swarm.UpdateConfig{Parallelism: 1, Order: swarm.UpdateOrderStopFirst}
	aID := f.mustCreate(a)
	b := withSecret(replicated("b", 2), sid, "pw")
	b.UpdateConfig = &swarm.UpdateConfig{Parallelism: 2, Order: swarm.UpdateOrderStartFirst}
	bID := f.mustCreate(b)
	cID := f.mustCreate(replicated("c", 1))
	f.pass()
	f.agent()
	f.pass()
	before := map[string]bool{}
	for _, tk := range f.tasks() {
		before[tk.ID] = true
		if tk.ServiceID != cID && tk.HeldVersion("secret", sid) != 1 {
			t.Fatalf("task %s holds version %d", tk.ID, tk.HeldVersion("secret", sid))
		}
	}
	specA := f.mustGet(aID).SpecVersion
	if _, _, err := sm.Rotate(f.ctx, sid, 0, []byte("two")); err != nil {
		t.Fatal(err)
	}
	f.pass()
	f.now = f.now.Add(time.Second)
	f.pass()
	if n := count(f.tasks(), swarm.TaskStateShutdown, ""); n != 0 || f.mustGet(aID).UpdateStatus != nil {
		t.Fatalf("%d tasks stopped before the rollout's status was written", n)
	}
	f.settle()
	svc := f.mustGet(aID)
	if svc.UpdateStatus == nil || svc.UpdateStatus.State != swarm.UpdateStateUpdating || !strings.Contains(svc.UpdateStatus.Message, "secret pw version 2") {
		t.Fatalf("update status during rotation: %+v", svc.UpdateStatus)
	}
	if svc.SpecVersion != specA {
		t.Fatalf("rotation changed the spec version %d → %d", specA, svc.SpecVersion)
	}
	maxDown := 0
	for i := 0; i < 40; i++ {
		ts := f.tasks()
		down := 0
		for _, tk := range ts {
			if tk.ServiceID == aID && tk.DesiredState == swarm.TaskStateShutdown && !model.Terminal(tk.Status.State) {
				down++
			}
		}
		maxDown = max(maxDown, down)
		f.agent()
		f.now = f.now.Add(time.Second)
		f.pass()
	}
	if maxDown != 1 {
		t.Errorf("parallelism 1: up to %d tasks of a stopping at once", maxDown)
	}
	restarted := map[string]int{}
	for _, tk := range f.tasks() {
		if !model.Runs(tk.DesiredState) {
			continue
		}
		switch {
		case tk.ServiceID == cID:
			if !before[tk.ID] {
				t.Errorf("service c, which does not use the secret, was restarted")
			}
		case before[tk.ID]:
			t.Errorf("task %s of %s was not rolled", tk.ID, tk.ServiceName)
		case tk.HeldVersion("secret", sid) != 2:
			t.Errorf("new task %s holds version %d", tk.ID, tk.HeldVersion("secret", sid))
		default:
			restarted[tk.ServiceID]++
		}
	}
	if restarted[aID] != 3 || restarted[bID] != 2 {
		t.Errorf("rolled tasks: a %d, b %d", restarted[aID], restarted[bID])
	}
	for _, id := range []string{aID, bID} {
		if st := f.mustGet(id).UpdateStatus; st == nil || st.State != swarm.UpdateStateCompleted {
			t.Errorf("service %s after the rollout: %+v", id, st)
		}
	}
}

// TestRotationReloadInPlace: in reload mode the running tasks are given the
// new versions where they run (none is stopped); the rollout completes
// only once the agent has loaded them.
func TestRotationReloadInPlace(t *testing.T) {
	f := newFixture(t)
	sm := f.withSecrets()
	sid, err := sm.Create(f.ctx, objects.Spec{Name: "pw", Data: []byte("one")})
	if err != nil {
		t.Fatal(err)
	}
	s := withSecret(replicated("r", 2), sid, "pw")
	s.Labels = map[string]string{model.RotateLabel: model.RotateReload}
	id := f.mustCreate(s)
	f.pass()
	f.agent()
	f.pass()
	if _, _, err := sm.Rotate(f.ctx, sid, 0, []byte("two")); err != nil {
		t.Fatal(err)
	}
	f.settle()
	ts := f.tasks()
	if len(ts) != 2 {
		t.Fatalf("%d tasks after a reload rotation, want the same 2", len(ts))
	}
	for _, tk := range ts {
		if tk.DesiredState != swarm.TaskStateRunning || tk.HeldVersion("secret", sid) != 2 || tk.RotateMode != model.RotateReload {
			t.Fatalf("task %s: desired %s, holds %d, mode %q", tk.ID, tk.DesiredState, tk.HeldVersion("secret", sid), tk.RotateMode)
		}
	}
	// Not loaded yet: the rollout is still in progress however long it waits.
	f.now = f.now.Add(time.Minute)
	f.pass()
	if st := f.mustGet(id).UpdateStatus; st == nil || st.State != swarm.UpdateStateUpdating {
		t.Fatalf("before the agent loaded the versions: %+v", st)
	}
	for _, tk := range f.tasks() {
		next := *tk
		next.LoadedVersions = tk.DataVersions
		next.Status.Timestamp = f.now
		val, _ := json.Marshal(&next)
		if _, err := f.st.Table(model.TasksTable).Update(f.ctx, tk.ID, int64(tk.Version.Index), val); err != nil {
			t.Fatal(err)
		}
	}
	f.now = f.now.Add(10 * time.Second)
	f.pass()
	if st := f.mustGet(id).UpdateStatus; st == nil || st.State != swarm.UpdateStateCompleted {
		t.Fatalf("after the agent loaded the versions: %+v", st)
	}
}

// TestRotationFailureRollback: a task failing on the new version, with
// failure action rollback, puts the service's tasks back on the previous
// version (the spec is unchanged, so that is the way back); the pin lapses
// at the next rotation.
func TestRotationFailureRollback(t *testing.T) {
	f := newFixture(t)
	sm := f.withSecrets()
	sid, err := sm.Create(f.ctx, objects.Spec{Name: "pw", Data: []byte("one")})
	if err != nil {
		t.Fatal(err)
	}
	s := withSecret(replicated("fr", 2), sid, "pw")
	s.UpdateConfig = &swarm.UpdateConfig{Parallelism: 1, FailureAction: swarm.UpdateFailureActionRollback}
	id := f.mustCreate(s)
	f.pass()
	f.agent()
	f.pass()
	if _, _, err := sm.Rotate(f.ctx, sid, 0, []byte("two")); err != nil {
		t.Fatal(err)
	}
	failed := false
	for i := 0; i < 30; i++ {
		f.pass()
		for _, tk := range f.tasks() {
			if !failed && tk.HeldVersion("secret", sid) == 2 && tk.Status.State == swarm.TaskStateAssigned {
				f.setState(tk, swarm.TaskStateFailed, "bad password")
				failed = true
			}
		}
		f.agent()
		f.now = f.now.Add(time.Second)
	}
	if !failed {
		t.Fatal("no task was made on the new version")
	}
	svc := f.mustGet(id)
	if svc.UpdateStatus == nil || svc.UpdateStatus.State != swarm.UpdateStateRollbackCompleted {
		t.Fatalf("update status: %+v", svc.UpdateStatus)
	}
	if p := svc.RotationPins[model.DataKey("secret", sid)]; p.Version != 1 || p.Against != 2 {
		t.Fatalf("pin %+v", p)
	}
	for _, tk := range f.tasks() {
		if model.Runs(tk.DesiredState) && tk.HeldVersion("secret", sid) != 1 {
			t.Errorf("task %s holds version %d after the rollback", tk.ID, tk.HeldVersion("secret", sid))
		}
	}
	// A new rotation is rolled out again: the pin was for version 2 only.
	if _, _, err := sm.Rotate(f.ctx, sid, 0, []byte("three")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		f.pass()
		f.agent()
		f.now = f.now.Add(time.Second)
	}
	for _, tk := range f.tasks() {
		if model.Runs(tk.DesiredState) && tk.HeldVersion("secret", sid) != 3 {
			t.Errorf("task %s holds version %d after the next rotation", tk.ID, tk.HeldVersion("secret", sid))
		}
	}
}
