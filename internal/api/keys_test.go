package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hush-secrets/hush/internal/keyring"
	"github.com/hush-secrets/hush/internal/manager/cluster"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/store/storetest"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
)

// The list cache keeps the encoded answer of each object; for configs that
// would be their decrypted data, kept past the request and the object.
func TestConfigDataNeverCached(t *testing.T) {
	st := storetest.New(t)
	mk, _ := keyring.GenerateMasterKey()
	kr, _ := keyring.New(mk)
	cfgs := objects.New(objects.Config, st, kr, nil)
	s := New(Config{Configs: cfgs, Node: Node{ID: "node1"}, Version: "test"})
	canary := "config-canary-7d1f"
	body := `{"Name":"c1","Data":"` + base64.StdEncoding.EncodeToString([]byte(canary)) + `"}`
	if code, b := do(t, s, "POST", "/configs/create", body); code != 201 {
		t.Fatal(b)
	}
	for range 2 {
		code, b := do(t, s, "GET", "/configs", "")
		var got []swarm.Config
		if code != 200 || json.Unmarshal([]byte(b), &got) != nil || len(got) != 1 || string(got[0].Spec.Data) != canary {
			t.Fatalf("config list: %d %s", code, b)
		}
	}
	if h := newObjectHandlers(s, cfgs); h.cache != nil {
		t.Fatal("config answers are cached: their decrypted data would outlive the request")
	}
	if h := newObjectHandlers(s, objects.New(objects.Secret, st, kr, nil)); h.cache == nil {
		t.Fatal("secret answers (no data) are not cached: lists of many secrets get slow")
	}
}

type fakeSwarm struct {
	SwarmController
	key       string
	delivered []string
	warnings  []string
}

func (f *fakeSwarm) State() swarm.LocalNodeState               { return swarm.LocalNodeStateActive }
func (f *fakeSwarm) CheckServing() error                       { return nil }
func (f *fakeSwarm) UnlockKey(context.Context) (string, error) { return f.key, nil }
func (f *fakeSwarm) Warnings() []string                        { return f.warnings }
func (f *fakeSwarm) UnlockKeyDelivered(_ context.Context, k string) error {
	f.delivered = append(f.delivered, k)
	return nil
}

// failingWriter loses the answer, as a connection the client dropped does.
type failingWriter struct{ http.ResponseWriter }

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// A new unlock key counts as handed out only once an answer holding it
// has been written in full: an answer that did not leave must not make
// hushd rely on a key no one saw.
func TestUnlockKeyDeliveredOnlyWhenWritten(t *testing.T) {
	f := &fakeSwarm{key: "SWMKEY-1-abc"}
	s := New(Config{Swarm: f, Node: Node{ID: "node1"}, Version: "test"})

	rec := httptest.NewRecorder()
	s.ServeHTTP(failingWriter{rec}, httptest.NewRequest("GET", "/swarm/unlockkey", nil))
	if len(f.delivered) != 0 {
		t.Fatal("a lost answer counted as the key reaching the operator")
	}

	code, b := do(t, s, "GET", "/swarm/unlockkey", "")
	var resp swarm.UnlockKeyResponse
	if code != 200 || json.Unmarshal([]byte(b), &resp) != nil || resp.UnlockKey != f.key {
		t.Fatalf("unlock key answer: %d %s", code, b)
	}
	if len(f.delivered) != 1 || f.delivered[0] != f.key {
		t.Fatalf("delivered %d keys after one full answer", len(f.delivered))
	}
}

func TestInfoCarriesKeyWarnings(t *testing.T) {
	f := &fakeSwarm{warnings: []string{"WARNING: autolock is enabled but its unlock key has not been fetched yet"}}
	st := storetest.New(t)
	mk, _ := keyring.GenerateMasterKey()
	kr, _ := keyring.New(mk)
	if _, err := cluster.Init(context.Background(), st, kr, cluster.DefaultSpec()); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Swarm: f, Cluster: stClusterSource{st}, Node: Node{ID: "node1"}, Version: "test"})
	code, b := do(t, s, "GET", "/info", "")
	var info system.Info
	if code != 200 || json.Unmarshal([]byte(b), &info) != nil {
		t.Fatalf("info: %d %s", code, b)
	}
	if len(info.Warnings) != 1 || !strings.Contains(info.Warnings[0], "not been fetched") {
		t.Fatalf("info warnings %q", info.Warnings)
	}
}
