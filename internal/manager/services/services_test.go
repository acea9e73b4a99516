package services

import (
	"context"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
)

func spec(name string, refs ...*swarm.SecretReference) swarm.ServiceSpec {
	var s swarm.ServiceSpec
	s.Name = name
	s.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: "busybox", Secrets: refs}
	return s
}

func TestValidateSpec(t *testing.T) {
	ref := func(name, target string) *swarm.SecretReference {
		r := &swarm.SecretReference{SecretID: "id-" + name, SecretName: name}
		if target != "" {
			r.File = &swarm.SecretReferenceFileTarget{Name: target}
		}
		return r
	}
	tests := []struct {
		name string
		spec swarm.ServiceSpec
		want string // "" = valid
	}{
		{"defaults", spec("web", ref("db", "")), ""},
		{"absolute target", spec("web", ref("db", "/etc/app/key.pem")), ""},
		{"nested target", spec("web", ref("db", "conf/db")), ""},
		{"dotdot", spec("web", ref("db", "../../etc/passwd")), `invalid secret target "../../etc/passwd" for db: a target must not contain ".."`},
		{"absolute dotdot", spec("web", ref("db", "/run/../etc/shadow")), `invalid secret target "/run/../etc/shadow" for db: a target must not contain ".."`},
		{"conflict", spec("web", ref("a", "x"), ref("b", "x")), "secret references 'a' and 'b' have a conflicting target: 'x'"},
		{"conflict abs vs rel", spec("web", ref("a", "x"), ref("b", "/run/secrets/x")), "secret references 'a' and 'b' have a conflicting target: '/run/secrets/x'"},
		{"malformed", spec("web", &swarm.SecretReference{}), "malformed secret reference"},
		{"no image", func() swarm.ServiceSpec { s := spec("web"); s.TaskTemplate.ContainerSpec.Image = ""; return s }(), "ContainerSpec: image reference must be provided"},
		{"bad name", spec("-web"), "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.spec
			err := validateSpec(&s)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range s.TaskTemplate.ContainerSpec.Secrets {
					if r.File.UID != "0" || r.File.GID != "0" || r.File.Mode != 0o444 || r.File.Name == "" {
						t.Fatalf("defaults not applied: %+v", r.File)
					}
				}
				if s.Mode.Replicated == nil || *s.Mode.Replicated.Replicas != 1 {
					t.Fatal("default mode must be replicated with 1 replica")
				}
				return
			}
			if err == nil || err.Error() != tt.want || !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func newManagers(t *testing.T) (*Manager, *objects.Manager, context.Context) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := storetest.New(t)
	mk, _ := keyring.GenerateMasterKey()
	kr, _ := keyring.New(mk)
	mir := store.NewMirror(st)
	m := New(st, mir, nil)
	done := make(chan struct{})
	go func() { mir.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := mir.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return m, objects.New(objects.Secret, st, kr, nil), context.Background()
}

func TestSecretInUseLifecycle(t *testing.T) {
	m, secrets, ctx := newManagers(t)
	if _, err := secrets.Create(ctx, objects.Spec{Name: "db_password", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Create(ctx, objects.Spec{Name: "api_key", Data: []byte("y")}); err != nil {
		t.Fatal(err)
	}
	// References by name only are resolved to IDs.
	id, err := m.Create(ctx, spec("webapp", &swarm.SecretReference{SecretName: "db_password"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, spec("other", &swarm.SecretReference{SecretName: "db_password"}, &swarm.SecretReference{SecretName: "api_key"})); err != nil {
		t.Fatal(err)
	}
	err = secrets.Remove(ctx, "db_password")
	if err == nil || err.Error() != "secret 'db_password' is in use by the following services: other, webapp" {
		t.Fatalf("got %v", err)
	}
	// Dropping the reference from both services frees the secret.
	for _, name := range []string{"webapp", "other"} {
		svc, err := m.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		next := svc.Spec
		cs := *next.TaskTemplate.ContainerSpec
		cs.Secrets = nil
		for _, r := range svc.Spec.TaskTemplate.ContainerSpec.Secrets {
			if r.SecretName != "db_password" {
				cs.Secrets = append(cs.Secrets, r)
			}
		}
		next.TaskTemplate.ContainerSpec = &cs
		if err := m.Update(ctx, name, next, UpdateOptions{Version: svc.Version.Index}); err != nil {
			t.Fatalf("update %s: %v", name, err)
		}
		// The same version again is out of sequence.
		if err := m.Update(ctx, name, next, UpdateOptions{Version: svc.Version.Index}); err == nil || err.Error() != "update out of sequence" {
			t.Fatalf("stale update: %v", err)
		}
	}
	if err := secrets.Remove(ctx, "db_password"); err != nil {
		t.Fatalf("remove after updates: %v", err)
	}
	if err := secrets.Remove(ctx, "api_key"); err == nil || !strings.Contains(err.Error(), "following service: other") {
		t.Fatalf("api_key still used by other: %v", err)
	}
	if err := m.Remove(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Remove(ctx, "api_key"); err != nil {
		t.Fatalf("remove after service rm: %v", err)
	}
	// Rollback restores the previous spec.
	svc, _ := m.Get(ctx, id)
	if err := m.Update(ctx, id, swarm.ServiceSpec{}, UpdateOptions{Version: svc.Version.Index, Rollback: true}); err == nil {
		t.Fatal("rollback to a spec whose secret is gone must fail")
	} else if err.Error() != "secret not found: db_password" {
		t.Fatalf("rollback error: %v", err)
	}
}

func TestCreateMissingSecrets(t *testing.T) {
	m, _, ctx := newManagers(t)
	_, err := m.Create(ctx, spec("web", &swarm.SecretReference{SecretName: "b"}, &swarm.SecretReference{SecretName: "a"}))
	if err == nil || err.Error() != "secret(s) not found: a, b" {
		t.Fatalf("got %v", err)
	}
	if _, err := m.Create(ctx, spec("web")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, spec("WEB")); !errdefs.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate name: %v", err)
	}
}
